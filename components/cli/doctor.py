"""`silo doctor STACK_FILE`: a read-only preflight to run before a stack's first `up`.

One finding per check, in this order, each ``ok``, ``FAIL`` or ``skip`` (a check that does not apply to
this stack, or that needs one that failed):

1. fly token: the Fly token is accepted and reaches the stack's organization (`GET /apps?org_slug=`);
2. app names: every Fly app the stack will create is free, or already in that organization (app names
   are global across Fly.io; another organization's app answers 403);
3. region: the organization can place machines in `silo:region` (a placement simulation, which
   creates nothing);
4. registry database (towns, control stack): reachable; for towns, as a least-privileged login that can
   read and write town rows and nothing more;
5. R2 bucket (towns, control stack): the backup bucket is reachable with the Cloudflare credentials, and
   for towns the parent access key their temporary R2 credentials are minted from is set;
6. town R2 credentials (towns that exist already): each town machine's temporary R2 credentials are
   still valid (read from the machine's config, R2_CREDENTIALS_EXPIRE_AT): past their expiry the town's
   backups have stopped (a failure); within two days of it, the next `pulumi up` must run (said);
7. image catalog: every image the stack runs resolves in catalog/images.yaml.

Credentials come from where the program's providers would take them: the stack file's plain values,
else the environment (`FLY_API_TOKEN`, `SILO_REGISTRY_DSN`, `CLOUDFLARE_*`). Encrypted (``secure:``)
values need the Pulumi engine to read, so export them instead. Nothing is written: Fly and Cloudflare
get only reads (and the placement simulation), the database session is read-only.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from components.cli.local_emulator import foreign_emulator
from components.config.model import ConfigError, ControlConfig, SiloConfig, from_mapping, read_stack_file
from components.domain.catalog import CatalogError, load_catalog
from components.domain.town_credentials import TOWN_MACHINE, machine_expiry
from components.providers.cloudflare.client import CloudflareClient
from components.providers.cloudflare.errors import CloudflareError
from components.providers.cloudflare.settings import CONFIG_KEYS as CLOUDFLARE_CONFIG_KEYS
from components.providers.cloudflare.settings import require_parent_access_key, resolve_cloudflare_settings
from components.providers.controldb.dsn import CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV
from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyAuthError, FlyError, FlyNameTaken
from components.providers.fly.settings import FlySettings, fly_config_map, resolve_fly_settings

Status = Literal["ok", "fail", "skip"]
# What towns do to the registry (components/providers/controldb/registry.py): read and write their
# rows, never delete them (a destroyed town is soft-deleted), never change the schema.
TOWN_TABLES = ("gastown_towns", "gastown_rigs")
TOWN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE")
EXCESS_PRIVILEGES = ("DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
DEFAULT_BACKUP_BUCKET = ControlConfig.model_fields["backup_bucket"].default


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str

    @property
    def line(self) -> str:
        return f"{self.status.upper() if self.status == 'fail' else self.status:<4}  {self.check}: {self.detail}"


@dataclass
class Context:
    path: Path
    raw: dict[str, Any]
    cfg: SiloConfig | ControlConfig
    env: Mapping[str, str]
    fly: FlySettings | None = None
    fly_ok: bool = False

    @property
    def towns(self) -> bool:
        return isinstance(self.cfg, SiloConfig) and bool(self.cfg.towns)

    def plain(self, key: str) -> str | None:
        """A stack-file value the doctor can read (not an encrypted one)."""
        value = self.raw.get(key)
        return value if isinstance(value, str) and value else None


def doctor(path: Path, env: Mapping[str, str] | None = None) -> list[Finding]:
    """Every check's finding; raises ConfigError when the stack file itself is invalid."""
    raw = read_stack_file(path)
    ctx = Context(path=path, raw=raw, cfg=from_mapping(raw), env=os.environ if env is None else env)
    checks: list[tuple[str, Callable[[Context], tuple[Status, str]]]] = [
        ("fly token", check_fly_token),
        ("app names", check_app_names),
        ("region", check_region),
        ("registry database", check_registry),
        ("R2 bucket", check_bucket),
        ("town R2 credentials", check_town_credentials),
        ("image catalog", check_catalog),
    ]
    findings = []
    for name, check in checks:
        status, detail = check(ctx)
        findings.append(Finding(name, status, detail))
    return findings


# -- Fly ----------------------------------------------------------------------------------------------
def app_names(cfg: SiloConfig) -> list[str]:
    """Every Fly app the stack creates: one per service, one per town."""
    return [cfg.app_name(service) for service in cfg.services] + [town.sandbox_id for town in cfg.towns]


