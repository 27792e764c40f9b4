"""Pure tests: in-process code, Pulumi mocks, the silo CLI and repository files; no emulator, database or engine."""
