"""The real program (__main__.py) and policy pack on the real Pulumi CLI (the engine marker)."""