def check_fly_token(ctx: Context) -> tuple[Status, str]:
    if not isinstance(ctx.cfg, SiloConfig):
        return "skip", "the control stack has no Fly apps"
    try:
        ctx.fly = resolve_fly_settings(fly_config_map(ctx.raw), ctx.env)
    except ValueError as exc:
        return "fail", str(exc)
    foreign = foreign_emulator(ctx.fly)
    if foreign:
        return "fail", foreign
    org = ctx.cfg.fly_org
    try:
        with FlyClient(ctx.fly, attempts=2) as fly:
            apps = fly.list_apps(org)
    except FlyAuthError:
        return "fail", f"the Fly API at {ctx.fly.base_url} rejected the token (from {ctx.fly.source}); set a valid one"
    except FlyError as exc:
        if exc.status in (403, 404):
            return "fail", f"the token does not reach organization {org!r} (silo:flyOrg): {exc.message}"
        return "fail", f"cannot list the apps of organization {org!r}: {exc}"
    ctx.fly_ok = True
    return "ok", f"the token ({ctx.fly.source}) reaches organization {org!r} at {ctx.fly.base_url} ({len(apps)} apps)"


def needs_fly(ctx: Context) -> tuple[Status, str] | None:
    """Why a check that calls the Fly API is skipped, or None when it can run."""
    if not isinstance(ctx.cfg, SiloConfig):
        return "skip", "the control stack has no Fly apps"
    if not ctx.fly_ok:
        return "skip", "needs the fly token check to pass"
    return None


def check_app_names(ctx: Context) -> tuple[Status, str]:
    skipped = needs_fly(ctx)
    if skipped is not None or ctx.fly is None:
        return skipped or ("skip", "needs the fly token check to pass")
    org = ctx.cfg.fly_org
    free, ours, problems = [], [], []
    with FlyClient(ctx.fly, attempts=2) as fly:
        for name in app_names(ctx.cfg):
            try:
                app = fly.get_app(name)
            except FlyNameTaken:
                problems.append(f"{name} is taken by another organization")
                continue
            except FlyError as exc:
                problems.append(f"{name}: {exc}")
                continue
            owner = ((app or {}).get("organization") or {}).get("slug")
            if app is None:
                free.append(name)
            elif owner in (None, org):
                ours.append(name)
            else:
                problems.append(f"{name} belongs to organization {owner!r}, not {org!r}")
    if problems:
        return "fail", "; ".join(problems) + " (app names are global on Fly.io: change silo:client / silo:app)"
    return "ok", f"{len(free)} free, {len(ours)} already in {org!r}"


def check_region(ctx: Context) -> tuple[Status, str]:
    skipped = needs_fly(ctx)
    if skipped is not None or ctx.fly is None:
        return skipped or ("skip", "needs the fly token check to pass")
    region, org = ctx.cfg.region, ctx.cfg.fly_org
    try:
        with FlyClient(ctx.fly, attempts=2) as fly:
            usable = fly.placeable_regions(org, region)
    except FlyError as exc:
        return "fail", f"cannot check region {region!r} for organization {org!r}: {exc}"
    if region not in usable:
        return "fail", f"organization {org!r} cannot place machines in {region!r} (silo:region); pick another region"
    return "ok", f"organization {org!r} can place machines in {region!r}"


# -- the registry database -----------------------------------------------------------------------------
def registry_dsn(ctx: Context) -> str | None:
    return ctx.plain(CONTROL_DSN_CONFIG_KEY) or ctx.env.get(CONTROL_DSN_ENV) or None


