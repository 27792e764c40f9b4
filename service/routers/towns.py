"""Seed 001's town router: create, list, get, stop, start, delete, add and remove rigs.

Every route is the backend's, acting for one user (`user_id` on a create, `X-User-Id` on the rest): a
town of another user is a 404. A mutation answers 202 with its operation (`?wait=true` waits for it, up
to the service's wait timeout, and answers 200 once it has ended), and replays its first answer for a
repeated `Idempotency-Key`. Bad input is a 422 naming the field, by the same rules `silo validate`
applies to a stack file's towns (components/config/model.py TownConfig).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from psycopg.rows import dict_row
from pydantic import BaseModel, Field, ValidationError

from components.config.model import RigConfig, TownConfig
from components.domain.naming import sandbox_id
from service import db, idempotency
from service.auth import Caller, acting_user, allowed, require_user
from service.jobs import town_owner
from service.operations import Operation
from service.routers.common import accepted, validation_error
from service.stacks import town_stack_name

router = APIRouter(prefix="/v1/towns", tags=["towns"])
MAX_RIGS = 20


class RigIn(BaseModel):
    name: str = Field(max_length=100)
    url: str = Field(max_length=2048)
    branch: str = Field("main", max_length=255)


class TownCreate(BaseModel):
    user_id: str = Field(min_length=1, max_length=255)
    name: str = Field(min_length=1, max_length=100)
    rigs: list[RigIn] = Field(default_factory=list, max_length=MAX_RIGS)


class TownAccepted(BaseModel):
    id: str
    sandbox_id: str
    status: str
    operation_id: str | None = None
    operation: Operation | None = None  # with ?wait=true, once it has ended


class Rig(BaseModel):
    name: str
    url: str
    branch: str


class Town(BaseModel):
    id: str
    user_id: str
    name: str
    sandbox_id: str
    status: str  # provisioning | running | stopped | failed
    desired_state: str  # running | stopped: what the last accepted request asked for
    region: str | None
    fly_app: str | None
    fly_machine_id: str | None
    fly_volume_id: str | None
    last_heartbeat_at: datetime | None
    last_r2_sync_at: datetime | None
    boot_phase: str | None
    failure: str | None
    rigs: list[Rig]
    created_at: datetime
    operation: Operation | None = None  # the latest operation on the town


def _checked_town(user_id: str, name: str, rigs: list[dict[str, Any]]) -> TownConfig:
    """The town as a stack file would hold it, or a 422 naming the request's field."""
    try:
        return TownConfig(name=name, user=user_id, rigs=[RigConfig(**r) for r in rigs])
    except ValidationError as exc:
        raise validation_error(exc, rename={"user": "user_id"}) from None


def _rig_dicts(town: TownConfig) -> list[dict[str, str]]:
    return [{"name": r.name, "url": r.url, "branch": r.branch} for r in town.rigs]


TOWN_COLUMNS = """t.id::text, t.user_id, t.town_name AS name, t.sandbox_id, t.status, t.fly_region AS region, t.fly_app,
    t.fly_machine_id, t.fly_volume_id, t.last_heartbeat_at, t.last_r2_sync_at, t.boot_phase, t.failure,
    t.config, t.created_at, t.owner"""
OPERATION_COLUMNS = """id::text AS id, kind, stack, town_id::text AS town_id, silo_id, status, resource, error,
    created_at, started_at, finished_at"""


def _town(row: dict[str, Any], operation: dict[str, Any] | None) -> Town:
    row.pop("owner", None)
    config = row.pop("config") or {}
    if isinstance(config, str):
        config = json.loads(config)
    return Town(
        **row,
        desired_state=config.get("desired_state", "running"),
        rigs=[Rig(**r) for r in config.get("rigs", [])],
        operation=Operation(**{k: v for k, v in operation.items() if k != "requested_by"}) if operation else None,
    )


async def _load(request: Request, town_id: str, user_id: str) -> dict[str, Any]:
    """The user's active town and its latest operation, in one round trip (404 for another user's town, a
    destroyed one, or an id that is no uuid)."""
    require_user(user_id)
    try:
        key = uuid.UUID(town_id)  # by value, so the primary key's index finds it
    except ValueError:
        raise HTTPException(404, f"no town {town_id}") from None
    async with db.connection(request) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"""SELECT {TOWN_COLUMNS}, to_jsonb(o) AS _operation FROM gastown_towns t
                LEFT JOIN LATERAL (SELECT {OPERATION_COLUMNS} FROM silo_operations
                                   WHERE town_id = t.id ORDER BY created_at DESC LIMIT 1) o ON true
                WHERE t.id = %s AND t.user_id = %s AND t.destroyed_at IS NULL""",
            (key, user_id),
        )
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no town {town_id}")
    return row


