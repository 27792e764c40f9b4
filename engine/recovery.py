"""What a crashed run leaves in a stack's state, and the one command that clears it (`silo recover`).

A `pulumi up` killed at any instant (SIGKILL, a lost machine, an OOM) leaves at most:
- the stack's lock: every later run is refused ("the stack is currently locked") until it is removed;
- pending operations: steps the engine had started when it died. With checkpoints on (the default) the
  state records each step as it starts, so a create that was in flight is a pending create: the engine
  does not know whether the object exists. Every create of this program finds what an interrupted
  create made and takes it over only when it is provably this stack's (FlyApp's ownership mark, a
  volume or machine inside such an app, a registry row with this stack as owner), so dropping a pending
  create is safe: the next `up` creates it again and adopts what exists instead of duplicating it.

`recover` removes the lock (after checking that the process holding it is gone: every DIY backend, file,
PostgreSQL or S3/R2, keeps the holder's host and pid in the lock, engine/locks.py reads it), drops the
pending creates and refreshes every other resource, then says what it did. The next `up` converges. A
lock taken on another machine, or a backend whose locks cannot be read, is refused unless `--force`.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from pulumi.automation import Stack

from components.errors import UserError
from engine.locks import Lock, LocksUnreadable, backend_kind, backend_url, stack_locks


class RecoveryRefused(UserError):
    """The stack is locked by a run that is still alive: recovering now would corrupt its state."""


@dataclass
class Recovery:
    locks_removed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # "<op> <urn>" of each pending operation dropped
    attrs_removed: list[str] = field(default_factory=list)  # unreadable `.attrs` files of a file backend

    def lines(self, stack: str) -> list[str]:
        if not self.locks_removed and not self.pending and not self.attrs_removed:
            return [f"recover: stack {stack} holds no lock and no pending operation; nothing to do"]
        out = [f"recover: removed the unreadable metadata file {path}" for path in self.attrs_removed]
        out += [f"recover: removed the stale lock of {who}" for who in self.locks_removed]
        out += [f"recover: dropped the pending {op}" for op in self.pending]
        out.append(f"recover: stack {stack} is consistent again: run `pulumi up` to converge")
        return out


def file_locks(stack: Stack) -> list[Lock]:
    """The locks a file backend holds for `stack` (`.pulumi/locks/<org>/<project>/<stack>/*.json`); none
    on any other backend (``locks`` reads those)."""
    url = backend_url(stack.workspace.env_vars)
    return stack_locks(url, stack.name) if backend_kind(url) == "file" else []


def locks(stack: Stack) -> list[Lock]:
    """The locks `stack`'s backend holds for it: file, PostgreSQL or S3 (``LocksUnreadable`` otherwise)."""
    return stack_locks(backend_url(stack.workspace.env_vars), stack.name)


def pending_operations(stack: Stack) -> list[str]:
    deployment = stack.export_stack().deployment or {}
    return [
        f"{op.get('type', '?')} of {op.get('resource', {}).get('urn', '?')}"
        for op in deployment.get("pending_operations") or []
    ]


def repair_attrs(url: str) -> list[str]:
    """Remove the `<blob>.attrs` files of a file backend that a killed run left unreadable.

    gocloud's fileblob (which the file backend writes through) writes a blob's metadata file by truncating
    it and then encoding into it (blob/fileblob/attrs.go `setAttrs`, before the blob's atomic rename), so
    a run killed in between leaves it empty, and every later command on the stack fails with "failed to
    load checkpoint: EOF". The file holds only metadata (content type, MD5) and a missing one is read as
    none (`getAttrs`), so removing an unreadable one loses nothing.
    """
    if backend_kind(url) != "file":
        return []
    root = Path(unquote(urlparse(url).path)) / ".pulumi"
    removed = []
    for path in sorted(root.rglob("*.attrs")):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(root.parent)))
    return removed


def recover(stack: Stack, *, force: bool = False) -> Recovery:
    """Clear the lock and the pending operations a crashed run left on `stack` (see the module docstring).

    A lock whose process still runs on this host, or was taken on another host (where this one cannot
    tell), is refused unless `force`: removing it would let a second run write the state the first is
    writing. So is a backend whose locks cannot be read.
    """
    done = Recovery()
    # First, as every command on the stack reads them: metadata files a kill left unreadable.
    done.attrs_removed = repair_attrs(backend_url(stack.workspace.env_vars))
    try:
        held = locks(stack)
    except LocksUnreadable as exc:
        if not force:
            raise RecoveryRefused(f"{exc}; `silo recover --force` removes the stack's locks without checking") from None
        held = []
    live = [lock for lock in held if lock.alive]
    if live and not force:
        holder = live[0]
        elsewhere = holder.hostname != socket.gethostname()
        where = ", on another machine: this one cannot tell if it still runs" if elsewhere else ""
        raise RecoveryRefused(
            f"stack {stack.name} is locked by a run that is still going ({holder.username}@{holder.hostname}, "
            f"pid {holder.pid}{where}): wait for it, or stop it first; `silo recover --force` removes the lock anyway"
        )
    stack.cancel()  # removes every lock of the stack, whatever the backend (file, S3, PostgreSQL)
    done.locks_removed = [lock.holder for lock in held]
    done.pending = pending_operations(stack)
    if done.pending:
        # Pending creates are dropped (the next up adopts what they made); the refresh also settles the
        # resources whose update or delete was in flight.
        stack.refresh(clear_pending_creates=True, on_output=lambda _line: None)
    return done
