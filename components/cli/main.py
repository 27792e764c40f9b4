"""``silo``: the command line (validate, render, status, doctor, adopt, recover, serve, emulator); all but `recover`
and `serve` run without the engine.

Run as the ``silo`` console script or ``python -m components.cli.main``. Exit codes: 0 success, 1 a
command failed at run time, 2 invalid config or usage. Heavy or not-yet-written collaborators
(render, status, the Fly emulator) are imported inside their command so ``silo validate`` stays fast
and works on its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.config.model import ConfigError, SiloConfig, from_mapping, read_stack_file
from components.errors import UserError, debugging, one_line
from components.providers.fly.settings import FlySettings, fly_config_map

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

STATUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("app", "APP"),
    ("machine_id", "MACHINE"),
    ("state", "STATE"),
    ("checks", "CHECKS"),
    ("volume", "VOLUME"),
    ("ips", "IPS"),
    ("r2_credentials", "R2 CREDENTIALS"),  # town machines only
)


def _load(path: Path) -> tuple[SiloConfig, dict[str, Any]]:
    """The validated config and the raw namespaced map (for the Fly settings)."""
    raw = read_stack_file(path)
    return from_mapping(raw), raw


def _print_errors(error: ConfigError) -> int:
    for line in error.lines:
        print(line, file=sys.stderr)
    return EXIT_INVALID


def _no_fly_apps(cfg: Any, path: Path, command: str) -> bool:
    """Whether `cfg` is the control stack, which has no Fly apps for `command` to act on (said in one line)."""
    if getattr(cfg, "kind", "silo") != "control":
        return False
    print(
        f"{command}: {path} is the control stack (silo:kind control): it runs no Fly apps; "
        f"`silo doctor {path}` checks its registry and bucket"
    )
    return True


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        cfg, _ = _load(args.stack_file)
    except ConfigError as error:
        return _print_errors(error)
    print(f"ok: {'control stack' if cfg.kind == 'control' else cfg.silo_id}")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    try:
        cfg, _ = _load(args.stack_file)
    except ConfigError as error:
        return _print_errors(error)
    if _no_fly_apps(cfg, args.stack_file, "render"):
        return EXIT_OK
    if cfg.kind != "silo":
        print(f"render: {args.stack_file} is a town stack: it has no Supabase apps to render")
        return EXIT_OK
    from components.domain.catalog import CatalogError, silo_images
    from components.render.files import render_stack

    # The catalog's resolution, as `up` does it: the files show the images that get deployed, and a tag
    # `up` would refuse fails here too (catalog/images.yaml is a local file: no registry is called).
    try:
        images = silo_images(cfg, towns=False)
    except CatalogError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    for image in images.values():
        for warning in image.warnings:
            print(f"warning: silo:images.{image.service}: {warning}", file=sys.stderr)
    for path in render_stack(cfg, args.out, images):
        print(path)
    return EXIT_OK


def _cell(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of ``status_report`` as aligned columns; lists are comma-joined, missing cells are ``-``."""
    # The towns' column only when a town machine is listed (a silo without towns would show a column of -).
    columns = [(k, t) for k, t in STATUS_COLUMNS if k != "r2_credentials" or any(k in row for row in rows)]
    table = [[title for _, title in columns]]
    table += [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table)


def _fly_settings(raw: Mapping[str, Any]) -> FlySettings:
    """The Fly API a command reads, as the program's providers resolve it; the implicit local emulator only
    when it is this checkout's own (ValueError with the one line to print otherwise)."""
    from components.cli.local_emulator import foreign_emulator
    from components.providers.fly.settings import resolve_fly_settings

    settings = resolve_fly_settings(fly_config_map(raw))
    problem = foreign_emulator(settings)
    if problem:
        raise ValueError(problem)
    return settings


def cmd_status(args: argparse.Namespace) -> int:
    try:
        cfg, raw = _load(args.stack_file)
    except ConfigError as error:
        return _print_errors(error)
    if _no_fly_apps(cfg, args.stack_file, "status"):
        return EXIT_OK
    from components.cli.status import status_report

    try:
        settings = _fly_settings(raw)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    print(format_table(status_report(cfg, settings)))
    return EXIT_OK


def cmd_adopt(args: argparse.Namespace) -> int:
    try:
        cfg, raw = _load(args.stack_file)
    except ConfigError as error:
        return _print_errors(error)
    if _no_fly_apps(cfg, args.stack_file, "adopt"):
        return EXIT_OK
    from components.cli.adopt import adopt, stack_identity
    from components.providers.fly.errors import FlyError

    try:
        owner = args.owner or stack_identity(args.stack_file, cfg)
        settings = _fly_settings(raw)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    try:
        lines, ok = adopt(cfg, settings, owner)
    except FlyError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(lines))
    return EXIT_OK if ok else EXIT_FAILED