def _managed_by_api(row: dict[str, Any]) -> None:
    """A town declared in a silo's stack file is visible here, but changed there: its stack owns it (409)."""
    if row.get("owner") != town_owner(row["sandbox_id"]):
        raise HTTPException(
            409,
            f"town {row['id']} is declared in the stack file of {row.get('owner') or 'another stack'}: "
            "change it there (silo:towns) and run `pulumi up`",
        )


@router.post("", status_code=202, response_model=TownAccepted, responses={200: {"model": TownAccepted}})
async def create_town(
    body: TownCreate,
    request: Request,
    response: Response,
    wait: bool = Query(False, description="wait for the operation (bounded); 202 if it still runs"),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    who: Caller = Depends(allowed("towns.create")),
) -> Any:
    """createTown: a town for `user_id` (its sandbox id is deterministic); 202 with the operation.

    The same user and name again returns that town (200), or 409 if its rigs differ; a town whose
    create failed is created again."""
    town = _checked_town(body.user_id, body.name, [r.model_dump() for r in body.rigs])

    async def act() -> tuple[int, dict[str, Any]]:
        sid = sandbox_id(town.user, town.name)
        rigs = _rig_dicts(town)
        async with request.app.state.pool.connection() as conn, conn.transaction():
            existing = await (
                await conn.execute(
                    "SELECT id::text, status, config FROM gastown_towns WHERE user_id = %s AND town_name = %s "
                    "AND destroyed_at IS NULL FOR UPDATE",
                    (town.user, town.name),
                )
            ).fetchone()
            if existing is None:
                inserted = await (
                    await conn.execute(
                        """INSERT INTO gastown_towns (user_id, town_name, sandbox_id, fly_app, fly_region,
                                   status, owner, config)
                               VALUES (%s, %s, %s, %s, %s, 'provisioning', %s, %s)
                               ON CONFLICT DO NOTHING RETURNING id::text""",
                        (
                            town.user,
                            town.name,
                            sid,
                            sid,
                            request.app.state.settings.region,
                            town_owner(sid),
                            json.dumps({"rigs": rigs, "desired_state": "running"}),
                        ),
                    )
                ).fetchone()
                if inserted is None:  # another request made it meanwhile, or another user's name collides
                    raise HTTPException(409, f"town {town.name!r} of user {town.user!r} is being created")
                town_id = inserted[0]
            else:
                town_id, status, config = existing
                config = config if isinstance(config, dict) else json.loads(config or "{}")
                if config.get("rigs", []) != rigs:
                    raise HTTPException(
                        409,
                        f"town {town.name!r} of user {town.user!r} exists with other rigs (GET /v1/towns/{town_id})",
                    )
                if status != "failed":
                    return 200, {"id": town_id, "sandbox_id": sid, "status": status, "operation_id": None}
                await conn.execute(
                    "UPDATE gastown_towns SET status = 'provisioning', failure = NULL WHERE id = %s", (town_id,)
                )
            operation_id = await accepted.create_operation(
                conn, kind="town.create", stack=town_stack_name(sid), who=who, town_id=town_id
            )
        await accepted.queue(request, operation_id, town_stack_name(sid))
        return 202, {"id": town_id, "sandbox_id": sid, "status": "provisioning", "operation_id": operation_id}

    return await idempotency.respond(
        request, response, who, idempotency_key, body.model_dump(), act, wait=wait, wait_for="operation_id"
    )


@router.get("", response_model=list[Town])
async def list_towns(
    request: Request,
    user_id: str = Query(..., min_length=1, max_length=255),
    who: Caller = Depends(allowed("towns.list")),
) -> list[Town]:
    """listTowns: the user's active towns (not destroyed ones)."""
    async with db.connection(request) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {TOWN_COLUMNS} FROM gastown_towns t WHERE t.user_id = %s AND t.destroyed_at IS NULL "
            "ORDER BY t.created_at",
            (user_id,),
        )
        rows = await cur.fetchall()
    return [_town(row, None) for row in rows]


@router.get("/{town_id}", response_model=Town)
async def get_town(
    town_id: str, request: Request, user_id: str = Depends(acting_user), who: Caller = Depends(allowed("towns.get"))
) -> Town:
    """getTownStatus: status, region, Fly ids, the last heartbeat and R2 sync, the boot phase."""
    row = await _load(request, town_id, user_id)
    return _town(row, row.pop("_operation"))


