"""``silo pr up|down|gc``: a throwaway silo per pull request, the stack ``pr-<number>``, made from a template.

The template (``pr-silo.yaml`` beside Pulumi.yaml, or ``--template``) is a stack file whose string values may
name ``{pr}``, the pull request's number, plus a ``pr:`` section with its ``ttl`` and ``max``. From it:

- **Names that cannot be a real silo's.** A silo's Fly apps are ``devenv-{client}-{app}-{service}``, and
  slugs may hold dashes, so only the joined ``{client}-{app}`` tells silos apart (components/domain/naming.py,
  "ownership"). A PR silo's app is the template's app plus the segment ``-pr<number>``, reserved for PR
  silos: its joined slug is unique per pull request, and ``pr up`` refuses when a stack file of the
  project is a silo with that same slug. (Were one made anyway, the apps' ownership marks would still
  refuse the takeover at preview.) Towns are global too (their id is user + name): a template's town must
  name ``{pr}``.
- **A TTL.** ``pr up`` records ``silo:pr-expires`` (UTC, ISO 8601) among the stack's tags, in the backend
  beside its state; every ``pr up`` (each push) renews it. ``pr gc`` destroys the PR silos past it.
- **A cap.** ``pr up`` of a new PR silo is refused while ``max`` of them exist.
- **Throwaway data.** ``silo:allowDataDeletion`` is true, so ``pr down`` deletes the volumes too.

The stack file ``Pulumi.pr-<number>.yaml`` is written for the run and removed after it, so nothing
generated lingers beside the real stack files: the backend keeps the state (and the secrets' salt), and
the template makes the file again whenever a command needs it (``restore_stack_file``, used by
``silo fleet``). ``pr up`` prints the silo's Kong URL and anon key (public by design) as the markdown of a
PR comment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from components.cli.fleet import _positive
from components.config.model import ConfigError, SiloConfig, from_mapping
from components.errors import UserError, one_line

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pulumi.automation import LocalWorkspace

TEMPLATE_NAME = "pr-silo.yaml"
STACK = re.compile(r"^pr-(?P<number>[1-9][0-9]{0,8})$")
EXPIRES_TAG = "silo:pr-expires"
NUMBER_TAG = "silo:pr"
COMMENT_MARK = "<!-- silo-pr -->"
DEFAULT_TTL = "72h"
DEFAULT_MAX = 5
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
_DURATION = re.compile(r"^(?P<n>[0-9]+)(?P<unit>[smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class PrError(UserError):
    """A pull-request silo the command refuses to make or cannot find (one line, naming what to fix)."""


def stack_name(number: int) -> str:
    return f"pr-{number}"


def parse_ttl(text: str, where: str = "--ttl") -> dt.timedelta:
    match = _DURATION.fullmatch(str(text).strip())
    if not match:
        raise PrError(f"{where}: must be a whole number of s, m, h or d, such as 72h or 3d (got {text!r})")
    return dt.timedelta(seconds=int(match["n"]) * _UNITS[match["unit"]])


@dataclass
class Template:
    path: Path
    config: dict[str, Any]
    kept: dict[str, Any]  # what the CLI keeps in a stack file besides config (the passphrase's salt)
    ttl: dt.timedelta
    max: int


def load_template(path: Path) -> Template:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise PrError(f"{path}: cannot read the PR silo template ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise PrError(f"{path}: not valid YAML ({one_line(exc)})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise PrError(f"{path}: must be a stack file with a config: map")
    settings = doc.get("pr") or {}
    if not isinstance(settings, dict) or set(settings) - {"ttl", "max"}:
        raise PrError(f"{path}: pr: must be a map of ttl and max")
    cap = settings.get("max", DEFAULT_MAX)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise PrError(f"{path}: pr.max: must be a whole number of at least 1 (got {cap!r})")
    ttl = parse_ttl(settings.get("ttl", DEFAULT_TTL), f"{path}: pr.ttl")
    from engine.workspace import CLI_STACK_FILE_KEYS  # the engine only when run (components/cli/main.py)

    kept = {k: v for k, v in doc.items() if k in CLI_STACK_FILE_KEYS}
    return Template(path, {str(k): v for k, v in doc["config"].items()}, kept, ttl, cap)


def _fill(value: Any, number: int) -> Any:
    if isinstance(value, str):
        return value.replace("{pr}", str(number))
    if isinstance(value, list):
        return [_fill(v, number) for v in value]
    if isinstance(value, dict) and "secure" not in value:
        return {k: _fill(v, number) for k, v in value.items()}
    return value


def pr_config(template: Template, number: int) -> dict[str, Any]:
    """The stack config of PR `number`'s silo (see the module docstring), checked like any stack file's."""
    config = template.config
    where = template.path
    if str(config.get("silo:kind", "silo")) != "silo":
        raise PrError(f"{where}: silo:kind: a PR silo is a silo (got {config['silo:kind']!r})")
    app = config.get("silo:app")
    if not isinstance(app, str) or "{pr}" in app:
        raise PrError(f"{where}: silo:app: the template's app slug, without {{pr}} (`-pr<number>` is added to it)")
    towns = config.get("silo:towns") or []
    towns = json.loads(towns) if isinstance(towns, str) else towns
    for i, town in enumerate(towns if isinstance(towns, list) else []):
        if isinstance(town, dict) and "{pr}" not in str(town.get("name", "")):
            raise PrError(
                f"{where}: silo:towns[{i}].name: must name {{pr}}: a town's id is global (user + name), so every "
                "PR silo would declare the same town"
            )
    filled = {key: _fill(value, number) for key, value in config.items()}
    filled["silo:app"] = f"{app}-pr{number}"
    filled["silo:allowDataDeletion"] = "true"
    try:
        checked = from_mapping(filled)
    except ConfigError as error:
        raise PrError(f"{where} for PR {number}: {'; '.join(error.lines)}") from None
    assert isinstance(checked, SiloConfig)
    return filled


def stack_file_text(template: Template, number: int) -> str:
    header = (
        f"# Generated by `silo pr up {number}` from {template.path.name}: the silo of pull request {number}.\n"
        "# Removed after each command; the template makes it again (components/cli/pr.py).\n"
    )
    return header + yaml.safe_dump({**template.kept, "config": pr_config(template, number)}, sort_keys=True)


@contextmanager
def stack_file(project_dir: Path, template: Template, number: int) -> Iterator[Path]:
    """`Pulumi.pr-<number>.yaml` for the length of a command; removed after it."""
    path = project_dir / f"Pulumi.{stack_name(number)}.yaml"
    path.write_text(stack_file_text(template, number))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def restore_stack_file(project_dir: Path, name: str, template: Path | None = None) -> Path | None:
    """Write the stack file of PR stack `name` from the project's template (for `silo fleet`); None when
    `name` is not a PR stack or there is no template. The caller removes it."""
    match = STACK.fullmatch(name.split("/")[-1])
    path = template or project_dir / TEMPLATE_NAME
    if not match or not path.is_file():
        return None
    out = project_dir / f"Pulumi.{name.split('/')[-1]}.yaml"
    out.write_text(stack_file_text(load_template(path), int(match["number"])))
    return out


def silo_id_clash(project_dir: Path, config: Mapping[str, Any]) -> str | None:
    """The stack file of this project that is a real silo with the PR silo's slug, if any."""
    from components.config.model import load_stack_file

    mine = from_mapping(dict(config))
    for path in sorted(project_dir.glob("Pulumi.*.yaml")):
        name = path.name[len("Pulumi.") : -len(".yaml")]
        if STACK.fullmatch(name):
            continue
        try:
            other = load_stack_file(path)
        except ConfigError:
            continue
        if isinstance(other, SiloConfig) and other.silo_id == mine.silo_id:
            return path.name
    return None