def check_registry(ctx: Context) -> tuple[Status, str]:
    control = isinstance(ctx.cfg, ControlConfig)
    if not control and not ctx.towns:
        return "skip", "no towns (silo:towns is empty)"
    dsn = registry_dsn(ctx)
    if dsn is None:
        return "fail", (
            f"no registry database: export {CONTROL_DSN_ENV} (the doctor cannot decrypt a secret "
            f"{CONTROL_DSN_CONFIG_KEY})"
        )
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.read_only = True  # every statement runs in a read-only transaction
            role = conn.execute(
                "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            if control:
                return "ok", f"reachable as {role[0]}"
            return town_login_problems(conn, role)
    except psycopg.Error as exc:
        # The message names host and user, never the password.
        return "fail", f"cannot connect: {str(exc).strip().splitlines()[0]}"


def town_login_problems(conn: psycopg.Connection[Any], role: tuple[Any, ...]) -> tuple[Status, str]:
    user, superuser, createrole, createdb = role
    missing_tables = [t for t in TOWN_TABLES if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is None]
    if missing_tables:
        return "fail", f"reachable as {user}, but {', '.join(missing_tables)} do not exist: run the control stack's up"
    flags = {"SUPERUSER": superuser, "CREATEROLE": createrole, "CREATEDB": createdb}
    excess = [flag for flag, held in flags.items() if held]
    missing = []
    for table in TOWN_TABLES:
        owner = conn.execute(
            "SELECT pg_has_role(current_user, tableowner, 'MEMBER') FROM pg_tables WHERE tablename = %s", (table,)
        ).fetchone()[0]
        if owner:
            excess.append(f"owns {table}")
        for privilege in (*TOWN_PRIVILEGES, *EXCESS_PRIVILEGES):
            held = conn.execute("SELECT has_table_privilege(current_user, %s, %s)", (table, privilege)).fetchone()[0]
            if privilege in TOWN_PRIVILEGES and not held:
                missing.append(f"{privilege} on {table}")
            elif privilege in EXCESS_PRIVILEGES and held:
                excess.append(f"{privilege} on {table}")
    if missing:
        return "fail", f"reachable as {user}, but it lacks {', '.join(missing)}, which towns need"
    if excess:
        return "fail", (
            f"reachable as {user}, which is not least-privileged ({', '.join(excess)}); towns should use the "
            "control stack's registry_backend_dsn login"
        )
    needed = ", ".join(TOWN_PRIVILEGES)
    return "ok", f"reachable as {user}, least-privileged ({needed} on {' and '.join(TOWN_TABLES)}, nothing more)"


# -- the R2 bucket ------------------------------------------------------------------------------------
def backup_bucket(ctx: Context) -> tuple[str, str]:
    """The backup bucket's name and where it comes from: the control stack's own config, or for a silo
    the control stack file next to this one (the program reads it through a StackReference)."""
    if isinstance(ctx.cfg, ControlConfig):
        return ctx.cfg.backup_bucket, "silo:backupBucket"
    control_stack = (ctx.cfg.control_stack or "").rsplit("/", 1)[-1]
    control_file = ctx.path.parent / f"Pulumi.{control_stack}.yaml"
    if control_file.is_file():
        bucket = read_stack_file(control_file).get("silo:backupBucket") or DEFAULT_BACKUP_BUCKET
        return str(bucket), control_file.name
    return DEFAULT_BACKUP_BUCKET, f"the default ({control_file.name} not found)"


def check_bucket(ctx: Context) -> tuple[Status, str]:
    control = isinstance(ctx.cfg, ControlConfig)
    if not control and not ctx.towns:
        return "skip", "no towns (silo:towns is empty)"
    bucket, source = backup_bucket(ctx)
    try:
        settings = resolve_cloudflare_settings({k: ctx.plain(k) for k in CLOUDFLARE_CONFIG_KEYS}, ctx.env)
        if ctx.towns:  # what each town's temporary credentials are minted from (the preview checks it too)
            require_parent_access_key(settings)
        with CloudflareClient(settings, attempts=2) as cloudflare:
            found = cloudflare.get_bucket(bucket)
    except ValueError as exc:
        return "fail", str(exc)
    except CloudflareError as exc:
        return "fail", f"cannot read bucket {bucket!r}: {exc}"
    if found is None:
        if control:
            return "ok", f"the account is reachable; bucket {bucket!r} ({source}) does not exist yet, up creates it"
        return "fail", f"bucket {bucket!r} ({source}) does not exist: run the control stack's up first"
    return "ok", f"bucket {bucket!r} ({source}) is reachable"


# -- the towns' R2 credentials ---------------------------------------------------------------------
def town_credentials(fly: FlyClient, name: str, app: str, now: dt.datetime) -> tuple[bool, str]:
    """(expired, what to say) for one town, from its machine's config (GETs only)."""
    if fly.get_app(app) is None:
        return False, f"{name}: not created yet"
    machine = next((m for m in fly.list_machines(app) if m.get("name") == TOWN_MACHINE), None)
    if machine is None:
        return False, f"{name}: no town machine yet"
    expiry = machine_expiry(machine, now)
    return expiry.state == "expired", f"{name}: {expiry.said}"


def check_town_credentials(ctx: Context) -> tuple[Status, str]:
    if not ctx.towns:
        return "skip", "no towns (silo:towns is empty)"
    skipped = needs_fly(ctx)
    if skipped is not None or ctx.fly is None:
        return skipped or ("skip", "needs the fly token check to pass")
    now = dt.datetime.now(dt.UTC)
    expired, lines = False, []
    try:
        with FlyClient(ctx.fly, attempts=2) as fly:
            for town in ctx.cfg.towns:
                lapsed, line = town_credentials(fly, town.name, town.sandbox_id, now)
                expired |= lapsed
                lines.append(line)
    except FlyError as exc:
        return "fail", f"cannot read the town machines: {exc}"
    return ("fail" if expired else "ok"), "; ".join(lines)


# -- the image catalog --------------------------------------------------------------------------------
def check_catalog(ctx: Context) -> tuple[Status, str]:
    try:
        catalog = load_catalog()
    except CatalogError as exc:
        return "fail", str(exc)
    if isinstance(ctx.cfg, ControlConfig):
        return "ok", f"{len(catalog.images)} entries, valid (the control stack syncs them)"
    services = [*ctx.cfg.services, *(["town"] if ctx.cfg.towns else [])]
    problems, warnings = [], 0
    for service in services:
        try:
            warnings += len(catalog.resolve(service, ctx.cfg.images.get(service)).warnings)
        except CatalogError as exc:
            problems.append(str(exc))
    if problems:
        return "fail", "; ".join(problems)
    note = f" ({warnings} warnings: deprecated or by tag; `silo validate` and preview show them)" if warnings else ""
    return "ok", f"all {len(services)} images resolve{note}"


def main_lines(path: Path) -> tuple[int, list[str]]:
    """What `silo doctor` prints and its exit code: 0 when nothing failed, 1 otherwise, 2 for an
    invalid stack file."""
    try:
        findings = doctor(path)
    except ConfigError as exc:
        return 2, exc.lines
    return (1 if any(f.status == "fail" for f in findings) else 0), [f.line for f in findings]