async def _desired(
    request: Request,
    response: Response,
    who: Caller,
    town_id: str,
    user_id: str,
    kind: str,
    change: dict[str, Any],
    idempotency_key: str | None,
    wait: bool,
) -> Any:
    async def act() -> tuple[int, dict[str, Any]]:
        row = await _load(request, town_id, user_id)
        _managed_by_api(row)
        config = row["config"] if isinstance(row["config"], dict) else json.loads(row["config"] or "{}")
        config = {**config, **change}
        async with request.app.state.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE gastown_towns SET config = %s WHERE id = %s AND destroyed_at IS NULL",
                (json.dumps(config), row["id"]),
            )
            operation_id = await accepted.create_operation(
                conn, kind=kind, stack=town_stack_name(row["sandbox_id"]), who=who, town_id=row["id"]
            )
        await accepted.queue(request, operation_id, town_stack_name(row["sandbox_id"]))
        return 202, {
            "id": row["id"],
            "sandbox_id": row["sandbox_id"],
            "status": row["status"],
            "operation_id": operation_id,
        }

    return await idempotency.respond(
        request, response, who, idempotency_key, {"town": town_id, "kind": kind, **change}, act, wait=wait,
        wait_for="operation_id",
    )  # fmt: skip


@router.post("/{town_id}/stop", status_code=202, response_model=TownAccepted)
async def stop_town(
    town_id: str,
    request: Request,
    response: Response,
    wait: bool = Query(False),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    user_id: str = Depends(acting_user),
    who: Caller = Depends(allowed("towns.stop")),
) -> Any:
    """stopTown: the machine is stopped (SIGTERM: the town flushes to R2 first); the volume stays."""
    change = {"desired_state": "stopped"}
    return await _desired(request, response, who, town_id, user_id, "town.stop", change, idempotency_key, wait)


@router.post("/{town_id}/start", status_code=202, response_model=TownAccepted)
async def start_town(
    town_id: str,
    request: Request,
    response: Response,
    wait: bool = Query(False),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    user_id: str = Depends(acting_user),
    who: Caller = Depends(allowed("towns.start")),
) -> Any:
    """startTown: the machine starts on its volume, data intact (`gt up` at boot)."""
    change = {"desired_state": "running"}
    return await _desired(request, response, who, town_id, user_id, "town.start", change, idempotency_key, wait)


@router.post("/{town_id}/rigs", status_code=202, response_model=TownAccepted)
async def add_rig(
    town_id: str,
    rig: RigIn,
    request: Request,
    response: Response,
    wait: bool = Query(False),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    user_id: str = Depends(acting_user),
    who: Caller = Depends(allowed("towns.rigs.add")),
) -> Any:
    """addRig: the town gets the repository at its next boot (`gt rig add`); 409 if the name is taken."""
    row = await _load(request, town_id, user_id)
    config = row["config"] if isinstance(row["config"], dict) else json.loads(row["config"] or "{}")
    rigs = list(config.get("rigs", []))
    if any(r["name"] == rig.name for r in rigs):
        raise HTTPException(409, f"town {town_id} already has a rig named {rig.name!r}")
    checked = _checked_town(row["user_id"], row["name"], [*rigs, rig.model_dump()])
    if len(checked.rigs) > MAX_RIGS:
        raise HTTPException(422, [{"loc": ["body", "name"], "msg": f"a town has at most {MAX_RIGS} rigs"}])
    change = {"rigs": _rig_dicts(checked)}
    return await _desired(request, response, who, town_id, user_id, "town.rigs", change, idempotency_key, wait)


@router.delete("/{town_id}/rigs/{rig}", status_code=202, response_model=TownAccepted)
async def remove_rig(
    town_id: str,
    rig: str,
    request: Request,
    response: Response,
    wait: bool = Query(False),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    user_id: str = Depends(acting_user),
    who: Caller = Depends(allowed("towns.rigs.remove")),
) -> Any:
    """removeRig: the rig leaves the town's registry and rigs file (its work stays on the volume)."""
    row = await _load(request, town_id, user_id)
    config = row["config"] if isinstance(row["config"], dict) else json.loads(row["config"] or "{}")
    rigs = [r for r in config.get("rigs", []) if r["name"] != rig]
    if len(rigs) == len(config.get("rigs", [])):
        raise HTTPException(404, f"town {town_id} has no rig {rig!r}")
    change = {"rigs": rigs}
    return await _desired(request, response, who, town_id, user_id, "town.rigs", change, idempotency_key, wait)


@router.delete("/{town_id}", status_code=202, response_model=TownAccepted)
async def delete_town(
    town_id: str,
    request: Request,
    response: Response,
    wait: bool = Query(False),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    user_id: str = Depends(acting_user),
    who: Caller = Depends(allowed("towns.delete")),
) -> Any:
    """destroyTown: the final R2 flush, then the machine (and the volume only where the service allows data
    deletion) removed, then the row soft-deleted."""
    return await _desired(request, response, who, town_id, user_id, "town.delete", {}, idempotency_key, wait)
