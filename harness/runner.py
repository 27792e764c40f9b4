"""Runs one operation in the current (fresh) process: what `python -m harness ...` executes.

The program is run the way the Python language host and Automation API inline programs do:
`Settings` pointing at our monitor/engine objects, `set_all_config`, then `runpy.run_path` inside
`run_in_stack`, on an event loop whose default executor has enough threads for many in-flight
registrations.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pulumi.runtime
from pulumi.runtime import settings as pulumi_settings

from .config import ConfigError, load_config, load_project
from .deployment import Deployment, DeploymentError
from .monitor import HarnessEngine, HarnessMonitor
from .state import StateError, StateStore

OPERATIONS = ("preview", "up", "destroy")
EXECUTOR_THREADS = 64


def _run_program(deployment: Deployment, main: Path, config: dict[str, str], secret_keys: list[str]) -> None:
    project_dir = str(deployment.project_dir)
    os.chdir(project_dir)
    if project_dir not in sys.path:
        sys.path.insert(0, project_dir)
    pulumi.runtime.set_all_config(config, secret_keys)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_default_executor(ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="harness-rpc"))
    pulumi_settings.ROOT.set(None)
    pulumi_settings.configure(
        pulumi_settings.Settings(
            project=deployment.project,
            stack=deployment.stack,
            monitor=HarnessMonitor(deployment),
            engine=HarnessEngine(deployment),
            parallel=EXECUTOR_THREADS,
            dry_run=deployment.preview,
            organization="organization",
            root_directory=project_dir,
        )
    )
    try:
        loop.run_until_complete(pulumi.runtime.run_in_stack(lambda: runpy.run_path(str(main), run_name="__main__")))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _program_error(exc: BaseException, program_dir: Path) -> tuple[str, str]:
    """(one-line error, traceback limited to the program's own frames) for a failed program."""
    if isinstance(exc, DeploymentError):
        return str(exc), str(exc)
    harness_dir = str(Path(__file__).resolve().parent)
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if f.filename.startswith(str(program_dir))
        and not f.filename.startswith(harness_dir)
        and "site-packages" not in f.filename
    ]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    summary = f"program failed: {type(exc).__name__}: {exc}{where}"
    detail = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(exc))
    return summary, f"{summary}\n{detail}".rstrip()


def execute(
    operation: str,
    stack: str,
    project_dir: Path,
    state_dir: Path | None = None,
    config_file: Path | None = None,
    secrets: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `operation` and return the JSON-able result (never raises for deployment failures)."""
    if operation not in OPERATIONS:
        return _error_result(f"unknown operation {operation!r}: expected one of {', '.join(OPERATIONS)}")
    project_dir = Path(project_dir).resolve()
    state_dir = Path(state_dir).resolve() if state_dir else project_dir / ".silo" / "state"
    try:
        project = load_project(project_dir)
        stack_file = Path(config_file).resolve() if config_file else project_dir / f"Pulumi.{stack}.yaml"
        if config_file is None and not stack_file.exists():
            stack_file = None  # a stack without a config file is valid (all defaults)
        config, secret_keys = load_config(project, stack_file, secrets)
        deployment = Deployment(
            operation=operation,
            project=project.name,
            stack=stack,
            project_dir=project_dir,
            store=StateStore(state_dir, stack),
            config=config,
            state_dir=state_dir,
        )
    except (ConfigError, StateError) as exc:
        return _error_result(str(exc))

    try:
        if operation == "destroy":
            deployment.destroy()
            return deployment.result()
        try:
            _run_program(deployment, project.main, config, secret_keys)
        except Exception as exc:  # any program failure is reported; completed steps are already saved
            if deployment.errors:
                return deployment.result()
            summary, detail = _program_error(exc, project_dir)
            deployment.diagnose("error", detail)
            return deployment.result(error=summary)
        deployment.finish_update()
        return deployment.result()
    finally:
        deployment.close()


def _error_result(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "steps": [], "changes": {}, "outputs": {}, "diagnostics": []}
