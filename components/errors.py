"""The one thing every error a user can act on shares: it is shown as its message alone.

A config key to fix, an API that cannot be reached, a credential that is missing, a database that
refuses: the message already says what failed and what to do, so a traceback adds only noise (it is
still shown with `--debug` / SILO_DEBUG=1). Errors of the code itself (bugs) keep their traceback.
Where it applies: the program's run (engine/language_host.py, engine/workspace.py) and the dynamic
providers' host (engine/provider_host.py).
"""

from __future__ import annotations

import os

DEBUG_ENV = "SILO_DEBUG"


class UserError(Exception):
    """Base of the errors whose message is the whole story (see the module docstring)."""


def debugging() -> bool:
    """Whether tracebacks are wanted for user errors too: `SILO_DEBUG=1` (scripts/bin/pulumi sets it for
    `pulumi --debug`)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


def one_line(exc: BaseException) -> str:
    """The error's message on one line (newlines of a long message joined with '; ')."""
    text = str(exc).strip() or type(exc).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
