"""The Pulumi stacks the service runs, through the Automation API on the real CLI.

Each town the API makes is a `town` stack of its own (`town-<sandbox id>`, silo:kind town), in
`towns_project_dir`: independent and parallel, one lock each, and a stack a person can preview like any
other (`cd .silo/serve/towns && pulumi preview -s town-<sandbox id>`, after `source scripts/env.sh`).
docs/architecture.md "Provisioning API" says why one stack per town and what it was measured against.
Silos are their stack files in `silos_project_dir` (the repository's Pulumi.<stack>.yaml): start and
stop set `silo:state` there and run `up`, as a person would.

The town's registry row is the source of truth of what it should be (rigs, running or stopped): every
operation writes the stack's file from it, so any service process on any machine can run it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pulumi.automation import Stack

from components.config.model import ConfigError, load_stack_file
from engine.recovery import file_locks, recover
from engine.runner import RunResult
from engine.runner import run as run_op
from engine.workspace import CLI_STACK_FILE_KEYS, PARALLEL, known_stack, new_stack, program_project, workspace
from service.settings import ServiceSettings


def town_stack_name(sandbox_id: str) -> str:
    return f"town-{sandbox_id}"


@dataclass
class StackRun:
    result: RunResult
    recovered: list[str]


class Stacks:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._file_lock = threading.Lock()
        # The town stacks' project: this repository's program and virtualenv, from anywhere.
        program_project(settings.towns_project_dir, "Gastown towns made by the provisioning API, one stack each")

    def write_stack_file(self, directory: Path, stack: str, config: dict[str, Any]) -> Path:
        """`Pulumi.<stack>.yaml` with `config`, keeping what the CLI itself wrote there (the salt)."""
        path = directory / f"Pulumi.{stack}.yaml"
        with self._file_lock:
            kept: dict[str, Any] = {}
            if path.exists():
                old = yaml.safe_load(path.read_text()) or {}
                kept = {k: v for k, v in old.items() if k in CLI_STACK_FILE_KEYS}
            path.write_text(yaml.safe_dump({**kept, "config": config}, sort_keys=True))
        return path

    def town_stack(self, stack: str, *, new: bool = False) -> Stack:
        """The town's stack: made when `new` (a create), else taken as existing (no CLI call to select it)."""
        ws = workspace(self.settings.towns_project_dir, self.settings.state_dir)
        return new_stack(ws, stack) if new else known_stack(ws, stack)

    def silo_stack(self, stack: str) -> Stack:
        return known_stack(workspace(self.settings.silos_project_dir, self.settings.state_dir), stack)

    def run(self, stack: Stack, op: str, **kwargs: Any) -> StackRun:
        """`op` on `stack`, first clearing what a crashed run of this service left on it.

        The queue runs one job per stack at a time (its lock), so a lock still on the stack when a job
        starts is a dead run's: `recover` removes it and drops the pending operations (a lock whose
        process is alive, such as a person's `pulumi up` on this host, is refused, not broken).
        """
        recovered = recover(stack).lines(stack.name) if file_locks(stack) else []
        if op in ("up", "preview"):
            kwargs.setdefault("parallel", PARALLEL)
        return StackRun(run_op(stack, op, outputs=False, **kwargs), recovered)


def silo_stacks(directory: Path) -> dict[str, str]:
    """Silo id -> stack name, for every silo stack file in `directory` (Pulumi.<stack>.yaml, kind silo)."""
    found: dict[str, str] = {}
    for path in sorted(directory.glob("Pulumi.*.yaml")):
        if path.name == "Pulumi.yaml":
            continue
        try:
            cfg = load_stack_file(path)
        except ConfigError:
            continue  # not a valid silo stack file: not the API's to run
        if cfg.kind == "silo":
            found[cfg.silo_id] = path.name[len("Pulumi.") : -len(".yaml")]
    return found


def failure(result: RunResult) -> tuple[str | None, str]:
    """(the resource that failed, why) from a failed run: its first error that names a resource."""
    lines = [line for line in (result.error or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith("urn:pulumi:") and ": " in line:
            urn, _, message = line.partition(": ")
            return urn.rsplit("::", 1)[-1], message.strip()
    return None, lines[0] if lines else "the operation failed"
