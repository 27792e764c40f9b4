"""What a crashed run leaves in a stack's state, and the one command that clears it (`silo recover`).

A `pulumi up` killed at any instant (SIGKILL, a lost machine, an OOM) leaves at most:
- the stack's lock: every later run is refused ("the stack is currently locked") until it is removed;
- pending operations: steps the engine had started when it died. With checkpoints on (the default) the
  state records each step as it starts, so a create that was in flight is a pending create: the engine
  does not know whether the object exists. Every create of this program finds what an interrupted
  create made and takes it over only when it is provably this stack's (FlyApp's ownership mark, a
  volume or machine inside such an app, a registry row with this stack as owner), so dropping a pending
  create is safe: the next `up` creates it again and adopts what exists instead of duplicating it.

`recover` removes the lock (after checking that the process holding it is gone, when the backend says
which process that is), drops the pending creates and refreshes every other resource, then says what
it did. The next `up` converges.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from pulumi.automation import Stack

from components.errors import UserError


class RecoveryRefused(UserError):
    """The stack is locked by a run that is still alive: recovering now would corrupt its state."""


@dataclass
class Lock:
    path: Path
    pid: int
    hostname: str
    username: str

    @property
    def alive(self) -> bool:
        """Whether the process that holds the lock still runs (known only on the host that took it)."""
        if self.hostname != socket.gethostname():
            return True  # another machine's: we cannot tell, so assume it runs
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass
class Recovery:
    locks_removed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # "<op> <urn>" of each pending operation dropped

    def lines(self, stack: str) -> list[str]:
        if not self.locks_removed and not self.pending:
            return [f"recover: stack {stack} holds no lock and no pending operation; nothing to do"]
        out = [f"recover: removed the stale lock of {who}" for who in self.locks_removed]
        out += [f"recover: dropped the pending {op}" for op in self.pending]
        out.append(f"recover: stack {stack} is consistent again: run `pulumi up` to converge")
        return out


def file_locks(stack: Stack) -> list[Lock]:
    """The locks a file backend holds for `stack` (`.pulumi/locks/<org>/<project>/<stack>/*.json`)."""
    url = stack.workspace.env_vars.get("PULUMI_BACKEND_URL") or os.environ.get("PULUMI_BACKEND_URL", "")
    if not url.startswith("file://"):
        return []
    root = Path(unquote(urlparse(url).path)) / ".pulumi" / "locks"
    name = stack.name.split("/")[-1]
    locks = []
    for path in root.glob(f"*/*/{name}/*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        locks.append(
            Lock(path, int(doc.get("pid") or 0), str(doc.get("hostname") or ""), str(doc.get("username") or ""))
        )
    return locks


def pending_operations(stack: Stack) -> list[str]:
    deployment = stack.export_stack().deployment or {}
    return [
        f"{op.get('type', '?')} of {op.get('resource', {}).get('urn', '?')}"
        for op in deployment.get("pending_operations") or []
    ]


def recover(stack: Stack, *, force: bool = False) -> Recovery:
    """Clear the lock and the pending operations a crashed run left on `stack` (see the module docstring).

    A lock whose process still runs on this host is refused unless `force`: removing it would let a
    second run write the state the first is writing.
    """
    done = Recovery()
    locks = file_locks(stack)
    live = [lock for lock in locks if lock.alive]
    if live and not force:
        holder = live[0]
        raise RecoveryRefused(
            f"stack {stack.name} is locked by a run that is still going ({holder.username}@{holder.hostname}, "
            f"pid {holder.pid}): wait for it, or stop it first; `silo recover --force` removes the lock anyway"
        )
    stack.cancel()  # removes every lock of the stack, whatever the backend (file, S3, PostgreSQL)
    done.locks_removed = [f"{lock.username}@{lock.hostname} (pid {lock.pid})" for lock in locks]
    done.pending = pending_operations(stack)
    if done.pending:
        # Pending creates are dropped (the next up adopts what they made); the refresh also settles the
        # resources whose update or delete was in flight.
        stack.refresh(clear_pending_creates=True, on_output=lambda _line: None)
    return done
