"""DatabaseLogin: a least-privileged login role in the control database, with table grants.

The control stack gives the Kilo backend its own login that can read the catalog and write towns,
rigs and pins, and nothing else. One resource holds the role and its grants, so a refresh sees a
grant changed by hand and the next `up` puts it back. The password reaches PostgreSQL only as a
SCRAM-SHA-256 verifier (PostgreSQL docs, "Password Authentication": a `PASSWORD` that is already in
SCRAM form is stored as is), so neither the server's statement log nor an error can show it.

(The program used pulumi-postgresql's Role and Grant for this; that bridged provider cannot be built
from the module proxy here — docs/engine.md — and this is a few statements on the connection
the other control-database providers already use.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, UpdateResult

from components.providers.base import DynamicResource, diff_result
from components.providers.controldb.registry import RegistryProviderBase

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The verifier PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677, as in its
    `pg_be_scram_build_secret`)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def _grants(value: Any) -> dict[str, list[str]]:
    return {table: sorted(set(privileges)) for table, privileges in (value or {}).items()}


class DatabaseLoginProvider(RegistryProviderBase):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        role = news.get("role")
        if isinstance(role, str) and not IDENTIFIER.match(role):
            failures.append(CheckFailure("role", "must be a lowercase SQL identifier of at most 63 characters"))
        for table, privileges in (news.get("grants") or {}).items():
            if not IDENTIFIER.match(table):
                failures.append(CheckFailure("grants", f"{table!r} is not a table name"))
            bad = sorted(set(privileges) - set(PRIVILEGES))
            if bad:
                failures.append(CheckFailure("grants", f"{table}: {', '.join(bad)} not one of {', '.join(PRIVILEGES)}"))
        return CheckResult({**news, "grants": _grants(news.get("grants"))}, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new role name is another role: the old one is dropped after the new one exists.
        return diff_result(
            olds, news, compare=("role", "password", "grants"), replace_on=("role",), delete_before_replace=False
        )

    def _apply(self, props: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> None:
        role = sql.Identifier(props["role"])
        verifier = sql.Literal(scram_verifier(props["password"]))
        with self.connect() as conn, conn.transaction():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (props["role"],)).fetchone()
            # Adopting an existing role (an interrupted create, or a re-created stack) resets it to
            # exactly what this resource says.
            verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
            conn.execute(
                sql.SQL("{} {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}").format(
                    verb, role, verifier
                )
            )
            tables = set(_grants(props.get("grants"))) | set(_grants((previous or {}).get("grants")))
            for table in sorted(tables):
                conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(sql.Identifier(table), role))
            for table, privileges in _grants(props.get("grants")).items():
                conn.execute(
                    sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(table), role
                    )
                )

    def create(self, props: dict[str, Any]) -> CreateResult:
        self._apply(props)
        return CreateResult(props["role"], dict(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        self._apply(news, previous=olds)
        return UpdateResult(dict(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.connect() as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (id_,)).fetchone() is None:
                return ReadResult("", {})
            rows = conn.execute(
                "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee = %s AND table_schema = current_schema()",
                (id_,),
            ).fetchall()
        actual: dict[str, list[str]] = {}
        for table, privilege in rows:
            if privilege in PRIVILEGES:
                actual.setdefault(table, []).append(privilege)
        return ReadResult(id_, {**props, "grants": _grants(actual)})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        role = sql.Identifier(id_)
        with self.connect() as conn, conn.transaction():
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (id_,)).fetchone() is None:
                return  # already gone
            for table in sorted(_grants(props.get("grants"))):
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(sql.Identifier(table), role))
                except psycopg.errors.UndefinedTable:
                    pass  # dropped with the schema: nothing left to revoke
            conn.execute(sql.SQL("DROP ROLE {}").format(role))


class DatabaseLogin(DynamicResource, module="controldb", name="Login"):
    role: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        role: pulumi.Input[str],
        password: pulumi.Input[str],
        grants: Mapping[str, list[str]],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(
            DatabaseLoginProvider(),
            resource_name,
            {
                "role": role,
                "password": pulumi.Output.secret(password),
                "grants": {table: list(privileges) for table, privileges in grants.items()},
            },
            opts,
        )