def cmd_recover(args: argparse.Namespace) -> int:
    # The engine is needed here (the stack's state), so it is imported only for this command.
    from pulumi.automation import CommandError

    from engine.recovery import recover
    from engine.workspace import REPO_ROOT, EngineMissing, known_stack, workspace

    try:
        # The project in the current directory, as `pulumi` itself would pick it, else this repository's.
        project = Path.cwd() if (Path.cwd() / "Pulumi.yaml").is_file() else REPO_ROOT
        # Not selected through the CLI (`pulumi stack select`): that reads the stack, which a killed run may
        # have left unreadable until `recover` repairs it; a stack that does not exist fails its first command.
        done = recover(known_stack(workspace(project, REPO_ROOT / ".silo"), args.stack), force=args.force)
    except (EngineMissing, UserError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except CommandError as error:
        # The CLI's own last error line (no such stack, a backend it cannot reach, a wrong passphrase).
        lines = [line for line in str(error).splitlines() if line.strip().startswith("error:")]
        print(lines[-1].strip() if lines else f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(done.lines(args.stack)))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    # The API's dependencies (FastAPI, uvicorn, procrastinate) are imported for this command only.
    from service.app import serve
    from service.settings import load_settings

    try:
        if args.local:
            from service.local import local_settings

            settings = local_settings(port=args.port or 8787)
        else:
            settings = load_settings(args.config, {"port": args.port} if args.port else None)
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_INVALID
    if args.local:
        print(f"serve: the API at http://{settings.host}:{settings.port} (tokens: {settings.tokens_file})", flush=True)
    serve(settings, make_tokens=args.local)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from components.cli.doctor import main_lines

    code, lines = main_lines(args.stack_file)
    for line in lines:
        print(line, file=sys.stderr if code == EXIT_INVALID else sys.stdout)
    return code


def cmd_emulator(args: argparse.Namespace) -> int:
    # The emulators are dev tools, outside the installed package (pyproject.toml), and werkzeug is a dev
    # requirement: imported here only, so every other command runs without them. They sit in the checkout
    # beside the package, which a console script (venv/bin/silo) does not put on sys.path by itself.
    from components.paths import PROJECT_ROOT

    if (PROJECT_ROOT / "emulators").is_dir() and str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    try:
        from emulators.fly import serve
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in ("emulators", "werkzeug"):
            raise
        print(
            f"error: silo emulator is a dev tool: run it from the repository root with requirements-dev.txt "
            f"installed (missing module: {error.name})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    serve(args.host, args.port, args.state, args.token)
    return EXIT_OK


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number (got {text!r})") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535 (got {port})")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silo", description="Validate, render and inspect silo stacks without the Pulumi engine."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a Pulumi.<stack>.yaml; one line per problem")
    validate.add_argument("stack_file", type=Path, metavar="STACK_FILE")
    validate.set_defaults(func=cmd_validate)

    render = commands.add_parser("render", help="write fly.toml files, kong.yml, SQL and scripts")
    render.add_argument("stack_file", type=Path, metavar="STACK_FILE")
    render.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    render.set_defaults(func=cmd_render)

    status = commands.add_parser("status", help="machines, checks, volumes and IPs of a silo's apps")
    status.add_argument("stack_file", type=Path, metavar="STACK_FILE")
    status.set_defaults(func=cmd_status)

    doctor = commands.add_parser(
        "doctor", help="read-only preflight before the first up (Fly token, app names, region, registry, R2, images)"
    )
    doctor.add_argument("stack_file", type=Path, metavar="STACK_FILE")
    doctor.set_defaults(func=cmd_doctor)

    adopt = commands.add_parser(
        "adopt", help="mark the silo's existing, unmarked Fly apps as this stack's (before a first up over them)"
    )
    adopt.add_argument("stack_file", type=Path, metavar="STACK_FILE")
    adopt.add_argument(
        "--owner", default=None, help="the owner to write (default: <project>/<stack>/<client>/<app> of the file)"
    )
    adopt.set_defaults(func=cmd_adopt)

    serve = commands.add_parser("serve", help="the provisioning API (README, 'Provisioning API')")
    serve.add_argument("--config", type=Path, default=None, metavar="FILE", help="service settings (YAML)")
    serve.add_argument("--port", type=_port, default=None)
    serve.add_argument(
        "--local", action="store_true", help="`make serve`: local PostgreSQL, emulators, control stack, tokens file"
    )
    serve.set_defaults(func=cmd_serve)

    recover = commands.add_parser(
        "recover", help="after a crashed run: remove the stack's stale lock and drop its pending operations"
    )
    recover.add_argument("stack", metavar="STACK", help="the stack's name (e.g. dev)")
    recover.add_argument("--force", action="store_true", help="remove the lock even if its process still runs")
    recover.set_defaults(func=cmd_recover)

    # `silo fleet` (every stack of a backend) and `silo pr` (a silo per pull request): their parsers and
    # commands live in components/cli/fleet.py and pr.py, which import the engine only when run.
    from components.cli import fleet, pr

    fleet.add_parser(commands)
    pr.add_parser(commands)

    emulator = commands.add_parser("emulator", help="serve the local Fly Machines API emulator")
    emulator.add_argument("--port", type=_port, required=True)
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--state", type=Path, default=None, metavar="FILE", help="persist state here")
    emulator.add_argument("--token", default=None, help="require this bearer token")
    emulator.set_defaults(func=cmd_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help or a usage error: argparse has already printed why
        return exit_.code if isinstance(exit_.code, int) else EXIT_INVALID
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except UserError as error:
        # An API that cannot be reached or refuses, a database that refuses: the message says what failed
        # and what to do (components/errors.py); the traceback only with SILO_DEBUG=1.
        if debugging():
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