def pr_stacks(ws: LocalWorkspace) -> list[str]:
    return sorted((s.name for s in ws.list_stacks() if STACK.fullmatch(s.name.split("/")[-1])), key=_number)


def _number(name: str) -> int:
    match = STACK.fullmatch(name.split("/")[-1])
    return int(match["number"]) if match else 0


def expires_at(ws: LocalWorkspace, name: str) -> dt.datetime | None:
    try:
        value = ws.list_tags(name).get(EXPIRES_TAG)
        return dt.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def comment(outputs: Mapping[str, Any], number: int, expires: dt.datetime) -> str:
    """The PR comment: where the silo is, its public key, and when it goes away."""
    url = outputs.get("supabase_url") or "-"
    anon = outputs.get("anon_key") or "-"
    return "\n".join(
        [
            COMMENT_MARK,
            f"### Silo for this pull request: `{stack_name(number)}`",
            "",
            "| | |",
            "| --- | --- |",
            f"| Supabase URL (Kong) | {url} |",
            f"| anon key (public) | `{anon}` |",
            f"| expires | {expires:%Y-%m-%d %H:%M} UTC, renewed by every push |",
            "",
            f"Closing the pull request destroys it (`silo pr down {number}`).",
            "",
        ]
    )


# -- the commands ----------------------------------------------------------------------------------------
def _workspace(project_dir: Path) -> LocalWorkspace:
    from components.cli.fleet import fleet_workspace

    return fleet_workspace(project_dir)


