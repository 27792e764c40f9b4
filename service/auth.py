"""Who may call what: bearer tokens with a role, stored hashed, compared in constant time.

Roles are seed 004's agents (devops, dev-worker, dev-orchestrator, security-auditor, clientele) plus
`backend`, the Kilo backend that acts for its users (seed 001's protected procedures), and each town's
own heartbeat token (a town may report for itself and call nothing else). The route x role matrix is
`ROUTES` below, the one place it is written (the tests walk it; README "Provisioning API" shows it).

A missing or unknown token is a 401; a known token without the right is a 403; a town of another user
is a 404 (the backend names the user in `X-User-Id`, or `user_id` on a create), so a user's towns are
invisible to everyone else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fastapi import Depends, Header, HTTPException, Request

from service import db


class Role(StrEnum):
    BACKEND = "backend"
    DEVOPS = "devops"
    DEV_WORKER = "dev-worker"
    DEV_ORCHESTRATOR = "dev-orchestrator"
    SECURITY_AUDITOR = "security-auditor"
    CLIENTELE = "clientele"


# Route (operation name) -> the roles allowed. Seed 001's town procedures are the backend's (it acts for
# the user); seed 004: devops and dev-workers start silos ("Dev-worker or devops can restart via POST
# /start-silo"), devops stops them; every agent but clientele may read a silo's status; connection info
# is filtered per role by the access-control matrix (components/stacks/outputs.py `roles`).
ROUTES: dict[str, frozenset[Role]] = {
    "towns.create": frozenset({Role.BACKEND}),
    "towns.list": frozenset({Role.BACKEND}),
    "towns.get": frozenset({Role.BACKEND}),
    "towns.stop": frozenset({Role.BACKEND}),
    "towns.start": frozenset({Role.BACKEND}),
    "towns.delete": frozenset({Role.BACKEND}),
    "towns.rigs.add": frozenset({Role.BACKEND}),
    "towns.rigs.remove": frozenset({Role.BACKEND}),
    "operations.get": frozenset(Role) - {Role.CLIENTELE},
    "silos.get": frozenset({Role.DEVOPS, Role.DEV_WORKER, Role.DEV_ORCHESTRATOR, Role.SECURITY_AUDITOR}),
    "silos.start": frozenset({Role.DEVOPS, Role.DEV_WORKER}),
    "silos.stop": frozenset({Role.DEVOPS}),
    "silos.connection_info": frozenset({Role.DEVOPS, Role.DEV_WORKER, Role.DEV_ORCHESTRATOR, Role.SECURITY_AUDITOR}),
}


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    role: Role
    token_sha256: str
    name: str

    @property
    def principal(self) -> str:
        """Who the idempotency keys and the operations belong to."""
        return self.token_sha256


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "a bearer token is required (Authorization: Bearer TOKEN)")
    return token.strip()


async def caller(request: Request, authorization: str | None = Header(None)) -> Caller:
    """The caller behind the request's bearer token (401 when there is none, or it is not known)."""
    digest = token_sha256(_bearer(authorization))
    async with db.connection(request) as conn:
        row = await (
            await conn.execute(
                "SELECT token_sha256, role, name FROM silo_api_tokens WHERE token_sha256 = %s AND revoked_at IS NULL",
                (digest,),
            )
        ).fetchone()
    # The lookup is by digest (an index on a hash leaks nothing about the token); the comparison of what
    # was found is still done in constant time.
    if row is None or not hmac.compare_digest(row[0], digest):
        raise HTTPException(401, "unknown or revoked token")
    return Caller(role=Role(row[1]), token_sha256=row[0], name=row[2])


def allowed(route: str):
    """A dependency: the caller, if its role may call `route` (else 403)."""
    roles = ROUTES[route]

    async def check(who: Caller = Depends(caller)) -> Caller:
        if who.role not in roles:
            raise HTTPException(403, f"role {who.role} may not call {route}")
        return who

    return check


async def acting_user(x_user_id: str | None = Header(None, alias="X-User-Id")) -> str:
    """The user the backend acts for on a town route (their towns only: others' are 404). Checked by the
    route, after the caller's token and role: a request without a valid token is a 401 whatever else."""
    return x_user_id or ""


def require_user(user_id: str) -> str:
    if not user_id.strip() or len(user_id) > 255:
        raise HTTPException(422, [{"loc": ["header", "X-User-Id"], "msg": "the acting user's id is required"}])
    return user_id


async def town_caller(request: Request, authorization: str | None = Header(None)) -> str:
    """The town behind a heartbeat's token: its registry id (401 when the token is no town's)."""
    digest = token_sha256(_bearer(authorization))
    async with db.connection(request) as conn:
        row = await (
            await conn.execute(
                "SELECT id::text, heartbeat_token_sha256 FROM gastown_towns "
                "WHERE heartbeat_token_sha256 = %s AND destroyed_at IS NULL",
                (digest,),
            )
        ).fetchone()
    if row is None or not hmac.compare_digest(row[1], digest):
        raise HTTPException(401, "unknown town token")
    return str(row[0])


# -- tokens ---------------------------------------------------------------------------------------------
def ensure_tokens(dsn: str, path: Path) -> dict[str, str]:
    """One token per role, in `path` (0600, {role: token}); made once, their hashes in the registry.

    A token in the file whose hash the registry lacks (a new database) is registered again; a role the
    file lacks gets a new token.
    """
    import psycopg

    tokens: dict[str, str] = {}
    if path.exists():
        tokens = {k: v for k, v in json.loads(path.read_text()).items() if k in {r.value for r in Role}}
    for role in Role:
        tokens.setdefault(role.value, new_token())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(tokens, out, indent=2)
    os.replace(path.with_suffix(".tmp"), path)
    with psycopg.connect(dsn) as conn:
        for role, token in tokens.items():
            conn.execute(
                "INSERT INTO silo_api_tokens (token_sha256, role, name) VALUES (%s, %s, %s) "
                "ON CONFLICT (token_sha256) DO NOTHING",
                (token_sha256(token), role, f"{role} (local, {path.name})"),
            )
    return tokens
