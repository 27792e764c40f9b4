"""Rendered files a Fly machine gets by ``[[files]] local_path`` rather than inline as ``raw_value``.

Every town of a silo runs the same scripts (about 90 KB). Inline in each town's fly.toml they were
copied into every machine's inputs and outputs: 19 of the 23 MB of state at 100 towns, sent to the
provider for every Check and Diff, logged by the CLI and echoed in its events, so a no-change preview of
100 towns took 8.9 s instead of 6.8 s (bench/run.py's setup, alternating runs). A fly.toml that names
each script by ``local_path`` keeps one line per file, and the provider reads the bytes when it sends the
config, as flyctl does (components/providers/fly/flytoml.py).

The store is content-addressed: a file's name is the SHA-256 of its bytes, so a changed script is a
changed ``local_path`` in ``pulumi preview --diff``, and runs of different versions never overwrite each
other's files. The program writes them before the engine asks the provider to read them, in every run
that can create or update a machine (``destroy`` and ``refresh`` do not read them).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from components.paths import MACHINE_FILES_DIR


def stored_file(content: str, store: Path = MACHINE_FILES_DIR) -> str:
    """The absolute path of ``content`` in the store, written there first unless it already is."""
    data = content.encode()
    path = store / hashlib.sha256(data).hexdigest()
    try:
        if path.read_bytes() == data:
            return str(path)
    except FileNotFoundError:
        pass
    store.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed into place: concurrent runs (parallel tests, two stacks) never see half a file.
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)