def pr_up(
    project_dir: Path, template_path: Path, number: int, *, ttl: dt.timedelta | None, cap: int | None
) -> tuple[str, dict[str, Any]]:
    """Create or update PR `number`'s silo; its comment text and the run's outputs."""
    from pulumi.automation import Stack

    from components.cli.fleet import one_line_error
    from engine.guardrails import policy_args
    from engine.runner import run
    from engine.workspace import PARALLEL

    template = load_template(template_path)
    name = stack_name(number)
    config = pr_config(template, number)
    clash = silo_id_clash(project_dir, config)
    if clash:
        raise PrError(
            f"{name}: {clash} is a silo with the same slug ({config['silo:client']}-{config['silo:app']}): "
            f"`-pr<number>` app suffixes are reserved for PR silos; rename that silo's app"
        )
    ws = _workspace(project_dir)
    existing = pr_stacks(ws)
    others = [s for s in existing if s.split("/")[-1] != name]
    limit = cap or template.max
    if name not in [s.split("/")[-1] for s in existing] and len(others) >= limit:
        raise PrError(
            f"{name}: {len(others)} PR silos exist already ({', '.join(others)}), the cap is {limit}: "
            "`silo pr down <number>` one, or `silo pr gc` the expired ones"
        )
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + (template.ttl if ttl is None else ttl)
    with stack_file(project_dir, template, number):
        stack = Stack.create_or_select(name, ws)
        stack.set_tag(NUMBER_TAG, str(number))
        stack.set_tag(EXPIRES_TAG, expires.isoformat())
        result = run(stack, "up", parallel=PARALLEL, **policy_args(name))
    if not result.ok:
        raise PrError(f"{name}: up failed: {one_line_error(result, name)[1]}")
    return comment(result.outputs, number, expires), result.outputs


def pr_down(project_dir: Path, template_path: Path, number: int) -> str:
    """Destroy PR `number`'s silo and remove its stack; a PR without one is fine (nothing to do)."""
    from pulumi.automation import Stack

    from components.cli.fleet import one_line_error
    from engine.runner import run

    name = stack_name(number)
    ws = _workspace(project_dir)
    if name not in [s.split("/")[-1] for s in pr_stacks(ws)]:
        return f"{name}: no such stack; nothing to destroy"
    path = project_dir / f"Pulumi.{name}.yaml"
    try:
        if template_path.is_file():
            path.write_text(stack_file_text(load_template(template_path), number))
        stack = Stack.select(name, ws)
        result = run(stack, "destroy")
        if not result.ok:
            raise PrError(f"{name}: destroy failed: {one_line_error(result, name)[1]}")
        ws.remove_stack(name)
    finally:
        path.unlink(missing_ok=True)
    deleted = result.changes.get("delete", 0)
    return f"{name}: destroyed ({deleted} resources deleted) and removed from the backend"


