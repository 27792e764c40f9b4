"""One router per resource (FastAPI's layout): towns, silos, operations, heartbeat."""
