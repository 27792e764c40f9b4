"""Versioned SQL migrations for the control-plane database, and the PostgresSchema dynamic provider.

Migrations are plain files ``migrations/NNNN_description.sql`` applied in name order, each in its own
transaction, and recorded in ``schema_migrations`` with the file's sha256. An applied file whose
checksum changed is drift: nothing is applied and the file is named. A session advisory lock makes
concurrent ``apply`` calls (two CI jobs, two ``pulumi up``) queue instead of racing.

Runner settings (``settings={"silo.users_table": "public.users"}``) are set as transaction-local custom
GUCs, so a migration can read them with ``current_setting('silo.users_table', true)``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pulumi
from psycopg import conninfo
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)
from pulumi.output import Unknown

from components.errors import UserError
from components.paths import PROJECT_ROOT
from components.providers.base import DynamicResource
from components.providers.controldb.dsn import (
    ControlDbProvider,
    dsn_problem,
    sanitized_db_error,
)

log = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<description>[a-z0-9][a-z0-9_]*)\.sql$")
SETTING_NAME = re.compile(r"^silo\.[a-z_][a-z0-9_]*$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Fixed key for pg_advisory_lock: every runner against the same database serialises on it.
ADVISORY_LOCK_KEY = 0x51_10_5C_4E_3A  # "silo schema"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(UserError):
    """A migration folder or file that cannot be used as is."""


class MigrationDrift(MigrationError):
    """An applied migration's file changed (or disappeared) since it was applied."""

    def __init__(self, drift: list[Drift]):
        self.drift = drift
        super().__init__("; ".join(d.message for d in drift))


@dataclass(frozen=True)
class Migration:
    version: str
    name: str  # the file name, e.g. 0001_gastown_towns.sql
    sql: str
    checksum: str


@dataclass(frozen=True)
class Drift:
    name: str
    recorded: str
    current: str | None  # None: the file is gone

    @property
    def message(self) -> str:
        if self.current is None:
            return f"migration {self.name} was applied but its file is missing from the migrations folder"
        return (
            f"migration {self.name} was changed after it was applied (checksum {self.recorded[:12]}… "
            f"recorded, {self.current[:12]}… now): add a new migration instead of editing an applied one"
        )


@dataclass
class MigrationPlan:
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# A relative folder is the project's own (`migrations/` beside `components/`), wherever the engine
# starts the provider host: the state keeps the relative name, so moving the checkout changes nothing.


def migrations_path(folder: str | Path) -> Path:
    path = Path(folder)
    return path if path.is_absolute() else PROJECT_ROOT / path


def load_migrations(folder: str | Path) -> list[Migration]:
    """All migrations of a folder in apply order; errors name the offending file."""
    path = migrations_path(folder)
    if not path.is_dir():
        raise MigrationError(f"migrations folder {str(folder)!r} does not exist")
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    for file in sorted(path.glob("*.sql")):
        match = MIGRATION_FILE.match(file.name)
        if not match:
            raise MigrationError(
                f"migration file {file.name!r} must be named NNNN_description.sql "
                "(four digits, lowercase letters, digits and underscores)"
            )
        version = match["version"]
        if version in seen:
            raise MigrationError(f"migration files {seen[version]!r} and {file.name!r} share version {version}")
        seen[version] = file.name
        text = file.read_text(encoding="utf-8")
        migrations.append(Migration(version=version, name=file.name, sql=text, checksum=checksum(text)))
    return migrations


def migration_checksums(folder: str | Path) -> dict[str, str]:
    """``{file name: sha256}``: what the PostgresSchema resource stores as its ``migrations`` input."""
    return {m.name: m.checksum for m in load_migrations(folder)}


def _recorded(conn: psycopg.Connection[Any]) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    return dict(conn.execute("SELECT name, checksum FROM schema_migrations ORDER BY version").fetchall())


