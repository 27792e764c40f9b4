"""The real Pulumi CLI, driven through the Automation API: one place that says how this project runs it.

The CLI is the one `engine/build.sh` built (`.engine/current/bin/pulumi`), else a `pulumi` on PATH (the
official CLI behaves the same). The program runs as an Automation API *inline program*: the CLI talks
to the SDK's own language server in this process (`--client`), which is how Pulumi runs inline
programs everywhere. That path needs no `pulumi-language-python` host, which the module proxy here does
not serve (docs/engine.md). Dynamic providers still run in their own process, started by the
engine through `pulumi-resource-pulumi-python`.

Everything stays local and offline: a file backend, a passphrase kept in a 0600 file, no update check,
no plugin downloads. The state directory is 0700 and the CLI runs with umask 077, so the checkpoints,
backups and history it writes are 0600: readable by their owner only.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import runpy
import secrets
import shutil
import stat
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pulumi
import pulumi.log
import yaml
from pulumi.automation import ConcurrentUpdateError, LocalWorkspace, PulumiCommand, Stack, StackAlreadyExistsError
from pulumi.automation._stack import StackInitMode

from components.errors import UserError, debugging, one_line
from engine.provider_host import DEFAULT_THREADS

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILT_ENGINE = REPO_ROOT / ".engine" / "current"
PROJECT = "silo"
# `--parallel` for every run here: the engine's default (4 x CPUs) runs 8 steps at once on two cores,
# and each step is mostly an HTTP round trip that waits; 100 towns are ~900 steps (bench/run.py). The
# provider host serves as many calls at once (engine/provider_host.py).
PARALLEL = DEFAULT_THREADS
# The only organisation a file backend knows; on Pulumi Cloud a stack reference names the real one.
FILE_BACKEND_ORG = "organization"


class EngineMissing(RuntimeError):
    """The CLI cannot be run as this project runs it; ``python -m engine`` prints it as one line."""


class UnsafePassphrase(EngineMissing):
    """A passphrase the CLI would accept but that protects nothing (empty, blank, unreadable)."""


# -- private files ---------------------------------------------------------------------------------------
PRIVATE_UMASK = 0o077
_umask_lock = threading.Lock()
_umask_users = 0
_umask_saved = 0


@contextmanager
def private_umask() -> Iterator[None]:
    """This process's umask is 077 while the block runs, so what the CLI started in it creates (the
    file backend's checkpoints, backups, history and locks; gocloud's fileblob writes them 0666 &^ umask)
    is its owner's only.

    The umask is per process and the SDK's `PulumiCommand.run` has no way to give its subprocess its own,
    so it is set around the run; overlapping runs (threads) share one setting and the last to finish
    restores the one before the first.
    """
    global _umask_users, _umask_saved
    with _umask_lock:
        if _umask_users == 0:
            _umask_saved = os.umask(PRIVATE_UMASK)
        _umask_users += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_users -= 1
            if _umask_users == 0:
                os.umask(_umask_saved)


class PrivateFilesCommand(PulumiCommand):
    """The Pulumi CLI, every command run under ``private_umask``."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with private_umask():
            return super().run(*args, **kwargs)