def pr_gc(project_dir: Path, template_path: Path, now: dt.datetime | None = None) -> tuple[list[str], bool]:
    """Destroy every PR silo past its TTL; (one line per PR silo, whether all went well)."""
    now = now or dt.datetime.now(dt.UTC)
    ws = _workspace(project_dir)
    lines, ok = [], True
    for name in pr_stacks(ws):
        expires = expires_at(ws, name)
        if expires is None:
            lines.append(f"{name}: no {EXPIRES_TAG} tag: kept (`silo pr down {_number(name)}` removes it)")
        elif expires > now:
            lines.append(f"{name}: kept until {expires:%Y-%m-%d %H:%M} UTC")
        else:
            try:
                done = pr_down(project_dir, template_path, _number(name))
                lines.append(f"{done} (expired {expires:%Y-%m-%d %H:%M} UTC)")
            except UserError as error:
                ok = False
                lines.append(f"error: {one_line(error)}")
    return lines or ["no PR silo in the backend"], ok


def cmd_pr(args: argparse.Namespace) -> int:
    from pulumi.automation import CommandError

    from components.cli.fleet import project_dir_of
    from engine.workspace import EngineMissing

    project_dir = project_dir_of(args.project_dir)
    template = args.template or project_dir / TEMPLATE_NAME
    try:
        if args.action == "up":
            ttl = parse_ttl(args.ttl) if args.ttl else None
            text, _ = pr_up(project_dir, template, args.number, ttl=ttl, cap=args.max)
            if args.comment_file:
                args.comment_file.write_text(text)
            print(text)
        elif args.action == "down":
            print(pr_down(project_dir, template, args.number))
        else:
            lines, ok = pr_gc(project_dir, template)
            print("\n".join(lines))
            return EXIT_OK if ok else EXIT_FAILED
    except (PrError, EngineMissing, UserError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except CommandError as error:
        lines = [line.strip() for line in str(error).splitlines() if "error:" in line]
        print(lines[-1].removeprefix("stderr: ") if lines else f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _number_arg(text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,8}", text):
        raise argparse.ArgumentTypeError(f"must be a pull request's number (got {text!r})")
    return int(text)


def add_parser(commands: Any) -> None:
    """`silo pr ...` (registered by components/cli/main.py)."""
    pr = commands.add_parser("pr", help="a throwaway silo per pull request (stack pr-<number>, from pr-silo.yaml)")
    actions = pr.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--template", type=Path, default=None, metavar="FILE", help=f"default: {TEMPLATE_NAME}")
    common.add_argument("--project-dir", type=Path, default=None, metavar="DIR", help="default: as silo fleet")
    up = actions.add_parser("up", parents=[common], help="create or update the PR's silo; print its PR comment")
    up.add_argument("number", type=_number_arg, metavar="NUMBER")
    up.add_argument("--ttl", default=None, help="e.g. 72h, 3d (default: the template's pr.ttl, else 72h)")
    up.add_argument("--max", type=_positive, default=None, help="PR silos allowed at once (default: pr.max, else 5)")
    up.add_argument("--comment-file", type=Path, default=None, metavar="FILE", help="also write the comment here")
    down = actions.add_parser("down", parents=[common], help="destroy the PR's silo and remove its stack")
    down.add_argument("number", type=_number_arg, metavar="NUMBER")
    actions.add_parser("gc", parents=[common], help="destroy the PR silos past their TTL")
    pr.set_defaults(func=cmd_pr)