def compare(recorded: Mapping[str, str], current: Mapping[str, str]) -> MigrationPlan:
    """Plan from recorded ``{name: checksum}`` (database or state) and the folder's ``{name: checksum}``."""
    plan = MigrationPlan(applied=sorted(recorded))
    for name, recorded_sum in sorted(recorded.items()):
        if current.get(name) != recorded_sum:
            plan.drift.append(Drift(name, recorded_sum, current.get(name)))
    plan.pending = sorted(name for name in current if name not in recorded)
    return plan


def applied_migrations(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return sorted(_recorded(conn))


def plan(dsn: str, folder: str | Path) -> MigrationPlan:
    """What ``apply`` would do, without changing anything."""
    current = migration_checksums(folder)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return compare(_recorded(conn), current)


def _check_settings(settings: Mapping[str, str] | None) -> dict[str, str]:
    out = {}
    for key, value in (settings or {}).items():
        if not SETTING_NAME.match(key):
            raise MigrationError(f"setting {key!r} must be a custom GUC named silo.<lowercase_name>")
        if not isinstance(value, str):
            raise MigrationError(f"setting {key!r} must be a string (got {type(value).__name__})")
        out[key] = value
    return out


def apply(dsn: str, folder: str | Path, settings: Mapping[str, str] | None = None) -> list[str]:
    """Apply pending migrations in order; return the names applied (empty when up to date).

    Raises MigrationDrift before applying anything if an applied file changed. Each file runs in its
    own transaction together with its schema_migrations row, so a failing file leaves the earlier
    ones applied and itself not at all.
    """
    migrations = load_migrations(folder)
    gucs = _check_settings(settings)
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            conn.execute(CREATE_TABLE)  # under the lock: concurrent IF NOT EXISTS can still collide
            result = compare(_recorded(conn), {m.name: m.checksum for m in migrations})
            if result.drift:
                raise MigrationDrift(result.drift)
            pending = set(result.pending)
            for migration in migrations:
                if migration.name not in pending:
                    continue
                try:
                    with conn.transaction():
                        for key, value in gucs.items():
                            conn.execute("SELECT set_config(%s, %s, true)", (key, value))
                        conn.execute(migration.sql.encode("utf-8"))  # bytes: sent as is, no placeholders
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
                applied.append(migration.name)
                log.info("applied migration %s", migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied


# -- PostgresSchema dynamic provider ------------------------------------------------------------------
class PostgresSchemaProvider(ControlDbProvider):
    """Plain data only (pickled by reference); the DSN comes from the secret input or configure()."""

    def _resolve_dsn(self, props: Mapping[str, Any]) -> str:
        dsn = self.control_dsn(props)
        problem = dsn_problem(dsn)
        if problem:
            raise MigrationError(f"dsn: {problem}")
        return str(dsn)

    @staticmethod
    def _verify_folder(props: Mapping[str, Any]) -> dict[str, str]:
        """The folder as it is now must match the checksums the program computed (no edits in between)."""
        current = migration_checksums(props["folder"])
        expected = props.get("migrations") or {}
        if current != expected:
            changed = sorted(set(current.items()) ^ set(expected.items()))
            names = sorted({name for name, _ in changed})
            raise MigrationError(
                f"migrations: the folder changed since the program read it ({', '.join(names)}); run preview again"
            )
        return current

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures: list[CheckFailure] = []
        dsn = news.get("dsn")
        if dsn is not None and not isinstance(dsn, Unknown):
            problem = dsn_problem(dsn)
            if problem:
                failures.append(CheckFailure("dsn", problem))
        folder = news.get("folder")
        if not isinstance(folder, Unknown):
            if not isinstance(folder, str) or not folder:
                failures.append(CheckFailure("folder", "the migrations folder is required"))
            elif not migrations_path(folder).is_dir():
                failures.append(CheckFailure("folder", f"migrations folder {folder!r} does not exist"))
        migrations = news.get("migrations")
        if not isinstance(migrations, Unknown):
            if not isinstance(migrations, Mapping) or not migrations:
                failures.append(CheckFailure("migrations", "must map each migration file name to its sha256"))
            else:
                for name, digest in migrations.items():
                    digest_ok = isinstance(digest, str) and SHA256_HEX.match(digest)
                    if not MIGRATION_FILE.match(name) or not digest_ok:
                        failures.append(
                            CheckFailure(
                                "migrations", f"entry {name!r}: expected NNNN_description.sql mapped to a sha256 digest"
                            )
                        )
                # Drift against what this stack already applied (state), no database needed.
                previous = olds.get("migrations")
                if isinstance(previous, Mapping) and not failures:
                    drift = compare(previous, migrations).drift
                    if drift:
                        raise MigrationDrift(drift)
        settings = news.get("settings")
        if settings is not None and not isinstance(settings, Unknown):
            try:
                _check_settings(settings)
            except MigrationError as exc:
                failures.append(CheckFailure("settings", str(exc)))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        migrations = news.get("migrations")
        if isinstance(migrations, Unknown) or isinstance(news.get("dsn"), Unknown):
            return DiffResult(changes=True)
        recorded: Mapping[str, str] = olds.get("migrations") or {}
        try:
            dsn = self._resolve_dsn(news)
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                recorded = _recorded(conn)
        except (psycopg.OperationalError, MigrationError) as exc:
            # Preview without database access: compare with the state instead.
            log.warning(
                "PostgresSchema diff: database not reachable (%s); comparing with state",
                sanitized_db_error(exc, str(news.get("dsn") or "")),
            )
        result = compare(recorded, migrations or {})
        if result.drift:
            raise MigrationDrift(result.drift)
        changed = (
            bool(result.pending)
            or olds.get("settings") != news.get("settings")
            or olds.get("folder") != news.get("folder")
            or olds.get("migrations") != migrations
        )
        return DiffResult(changes=changed, replaces=[])

    def _apply(self, props: Mapping[str, Any]) -> dict[str, Any]:
        dsn = self._resolve_dsn(props)
        self._verify_folder(props)
        try:
            newly = apply(dsn, props["folder"], props.get("settings") or {})
            applied = applied_migrations(dsn)
        except psycopg.Error as exc:
            raise MigrationError(sanitized_db_error(exc, dsn)) from None
        return {"applied": applied, "last_applied": newly}

    def create(self, props: dict[str, Any]) -> CreateResult:
        computed = self._apply(props)
        dsn_info = conninfo.conninfo_to_dict(self._resolve_dsn(props))
        ident = (
            "schema:"
            + hashlib.sha256(
                f"{dsn_info.get('host')}:{dsn_info.get('port')}/{dsn_info.get('dbname')}".encode()
            ).hexdigest()[:16]
        )
        return CreateResult(ident, {**props, **computed})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, **self._apply(news)})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        dsn = self._resolve_dsn(props)
        with self.database_errors(dsn), psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            recorded = _recorded(conn)
        outs = {**props, "applied": sorted(recorded)}
        inputs = {k: props[k] for k in ("dsn", "folder", "settings") if k in props}
        inputs["migrations"] = dict(recorded)
        return ReadResult(id_, outs, inputs=inputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # Dropping the control-plane tables would destroy the registry: removing the resource from
        # the stack only forgets it. Say so, since the tables stay behind.
        message = (
            f"PostgresSchema {id_}: removed from the stack; tables and data are left in place "
            f"(applied migrations: {', '.join(props.get('applied') or []) or 'none'})"
        )
        log.warning(message)
        print(message)


class PostgresSchemaResource(DynamicResource, module="postgres", name="Schema"):
    """One database's migration state; ``applied`` lists every applied migration file."""

    applied: pulumi.Output[list[str]]
    last_applied: pulumi.Output[list[str]]
    migrations: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        name: str,
        *,
        folder: str,
        dsn: pulumi.Input[str] | None = None,
        settings: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "applied": None,
            "last_applied": None,
            "dsn": pulumi.Output.secret(dsn) if dsn is not None else None,
            "folder": folder,
            "migrations": migration_checksums(folder),
            "settings": dict(settings or {}),
        }
        super().__init__(PostgresSchemaProvider(), name, props, opts)
