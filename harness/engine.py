"""Python API: run one harness operation in a fresh process and parse its JSON result.

A fresh interpreter per operation keeps the SDK's module-level settings, the program's module globals
and the provider host's cache clean, exactly as separate `pulumi up` invocations would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent


class HarnessCrashed(RuntimeError):
    """The harness process died without producing a result (a harness bug, not a deployment error)."""


@dataclass
class HarnessResult:
    ok: bool
    error: str | None
    steps: list[dict[str, str]] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    diagnostics: list[dict[str, str]] = field(default_factory=list)
    stderr: str = ""
    returncode: int = 0

    def ops(self, op: str) -> list[str]:
        """Logical names of the resources that had step `op` (create/update/replace/delete/same/read)."""
        return [s["name"] for s in self.steps if s["op"] == op]

    def op_of(self, name: str) -> str | None:
        """The step a resource with this logical name had, or None."""
        return next((s["op"] for s in self.steps if s["name"] == name), None)

    def warnings(self) -> list[str]:
        return [d["message"] for d in self.diagnostics if d["severity"] == "warning"]


def run(
    op: str,
    stack: str,
    project_dir: Path,
    state_dir: Path,
    config_file: Path | None = None,
    secrets: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> HarnessResult:
    """Run `python -m harness <op>` for `stack` and return its result.

    `env` is added to this process's environment (provider credentials, emulator URLs, passphrase).
    Secrets are passed through the environment, never on the command line.
    """
    cmd = [
        sys.executable, "-m", "harness", op,
        "--stack", stack,
        "--project-dir", str(Path(project_dir).resolve()),
        "--state-dir", str(Path(state_dir).resolve()),
        "--json",
    ]  # fmt: skip
    if config_file is not None:
        cmd += ["--config-file", str(Path(config_file).resolve())]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), child_env.get("PYTHONPATH", "")) if p)
    if secrets:
        child_env["HARNESS_SECRET_CONFIG"] = json.dumps(secrets)
    # Own process group, so a timeout also takes down the provider host the harness started.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
        cwd=_REPO_ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise HarnessCrashed(f"harness {op} timed out after {timeout}s\nstderr:\n{stderr[-4000:]}") from None
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        doc = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise HarnessCrashed(
            f"harness {op} exited {proc.returncode} without a result\nstderr:\n{stderr[-4000:]}"
        ) from None
    return HarnessResult(
        ok=doc["ok"],
        error=doc["error"],
        steps=doc["steps"],
        changes=doc["changes"],
        outputs=doc["outputs"],
        diagnostics=doc["diagnostics"],
        stderr=stderr,
        returncode=proc.returncode,
    )
