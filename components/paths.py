"""Where the project's own files are, wherever the engine starts a process (the program, the provider
host) and whatever its working directory: everything is found from this package's location."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
CATALOG_FILE = PROJECT_ROOT / "catalog" / "images.yaml"
# Files a machine gets through its fly.toml's [[files]] local_path, stored under their SHA-256
# (components/render/machine_files.py); beside the local state, and like it never committed.
MACHINE_FILES_DIR = PROJECT_ROOT / ".silo" / "machine-files"
# The registry database's migrations (applied by the control stack, and by `silo serve` at start).
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
