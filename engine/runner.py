"""Run one operation of a stack on the real CLI and keep what a reader of its output would see:
the steps (from the engine's event stream), the summary, the stack outputs as the CLI prints them
(secrets as "[secret]"), the diagnostics, and the CLI's own text.

A failed operation is a result too (``ok=False``, ``error`` from the engine's error diagnostics), so
callers can assert on what a failed `up` printed and left behind.
"""

from __future__ import annotations

import copy
import json
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pulumi.automation import CommandError, EngineEvent, Stack

from engine.state import StackState, load_deployment

SECRET_MASK = "[secret]"
# The steps of one replacement: the engine reports all three for the same resource.
REPLACE_OPS = ("replace", "create-replacement", "delete-replaced")
PROVIDER_TYPE_PREFIX = "pulumi:providers:"


@dataclass
class Step:
    name: str
    type: str
    op: str
    urn: str
    diffs: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    op: str
    ok: bool
    error: str | None = None
    steps: list[Step] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    diagnostics: list[dict[str, str]] = field(default_factory=list)
    policy_violations: list[dict[str, str]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    def ops(self, op: str) -> list[str]:
        """Logical names of the resources that had step `op` (same/create/update/replace/delete/read/refresh)."""
        return [s.name for s in self.steps if s.op == op]

    def op_of(self, name: str) -> str | None:
        """The step a resource had (a replacement counts as "replace"), or None if it had none."""
        ops = [s.op for s in self.steps if s.name == name]
        if any(op in REPLACE_OPS for op in ops):
            return "replace"
        return ops[0] if ops else None

    def changed(self, *, providers: bool = False) -> dict[str, str]:
        """Resources with any step other than `same`, `read` or a `refresh` that found no drift, by
        name → op (replacements as "replace"); a refresh that found drift shows as `update`/`delete`.

        Provider resources are left out unless asked for: the default dynamic provider's inputs are the
        whole stack config, so every config change also updates it (the engine stores them in state).
        """
        return {
            s.name: self.op_of(s.name) or s.op
            for s in self.steps
            if s.op not in ("same", "read", "refresh") and (providers or not s.type.startswith(PROVIDER_TYPE_PREFIX))
        }

    def warnings(self) -> list[str]:
        return [d["message"] for d in self.diagnostics if d["severity"] == "warning"]

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def run(
    stack: Stack,
    op: str,
    *,
    on_output: Callable[[str], Any] | None = None,
    outputs: bool = True,
    **kwargs: Any,
) -> RunResult:
    """`op` is up / preview / refresh / destroy; `kwargs` go to the Automation API call.

    With `outputs=False` the result has no stack outputs: the Automation API then skips the two CLI calls it
    makes after an update to read them (`stack history`, `stack output` twice: ~0.6 s of CPU, a third of a
    small stack's whole `up`); the steps, changes and errors come from the engine's events all the same.
    """
    if not outputs:
        stack = _without_results(stack)
    result = RunResult(op=op, ok=True)
    out: list[str] = []
    err: list[str] = []

    def on_event(event: EngineEvent) -> None:
        if event.resource_pre_event:
            meta = event.resource_pre_event.metadata
            result.steps.append(
                Step(
                    name=meta.urn.rsplit("::", 1)[-1],
                    type=meta.type,
                    op=meta.op.value if hasattr(meta.op, "value") else str(meta.op),
                    urn=meta.urn,
                    diffs=list(meta.diffs or []),
                )
            )
        elif event.res_outputs_event:
            # During a refresh every step is `refresh`; the engine says which ones found drift in the
            # outputs event (`update`, `delete`).
            meta = event.res_outputs_event.metadata
            op = meta.op.value if hasattr(meta.op, "value") else str(meta.op)
            if op not in ("refresh", "same"):
                for step in result.steps:
                    if step.urn == meta.urn and step.op == "refresh":
                        step.op = op
        elif event.diagnostic_event:
            diag = event.diagnostic_event
            result.diagnostics.append(
                {"severity": diag.severity, "message": diag.message.strip(), "urn": diag.urn or ""}
            )
        elif event.policy_event:
            pol = event.policy_event
            result.policy_violations.append(
                {
                    "policy": pol.policy_name,
                    "level": pol.enforcement_level,
                    "message": pol.message.strip(),
                    "urn": pol.resource_urn or "",
                }
            )
        elif event.summary_event:
            result.changes = {
                (k.value if hasattr(k, "value") else str(k)): v for k, v in event.summary_event.resource_changes.items()
            }

    def collect(line: str) -> None:
        out.append(line)
        if on_output:
            on_output(line)

    started = time.monotonic()
    call = {"up": stack.up, "preview": stack.preview, "refresh": stack.refresh, "destroy": stack.destroy}[op]
    try:
        answer = call(on_output=collect, on_error=err.append, on_event=on_event, **kwargs)
    except CommandError as exc:
        result.ok = False
        # Each error with the resource it is about (its URN names the type and the logical name).
        errors = [
            f"{d['urn']}: {d['message']}" if d["urn"] else d["message"]
            for d in result.diagnostics
            if d["severity"] == "error"
        ]
        # A mandatory policy violation fails the run with only "preview failed" as its error: name the
        # rule and the resource's URN too.
        errors += [
            violation_line(v["policy"], v["level"], v["urn"], v["message"])
            for v in result.policy_violations
            if v["level"] == "mandatory"
        ]
        result.error = "\n".join(errors) or str(exc)
    else:
        outputs = getattr(answer, "outputs", None) or {}
        result.outputs = {k: SECRET_MASK if v.secret else v.value for k, v in outputs.items()}
    result.seconds = time.monotonic() - started
    result.stdout = "\n".join(out)
    result.stderr = "\n".join(err)
    return result


def _without_results(stack: Stack) -> Stack:
    quiet = copy.copy(stack)
    # The SDK asserts it got a summary; nothing reads it (the result is built from the events).
    quiet.info = lambda *_a, **_k: types.SimpleNamespace()  # type: ignore[method-assign]
    quiet.outputs = lambda *_a, **_k: {}  # type: ignore[method-assign]
    return quiet


def violation_line(policy: str, level: str, urn: str, message: str) -> str:
    """One line naming a policy violation's rule, level and resource URN, then what is wrong.

    A policy's message is its description, then the violation's own lines (the silo guardrails end
    them with the URN, already named here)."""
    lines = message.strip().splitlines()
    detail = [line for line in lines[1:] if not line.startswith("resource: ")] or lines
    return f"policy violation ({level}) {policy}: {urn or 'the stack'}: {' '.join(detail)}"


def export_state(stack: Stack) -> tuple[StackState, dict[str, Any]]:
    """The stack's checkpoint with secrets shown (what `pulumi stack export --show-secrets` prints)."""
    ws = stack.workspace
    answer = ws.pulumi_command.run(
        ["stack", "export", "--show-secrets", "--stack", stack.name], ws.work_dir, ws.env_vars
    )
    exported = json.loads(answer.stdout)
    return load_deployment(exported), exported
