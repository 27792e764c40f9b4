"""Whether the local Fly emulator a command is about to use is this checkout's own.

With no Fly token and no API URL, `silo status`, `silo doctor` and `silo adopt` read the local emulator
on SILO_EMULATOR_PORT, like the program does. Any process can listen on that port: another checkout's
emulator would answer with another world, and the command would report it as this one. So, like
scripts/emulator.sh's `ours` (the wrapper's check before it reuses an emulator), only an emulator whose
pid is in this checkout's .silo/fly-emulator.pid, started for that port and this checkout's state file,
is used.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from components.paths import PROJECT_ROOT
from components.providers.fly.settings import FlySettings


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _args_of(pid: int) -> str:
    # `ps` rather than /proc: the same answer on macOS, where developers run this too. `-ww`: whole lines
    # whatever COLUMNS says (with COLUMNS set, ps cuts the line there, and a long state path was lost).
    done = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def foreign_emulator(settings: FlySettings, root: Path = PROJECT_ROOT) -> str | None:
    """Why the emulator ``settings`` points at must not be used (one line), or None when it may.

    Only the implicit local emulator is checked: a URL the user gave (FLY_API_HOSTNAME, fly:apiUrl) is
    theirs to choose. Nothing listening is not refused here: the command's own request says so.
    """
    if not settings.local_default:
        return None
    port = urlsplit(settings.base_url).port or 80
    if not _listening(port):
        return None
    silo = root / ".silo"
    state = silo / "fly-emulator.json"
    try:
        pid = int((silo / "fly-emulator.pid").read_text().strip())
    except (OSError, ValueError):
        pid = 0
    args = _args_of(pid) if pid else ""
    # The relative form is how an earlier scripts/pulumi.sh started it, from this checkout's root.
    if args.endswith(
        (f"emulator --port {port} --state {state}", f"emulator --port {port} --state .silo/fly-emulator.json")
    ):
        return None
    return (
        f"127.0.0.1:{port} is served by another process, not this checkout's Fly emulator ({root}): set "
        "SILO_EMULATOR_PORT to the port of this checkout's emulator (`make up` starts one), or stop that process"
    )
