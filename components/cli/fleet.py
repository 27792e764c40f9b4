"""``silo fleet preview|up|refresh|status``: one operation over every stack of a backend, N at a time.

The stacks are the ones the backend holds for this project (`pulumi stack ls`: the shared PostgreSQL or
S3/R2 state a team uses, or the local file backend), narrowed by ``--only``/``--exclude`` glob patterns on
their names. Each runs through the Automation API on the real CLI (engine/workspace.py, engine/runner.py),
``--parallel-stacks`` at a time in threads of this process: each stack's CLI, provider host and policy pack
are processes of their own, and the Pulumi SDK keeps an inline program's state in context variables, so
programs run side by side. `up` runs control stacks (``silo:kind: control``) first, on their own, because
silos read them through a StackReference.

While it runs there is one line per stack (redrawn in place on a terminal, one line when it starts and
one when it ends otherwise); then a summary table (result, changes, drift, duration) and one line per
failure; the exit status is 1 when any stack failed (or, with ``--expect-no-changes``, had changes).
``--summary-md FILE`` writes the same table as markdown (the drift check's issue comment), and under
GitHub Actions each drifted or failed stack is also an annotation.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from engine import hints

if TYPE_CHECKING:
    from pulumi.automation import LocalWorkspace

    from engine.runner import RunResult

OPS = ("preview", "up", "refresh", "status")
DEFAULT_PARALLEL_STACKS = 4
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
# Results: what a stack's run came to.
OK, CHANGES, UPDATED, DRIFTED, FAILED, LOCKED = "ok", "changes", "updated", "drifted", "failed", "locked"
BAD = (FAILED, LOCKED)
CHANGED = (CHANGES, UPDATED, DRIFTED)
# pulumi v3.274.1 pkg/backend/diy/lock.go checkForLock: "the stack is currently locked by N lock(s). ..."
# then one line per lock: "<url>: created by <user>@<host> (pid <pid>) at <RFC 3339 time>".
_HOLDER = re.compile(r"created by (?P<who>\S+) \(pid (?P<pid>\d+)\) at (?P<at>\S+)")
# The DIY PostgreSQL backend (pkg/backend/diy/postgres/bucket.go) caps its pool at 2 x GOMAXPROCS
# connections, and each listing holds one connection open while it queries another per row; `stack ls`
# lists every stack's directory with PULUMI_DIY_BACKEND_PARALLEL workers (10 by default). With 10 workers
# and 4 connections (2 cores), four listings hold every connection and wait for a fifth for ever: `pulumi
# stack ls` hangs once the backend has 4 stacks or more. One worker needs at most two connections.
DIY_LIST_PARALLEL = "PULUMI_DIY_BACKEND_PARALLEL"


# -- choosing the stacks ---------------------------------------------------------------------------------
def pick(names: Iterable[str], only: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """The names matching any ``only`` pattern (all when none) and no ``exclude`` pattern, sorted."""
    chosen = [n for n in names if not only or any(fnmatch.fnmatchcase(n, p) for p in only)]
    return sorted(n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude))


def stack_file(project_dir: Path, name: str) -> Path:
    return project_dir / f"Pulumi.{name.split('/')[-1]}.yaml"


def stack_kind(project_dir: Path, name: str) -> str | None:
    """`silo:kind` of the stack's file (``silo`` when unset), or None when there is no readable file."""
    try:
        doc = yaml.safe_load(stack_file(project_dir, name).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    config = doc.get("config") if isinstance(doc, dict) else None
    return str((config or {}).get("silo:kind") or "silo")


def waves(project_dir: Path, names: Sequence[str], op: str) -> list[list[str]]:
    """The order to run in: for `up`, control stacks first (silos read them), then the rest."""
    if op != "up":
        return [list(names)]
    control = [n for n in names if stack_kind(project_dir, n) == "control"]
    return [w for w in (control, [n for n in names if n not in control]) if w]


# -- one stack -------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    stack: str
    op: str
    result: str = OK
    changes: dict[str, int] = field(default_factory=dict)
    drift: int | None = None
    seconds: float = 0.0
    message: str = ""  # one line: why it failed
    changed: dict[str, str] = field(default_factory=dict)  # resource -> op, for the report's details


def one_line_error(result: RunResult, stack: str) -> tuple[str, str]:
    """(``locked`` or ``failed``, one line saying why) from a failed run's error and the CLI's stderr."""
    text = "\n".join(part for part in (result.error or "", result.stderr) if part)
    if hints.LOCKED in text:
        holder = _HOLDER.search(text)
        who = f" by {holder['who']} (pid {holder['pid']}) since {holder['at']}" if holder else ""
        return LOCKED, (
            f"locked{who}: another run of this stack is going; if it died, `silo recover {stack}` clears its lock"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not re.fullmatch(r"(code: \d+|stdout:|stderr:)", line)]
    errors = [line.removeprefix("stderr: ").removeprefix("error: ") for line in lines if "error: " in line]
    first = (errors or lines or ["the operation failed"])[0]
    if first.startswith("urn:pulumi:") and ": " in first:
        urn, _, why = first.partition(": ")
        first = f"{urn.rsplit('::', 1)[-1]}: {why}"
    return FAILED, first if len(first) <= 300 else first[:297] + "..."


def outcome_of(stack: str, op: str, result: RunResult, *, refreshed: bool) -> Outcome:
    out = Outcome(stack, op, seconds=result.seconds)
    if not result.ok:
        out.result, out.message = one_line_error(result, stack)
        return out
    out.changes = {k: v for k, v in result.changes.items() if k != "same" and v}
    out.changed = result.changed()
    if op == "refresh":
        out.drift = len(out.changed)
        out.result = DRIFTED if out.drift else OK
    elif op == "preview":
        if refreshed:  # a preview after a refresh: whatever it would change differs from the program
            out.drift = len(out.changed)
        out.result = (DRIFTED if refreshed else CHANGES) if out.changed else OK
    else:
        out.result = UPDATED if out.changed else OK
    return out


def run_stack(
    ws: LocalWorkspace, project_dir: Path, name: str, op: str, *, refresh: bool, on_line: Callable[[str], Any]
) -> Outcome:
    """`op` of one stack through the Automation API; a failure of any kind is an Outcome, never raised."""
    from pulumi.automation import CommandError

    from engine.guardrails import policy_args
    from engine.runner import run
    from engine.workspace import PARALLEL, known_stack

    started = time.monotonic()
    restored: Path | None = None
    try:
        if op in ("preview", "up") and not stack_file(project_dir, name).exists():
            # A PR silo's stack file is made from the template for the run (components/cli/pr.py).
            from components.cli.pr import restore_stack_file

            restored = restore_stack_file(project_dir, name)
            if restored is None:
                return Outcome(
                    name, op, FAILED, seconds=time.monotonic() - started,
                    message=f"no {stack_file(project_dir, name).name} in {project_dir}: {op} reads the stack's config "
                    "from it",
                )  # fmt: skip
        # The stack was listed by the backend: no `stack select` (a CLI call per stack) is needed.
        stack = known_stack(ws, name)
        # Nothing reads the outputs after an up here: skip the CLI calls the Automation API makes for them.
        kwargs: dict[str, Any] = {"outputs": False}
        if op in ("preview", "up"):
            kwargs |= {"parallel": PARALLEL, **policy_args(name.split("/")[-1])}
        if op == "preview" and refresh:
            kwargs["refresh"] = True
        result = run(stack, op, on_output=on_line, **kwargs)
    except CommandError as exc:
        from engine.runner import RunResult

        failed = RunResult(op=op, ok=False, error=str(exc), seconds=time.monotonic() - started)
        return outcome_of(name, op, failed, refreshed=refresh)
    except Exception as exc:  # one stack's surprise must not stop the others: report it as its failure
        from components.errors import one_line

        return Outcome(name, op, FAILED, seconds=time.monotonic() - started, message=one_line(exc))
    finally:
        if restored is not None:
            restored.unlink(missing_ok=True)
    return outcome_of(name, op, result, refreshed=refresh)


# -- status ----------------------------------------------------------------------------------------------
@dataclass
class Status:
    stack: str
    result: str = OK  # ok | locked | pending | failed (the last update failed, or the state cannot be read)
    state: str = "-"  # the silo's `status` output (running, stopped), `control`, or -
    resources: int = 0
    last: str = "-"  # e.g. "update succeeded 2026-12-07 10:01"
    lock: str = "-"
    url: str = "-"
    message: str = ""


def stack_status(ws: LocalWorkspace, name: str) -> Status:
    """What the backend says about one stack, without running it: last update, resources, outputs, lock."""
    import json

    from pulumi.automation import CommandError

    from components.errors import one_line
    from engine.locks import LocksUnreadable, backend_url, stack_locks

    out = Status(name)
    try:
        exported = ws.pulumi_command.run(["stack", "export", "--stack", name], ws.work_dir, ws.env_vars)
        deployment = json.loads(exported.stdout).get("deployment") or {}
        history = _last_update(ws, name)
    except (CommandError, ValueError) as exc:
        out.result, out.message = FAILED, one_line(exc).split("stderr: ")[-1]
        return out
    resources = deployment.get("resources") or []
    out.resources = len(resources)
    root = next((r for r in resources if r.get("type") == "pulumi:pulumi:Stack"), {})
    outputs = root.get("outputs") or {}
    kind = "control" if "backup_bucket" in outputs or "registry_backend_dsn" in outputs else ""
    out.state = str(outputs.get("status") or kind or "-")
    out.url = str(outputs.get("supabase_url") or "-")
    if history is not None:
        out.last = f"{history.kind} {history.result} {history.start_time:%Y-%m-%d %H:%M}"
        if history.result == "failed":
            out.result = FAILED
    try:
        held = stack_locks(backend_url(ws.env_vars), name)
    except LocksUnreadable:
        held, out.lock = [], "?"
    if held:
        lock = held[0]
        out.result = LOCKED
        out.lock = f"{lock.holder}{'' if lock.alive else ' (gone)'}"
        if not lock.alive:
            out.message = f"locked by a run that is gone: `silo recover {name}`"
    elif deployment.get("pending_operations"):
        # No run holds the stack, yet steps are in flight: what a killed run leaves.
        out.result = "pending"
        out.message = f"{len(deployment['pending_operations'])} pending operation(s): `silo recover {name}`"
    return out


def _last_update(ws: LocalWorkspace, name: str) -> Any:
    from pulumi.automation import Stack

    history = Stack.select(name, ws).history(page_size=1, show_secrets=False)
    return history[0] if history else None


# -- output ----------------------------------------------------------------------------------------------
def changes_text(changes: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(changes.items())) or "-"


def duration(seconds: float) -> str:
    return f"{seconds:.1f}s"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def summary_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    rows = [["STACK", "RESULT", "CHANGES", "DRIFT", "DURATION"]]
    for o in outcomes:
        drift = "-" if o.drift is None else str(o.drift)
        rows.append([o.stack, o.result, changes_text(o.changes), drift, duration(o.seconds)])
    return rows


def status_rows(statuses: Sequence[Status]) -> list[list[str]]:
    rows = [["STACK", "RESULT", "STATE", "RESOURCES", "LAST UPDATE", "LOCK", "URL"]]
    rows += [[s.stack, s.result, s.state, str(s.resources), s.last, s.lock, s.url] for s in statuses]
    return rows


def totals(op: str, outcomes: Sequence[Outcome], seconds: float, parallel: int) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    parts = ", ".join(f"{n} {result}" for result, n in sorted(counts.items()))
    return f"fleet {op}: {len(outcomes)} stack(s): {parts or 'none'}; {duration(seconds)} ({parallel} at a time)"


def markdown(title: str, outcomes: Sequence[Outcome]) -> str:
    lines = [f"## {title}", "", "| stack | result | changes | drift | duration |", "| --- | --- | --- | --- | --- |"]
    for row in summary_rows(outcomes)[1:]:
        lines.append(f"| `{row[0]}` | {' | '.join(row[1:])} |")
    for o in outcomes:
        if o.result in (*BAD, DRIFTED, CHANGES):
            detail = o.message or "\n".join(f"{op}: {name}" for name, op in sorted(o.changed.items()))
            lines += ["", f"<details><summary>{o.stack}: {o.result}</summary>", "", "```", detail, "```", "</details>"]
    return "\n".join(lines) + "\n"


def annotate(outcome: Outcome, out: TextIO) -> None:
    """GitHub Actions annotations (workflow commands) for the stacks that need a look."""
    if outcome.result in BAD:
        print(f"::error title=silo fleet {outcome.op}: {outcome.stack} {outcome.result}::{outcome.message}", file=out)
    elif outcome.result == DRIFTED:
        print(
            f"::warning title=Drift in stack {outcome.stack}::{outcome.drift} resource(s) differ from the program",
            file=out,
        )


class Live:
    """One line per stack while the fleet runs: redrawn in place on a terminal, else start/end lines."""

    def __init__(self, op: str, names: Sequence[str], out: TextIO) -> None:
        self.op, self.out = op, out
        self.tty = out.isatty()
        self.width = max((len(n) for n in names), default=5)
        self.lines = {name: "waiting" for name in names}
        self.started: dict[str, float] = {}
        self.drawn = 0
        self.lock = threading.Lock()

    def start(self, name: str) -> None:
        with self.lock:
            self.started[name] = time.monotonic()
            self._set(name, f"{self.op} ...", emit=True)

    def progress(self, name: str, line: str) -> None:
        if not self.tty or not line.strip():
            return
        with self.lock:
            elapsed = time.monotonic() - self.started.get(name, time.monotonic())
            self._set(name, f"{self.op} {duration(elapsed)}  {line.strip()[:80]}", emit=False)

    def done(self, outcome: Outcome) -> None:
        with self.lock:
            what = outcome.message or changes_text(outcome.changes)
            self._set(outcome.stack, f"{outcome.result:<8} {duration(outcome.seconds):>7}  {what}", emit=True)

    def _set(self, name: str, text: str, *, emit: bool) -> None:
        self.lines[name] = text
        if not self.tty:
            if emit:
                print(f"{name:<{self.width}}  {text}", file=self.out, flush=True)
            return
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")
        for stack, status in self.lines.items():
            self.out.write(f"\x1b[2K{stack:<{self.width}}  {status}\n")
        self.drawn = len(self.lines)
        self.out.flush()


# -- the command -----------------------------------------------------------------------------------------
def project_dir_of(arg: Path | None) -> Path:
    """The project: --project-dir, else the current directory when it has a Pulumi.yaml, else this repo."""
    from engine.workspace import REPO_ROOT

    if arg is not None:
        return arg.resolve()
    return Path.cwd() if (Path.cwd() / "Pulumi.yaml").is_file() else REPO_ROOT


def fleet_workspace(project_dir: Path) -> LocalWorkspace:
    """The workspace every stack of the fleet runs in: the backend and passphrase the environment says
    (PULUMI_BACKEND_URL, PULUMI_CONFIG_PASSPHRASE[_FILE]), else the local file backend under .silo/."""
    from engine.locks import backend_kind
    from engine.workspace import REPO_ROOT, workspace

    if backend_kind(os.environ.get("PULUMI_BACKEND_URL", "")) == "postgres":
        os.environ.setdefault(DIY_LIST_PARALLEL, "1")  # see DIY_LIST_PARALLEL
    # No `env` for the program: every stack's program runs in this process, and the environment the
    # workspace sets around an inline program would be restored under the feet of the others.
    return workspace(project_dir, REPO_ROOT / ".silo")


def cmd_fleet(args: argparse.Namespace) -> int:
    from pulumi.automation import CommandError

    from components.errors import UserError, one_line
    from engine.workspace import EngineMissing

    if args.refresh and args.op != "preview":
        print(f"error: --refresh: only for preview (fleet {args.op})", file=sys.stderr)
        return EXIT_INVALID
    project_dir = project_dir_of(args.project_dir)
    out = sys.stdout
    try:
        ws = fleet_workspace(project_dir)
        every = [s.name for s in ws.list_stacks()]
    except (EngineMissing, UserError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except CommandError as error:
        lines = [line for line in str(error).splitlines() if "error:" in line]
        print(lines[-1].strip() if lines else f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    names = pick(every, args.only, args.exclude)
    if not names:
        if args.only or args.exclude:
            print(f"error: no stack of {len(every)} matches --only/--exclude: {', '.join(every)}", file=sys.stderr)
            return EXIT_INVALID
        print(f"fleet {args.op}: the backend holds no stack of this project")
        return EXIT_OK
    started = time.monotonic()
    if args.op == "status":
        with ThreadPoolExecutor(max_workers=args.parallel_stacks) as pool:
            statuses = list(pool.map(lambda n: stack_status(ws, n), names))
        print(table(status_rows(statuses)), file=out)
        for s in statuses:
            if s.message:
                print(f"{s.stack}: {s.message}", file=out)
        return EXIT_FAILED if any(s.result == FAILED for s in statuses) else EXIT_OK

    live = Live(args.op, names, out)
    outcomes: dict[str, Outcome] = {}

    def one(name: str) -> None:
        live.start(name)
        outcome = run_stack(
            ws, project_dir, name, args.op, refresh=args.refresh, on_line=lambda line: live.progress(name, line)
        )
        outcomes[name] = outcome
        live.done(outcome)

    with ThreadPoolExecutor(max_workers=args.parallel_stacks) as pool:
        for wave in waves(project_dir, names, args.op):
            list(pool.map(one, wave))
    ordered = [outcomes[n] for n in names]
    seconds = time.monotonic() - started
    print("", file=out)
    print(table(summary_rows(ordered)), file=out)
    for o in ordered:
        if o.result in BAD:
            print(f"{o.result}: {o.stack}: {o.message}", file=out)
    print(totals(args.op, ordered, seconds, args.parallel_stacks), file=out)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for o in ordered:
            annotate(o, out)
    if args.summary_md is not None:
        flags = " --refresh" if args.refresh else ""
        args.summary_md.write_text(markdown(f"silo fleet {args.op}{flags}", ordered))
    failed = any(o.result in BAD for o in ordered)
    unexpected = args.expect_no_changes and any(o.result in CHANGED for o in ordered)
    return EXIT_FAILED if failed or unexpected else EXIT_OK


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def add_parser(commands: Any) -> None:
    """`silo fleet ...` (registered by components/cli/main.py)."""
    fleet = commands.add_parser(
        "fleet", help="preview, up, refresh or show every stack of the backend, N at a time (Automation API)"
    )
    fleet.add_argument("op", choices=OPS, help="the operation run on each stack (status only reads the backend)")
    fleet.add_argument(
        "--parallel-stacks", type=_positive, default=DEFAULT_PARALLEL_STACKS, metavar="N",
        help=f"stacks run at once (default {DEFAULT_PARALLEL_STACKS})",
    )  # fmt: skip
    fleet.add_argument("--only", action="append", default=[], metavar="GLOB", help="only stacks matching (repeatable)")
    fleet.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip stacks matching")
    fleet.add_argument("--refresh", action="store_true", help="preview: refresh first, so changes are drift")
    fleet.add_argument("--expect-no-changes", action="store_true", help="exit 1 when any stack has changes")
    fleet.add_argument("--summary-md", type=Path, default=None, metavar="FILE", help="write the summary as markdown")
    fleet.add_argument(
        "--project-dir", type=Path, default=None, metavar="DIR",
        help="the project (its Pulumi.yaml and stack files); default: the current directory, else this repository",
    )  # fmt: skip
    fleet.set_defaults(func=cmd_fleet)
