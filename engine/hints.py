"""The way forward after the CLI's own one-line state errors, which say what failed but not what to do
here (issue 25, "one-line errors"): a passphrase that does not open the stack's secrets, and a lock left
by a run that is not going any more.

The CLI's texts are matched as it writes them (v3.274.1): `secrets/passphrase/manager.go`
(`ErrIncorrectPassphrase`, "incorrect passphrase") and `backend/diy/lock.go` ("the stack is currently
locked by N lock(s)").
"""

from __future__ import annotations

# The CLI's own words (see above), also read by `silo fleet` to tell a locked stack from a failed one.
LOCKED = "the stack is currently locked"
INCORRECT_PASSPHRASE = "incorrect passphrase"
HALF_WRITTEN = "failed to load checkpoint: EOF"


def state_hint(cli_output: str, stack: str) -> str | None:
    """One line saying what to do about the state error in `cli_output`, or None if it has none."""
    if INCORRECT_PASSPHRASE in cli_output:
        return (
            f"state: the passphrase does not open stack {stack}'s secrets: use the one it was created with "
            "(.silo/passphrase for `make up`, else your PULUMI_CONFIG_PASSPHRASE[_FILE] or the team's secret); "
            'if it is lost, docs/security.md "A lost passphrase" says what survives and how to start the state over'
        )
    if HALF_WRITTEN in cli_output:
        return (
            f"state: stack {stack}'s state files were left half-written by a killed run: `silo recover {stack}` "
            f"(`make recover STACK={stack}`) repairs them and clears the run's lock and pending operations"
        )
    if LOCKED in cli_output:
        return (
            f"state: stack {stack} is locked by another run: wait for it; if none is going (a crashed or killed "
            f"run), `silo recover {stack}` (`make recover STACK={stack}`) clears the lock and its pending operations"
        )
    return None