def private_dir(path: Path) -> Path:
    """``path`` made if missing, and 0700 whoever made it first (a ``mkdir -p`` or an earlier version)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_tree(root: Path) -> None:
    """Everything under ``root`` its owner's only, e.g. the checkpoints an earlier version let the CLI
    write 0644 (links are left alone: their mode means nothing, and their target is not ours)."""
    for dirpath, _dirs, files in os.walk(root):
        for path in (dirpath, *(os.path.join(dirpath, name) for name in files)):
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                os.chmod(path, stat.S_IMODE(mode) & 0o700)


def pulumi_command() -> PulumiCommand:
    """The built CLI, else the official one on PATH; run with private files (``PrivateFilesCommand``)."""
    if (BUILT_ENGINE / "bin" / "pulumi").exists():
        return _command_at(str(BUILT_ENGINE.resolve()))
    found = shutil.which("pulumi")
    if found:
        return _command_at(str(Path(found).resolve().parent.parent))
    raise EngineMissing("no Pulumi CLI: run `make engine` (builds it from Go modules) or put `pulumi` on PATH")


@functools.cache
def _command_at(root: str) -> PulumiCommand:
    """One command object per CLI install and process: the SDK's constructor runs `pulumi version` (about
    0.1 s of CPU) even when told to skip the check, and the service makes a workspace per operation. The
    object holds only the path and that version, and its `run` keeps no state between calls."""
    return PrivateFilesCommand(root=root, skip_version_check=True)


def ensure_passphrase(path: Path) -> Path:
    """A random passphrase for the stack's secrets, made once and readable only by its owner.

    Secrets in a file-backend state are encrypted with it; losing it loses them (the resources stay).
    """
    if not path.exists():
        private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path


def refuse_empty_passphrase(state_dir: Path, environ: Mapping[str, str]) -> None:
    """Raise ``UnsafePassphrase`` when the passphrase the CLI would use is empty.

    The CLI takes a set ``PULUMI_CONFIG_PASSPHRASE`` as the passphrase even when it is empty (it looks
    the variable up rather than testing its value), before any ``PULUMI_CONFIG_PASSPHRASE_FILE``, so
    an empty one would encrypt the stack's secrets with the empty string while this wrapper said they
    were encrypted with the generated file.
    """
    generated = state_dir / "passphrase"
    if "PULUMI_CONFIG_PASSPHRASE" in environ:
        if not environ["PULUMI_CONFIG_PASSPHRASE"].strip():
            raise UnsafePassphrase(
                "PULUMI_CONFIG_PASSPHRASE is set but empty, so the CLI would encrypt the stack's secrets with an "
                "empty passphrase: set a real one, or unset PULUMI_CONFIG_PASSPHRASE to use the one generated in "
                f"{generated}"
            )
        return
    file = environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if not file:
        return
    try:
        text = Path(file).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UnsafePassphrase(
            f"PULUMI_CONFIG_PASSPHRASE_FILE ({file}) cannot be read ({exc.strerror or exc}): fix it, or unset "
            f"PULUMI_CONFIG_PASSPHRASE_FILE to use the passphrase generated in {generated}"
        ) from None
    if not text.strip():
        raise UnsafePassphrase(
            f"PULUMI_CONFIG_PASSPHRASE_FILE ({file}) is empty, so the CLI would encrypt the stack's secrets with "
            f"an empty passphrase: write a passphrase into it, or unset PULUMI_CONFIG_PASSPHRASE_FILE to use "
            f"the one generated in {generated}"
        )


def engine_env(state_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: a file backend and passphrase under `state_dir`, unless the caller's
    environment already chose a backend or a passphrase; no network attempts.

    An empty passphrase is refused (``UnsafePassphrase``) before anything is created. `state_dir` and
    everything in it (backend, passphrase, PULUMI_HOME) are made its owner's only, including what an
    earlier version left readable by others; ``private_umask`` keeps what the CLI writes next that way.
    """
    refuse_empty_passphrase(state_dir, {**os.environ, **(extra or {})})
    private_dir(state_dir)
    private_tree(state_dir)
    env: dict[str, str] = {
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
        # The dynamic-provider host runs on this interpreter (the project's virtualenv).
        "PULUMI_PYTHON_CMD": sys.executable,
    }
    if not os.environ.get("PULUMI_BACKEND_URL"):
        backend = private_dir(state_dir / "backend")
        env["PULUMI_BACKEND_URL"] = backend.resolve().as_uri()
    # Checkpoints stay on (the CLI's default): the state records every step as it starts and ends, so a run
    # killed at any instant leaves pending operations that `silo recover` clears, never an unrecorded
    # object. PULUMI_SKIP_CHECKPOINTS=true (the caller's choice, docs/performance.md) saves only
    # the final state: faster for a large file-backend stack, and only as safe as every create's adoption.
    if not (os.environ.get("PULUMI_CONFIG_PASSPHRASE") or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
        env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(ensure_passphrase(state_dir / "passphrase").resolve())
    env.update(extra or {})
    return env


# Set to 1 to have the Pulumi SDK's own debug messages sent to the CLI (see `_sdk_debug_messages`).
SDK_DEBUG_ENV = "SILO_SDK_DEBUG"


# One program's top-level code at a time in this process (`silo fleet` and the API's worker run several
# stacks in threads). Two threads importing the program's modules for the first time at once can see a
# module half-initialized ("cannot import name 'conninfo_attempts' from partially initialized module
# 'psycopg.conninfo'", seen in CI with `silo fleet preview`). The top-level code only declares resources
# (the SDK's registrations run later, on each run's own event loop) and holds the GIL anyway, so the lock
# costs next to nothing.
_PROGRAM_LOCK = threading.Lock()


def inline_program(
    env: Mapping[str, str] | None = None,
    main: Path = REPO_ROOT / "__main__.py",
    user_errors: list[UserError] | None = None,
) -> Callable[[], Awaitable[None]]:
    """A program's `__main__.py` (this project's unless `main` says otherwise) as an inline program, run
    the way `pulumi up` runs it.

    A language host would give the program the CLI's environment; an inline program runs in this
    process, so `env` (what the workspace adds for the CLI) is applied around it. A user error
    (components/errors.py) fails the run with its message alone, and is added to `user_errors`.
    """

    _fewer_full_collections()

    async def program() -> None:
        saved = {key: os.environ.get(key) for key in env or {}}
        os.environ.update(env or {})
        try:
            _sdk_debug_messages(os.environ.get(SDK_DEBUG_ENV) == "1")
            try:
                with _PROGRAM_LOCK:
                    runpy.run_path(str(main), run_name="__main__")
            except UserError as exc:
                if debugging():
                    raise
                # One line naming the key or resource and what to do (components/errors.py), not the
                # program's traceback: the SDK reports a RunError by its message alone.
                if user_errors is not None:
                    user_errors.append(exc)
                raise pulumi.RunError(one_line(exc)) from None
            # Let every registration the program queued start before the SDK waits for them. Its
            # wait (pulumi.runtime.stack.wait_for_rpcs) first awaits the RPCs it has seen start, one by
            # one; those that have not started yet fall through to a loop that re-arms a callback on
            # every pending Output (tens of thousands) each time any one of them completes. That
            # quadratic loop was 4.7 s of the program's CPU in a no-change preview of 100 towns
            # (py-spy; bench/run.py) and is gone once the registrations have started.
            await asyncio.sleep(0)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return program


# Python's cycle collector, as this process tunes it once it runs Pulumi programs inline.
FULL_COLLECTION_EVERY = 1000  # collections of the middle generation (the default is 10)


def _fewer_full_collections() -> None:
    """Full collections of Python's cycle collector at most every 1000 middle-generation collections
    (about 7 million allocations, instead of 70,000), for this whole process.

    A program keeps every resource's Outputs, futures and callbacks alive until the run ends (about
    230,000 objects for 100 towns), and each full collection walks all of them while the program waits
    for the GIL: 7 or 8 full collections were 1.6 s of a no-change preview of 100 towns, and without them
    it took 7.6 s instead of 9.2 (four runs each, bench/run.py's setup). Younger generations are
    collected as before, and reference counting frees everything that is not in a cycle.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, max(gen2, FULL_COLLECTION_EVERY))


_SDK_DEBUG = pulumi.log.debug


def _sdk_debug_messages(send: bool) -> None:
    """Whether `pulumi.log.debug` reaches the CLI.

    The SDK sends its own trace ("registering resource ...", "beginning rpc ...": about four per
    resource) as a blocking Log RPC from the program's event loop, and the CLI turns each into an engine
    event that the Automation API parses back in this process; the CLI displays them only with
    `--debug`. 3,683 of them made a no-change preview of 100 towns 1.8 s slower (10.4 s against 8.6 s,
    three runs each, bench/run.py's setup). This program logs nothing at debug level itself; its
    warnings and errors are untouched. Set SILO_SDK_DEBUG=1 to have them back when debugging the SDK.
    """
    pulumi.log.debug = _SDK_DEBUG if send else _drop  # type: ignore[assignment]


def _drop(*_args: object, **_kwargs: object) -> None:
    return None


def make_project(work_dir: Path, project: Path = REPO_ROOT) -> Path:
    """A project directory for stacks kept apart from the repository's own stack files (tests, the
    benchmark): the Pulumi.yaml of `project` (this one by default), and the stack files the caller
    writes next to it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(project / "Pulumi.yaml", work_dir / "Pulumi.yaml")
    return work_dir


# What the CLI itself writes into a stack file besides config (the passphrase's salt, a secrets provider and
# its key): a program that rewrites a stack file keeps these, or the stack's secrets can no longer be read.
CLI_STACK_FILE_KEYS = ("encryptionsalt", "secretsprovider", "encryptedkey")


def program_project(work_dir: Path, description: str | None = None) -> Path:
    """A project directory whose Pulumi.yaml runs this repository's program with its virtualenv from
    wherever the directory is: what the raw CLI runs outside the checkout (the provisioning API's town
    stacks, the tests of the raw CLI); the stack files go next to it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    project: dict[str, Any] = {"name": PROJECT}
    if description:
        project["description"] = description
    project["main"] = str(REPO_ROOT)
    project["runtime"] = {"name": "python", "options": {"toolchain": "pip", "virtualenv": str(REPO_ROOT / "venv")}}
    (work_dir / "Pulumi.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    return work_dir


def workspace(
    work_dir: Path,
    state_dir: Path,
    env: Mapping[str, str] | None = None,
    project: Path = REPO_ROOT,
) -> LocalWorkspace:
    """A LocalWorkspace on `work_dir` (its Pulumi.yaml and Pulumi.<stack>.yaml) running the program of
    `project` (this one by default); state, passphrase and PULUMI_HOME under `state_dir`; `env` added
    for the CLI, its providers and the program."""
    home = state_dir / "pulumi-home"
    home.mkdir(parents=True, exist_ok=True)
    return LocalWorkspace(
        work_dir=str(work_dir),
        pulumi_home=str(home.resolve()),
        program=inline_program(env, project / "__main__.py"),
        env_vars=engine_env(state_dir, env),
        pulumi_command=pulumi_command(),
    )


def select_stack(ws: LocalWorkspace, name: str) -> Stack:
    return Stack.create_or_select(name, ws)


def new_stack(ws: LocalWorkspace, name: str) -> Stack:
    """A stack expected not to exist yet (a create): `pulumi stack init`, one CLI call where the SDK's
    `create_or_select` makes two for a new stack (`stack select`, refused, then `stack init`). A stack
    that exists already (a create run again after a crash) is taken as it is, like `known_stack`; so is
    one the CLI refuses to init because it is locked (only an existing stack has a lock: a crashed run's,
    which the caller's recovery clears)."""
    with suppress(StackAlreadyExistsError, ConcurrentUpdateError):
        Stack.create(name, ws)
    return known_stack(ws, name)


def known_stack(ws: LocalWorkspace, name: str) -> Stack:
    """A stack known to exist, without the CLI call `Stack.select` makes (`pulumi stack select`, ~0.1-0.5 s
    of CPU: it loads the stack's secrets manager). Every command the Automation API runs names the stack
    itself (`--stack NAME`), so nothing needs it selected; a stack that does not exist fails the command
    that uses it, saying so. The provisioning API runs many small stacks (service/stacks.py)."""
    stack = Stack.__new__(Stack)
    stack.name = name
    stack.workspace = ws
    stack._mode = StackInitMode.SELECT  # what Stack.__init__ records (read by its repr only)
    return stack
