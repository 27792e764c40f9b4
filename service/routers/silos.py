"""Seed 004's DevOps commands: start-silo, stop-silo, silo-status, and the Service Desk's connection info.

A silo is its stack file in the service's silos project (the repository's Pulumi.<stack>.yaml): start
and stop set `silo:state` and run `up`, as a person would. Connection info is what the stack outputs
give each role (components/stacks/outputs.py, seed 004's access-control matrix), and nothing at all
while the silo is stopped: a stopped silo's stack publishes no URL or key.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from pydantic import BaseModel

from components.config.model import ConfigError, load_stack_file
from components.providers.fly.client import FlyClient
from components.providers.fly.settings import fly_config_map, resolve_fly_settings
from service import idempotency
from service.auth import Caller, Role, allowed
from service.routers.common import accepted
from service.stacks import silo_stacks

router = APIRouter(prefix="/v1/silos", tags=["silos"])


class ServiceStatus(BaseModel):
    status: str
    machine_id: str | None


class SiloStatus(BaseModel):
    """Seed 004's silo-status shape."""

    silo_id: str
    status: str  # running | stopped (what the stack asks for)
    services: dict[str, ServiceStatus]  # by service title, each machine as Fly reports it now


class SiloAccepted(BaseModel):
    silo_id: str
    operation_id: str
    operation: dict[str, Any] | None = None


def _stack_of(request: Request, silo: str) -> str:
    stacks = silo_stacks(request.app.state.settings.silos_project_dir)
    if silo not in stacks:
        raise HTTPException(404, f"no silo {silo}")
    return stacks[silo]


def _live_status(request: Request, stack: str) -> SiloStatus:
    from components.domain import services as svc
    from components.stacks.outputs import _status

    path = request.app.state.settings.silos_project_dir / f"Pulumi.{stack}.yaml"
    try:
        cfg = load_stack_file(path)
    except ConfigError as exc:
        raise HTTPException(409, f"silo stack {stack}: {exc}") from None
    from components.config.model import read_stack_file

    settings = resolve_fly_settings(fly_config_map(read_stack_file(path)))
    services: dict[str, ServiceStatus] = {}
    with FlyClient(settings, attempts=2) as fly:
        for name in cfg.services:
            machines = fly.list_machines(cfg.app_name(name), summary=True) if fly.get_app(cfg.app_name(name)) else []
            machine = machines[0] if machines else {}
            services[svc.SERVICES[name].title] = ServiceStatus(
                status=_status(machine.get("state")) if machine else "absent", machine_id=machine.get("id")
            )
    return SiloStatus(silo_id=cfg.silo_id, status=cfg.state, services=services)


@router.get("/{silo}", response_model=SiloStatus)
async def silo_status(silo: str, request: Request, who: Caller = Depends(allowed("silos.get"))) -> SiloStatus:
    """silo-status: what the stack asks for, and each service's machine as Fly reports it now."""
    stack = _stack_of(request, silo)
    return await asyncio.to_thread(_live_status, request, stack)


async def _set_state(
    request: Request, response: Response, who: Caller, silo: str, state: str, key: str | None, wait: bool
) -> Any:
    stack = _stack_of(request, silo)

    async def act() -> tuple[int, dict[str, Any]]:
        async with request.app.state.pool.connection() as conn, conn.transaction():
            operation_id = await accepted.create_operation(
                conn, kind=f"silo.{'start' if state == 'running' else 'stop'}", stack=stack, who=who, silo_id=silo
            )
        await accepted.queue(request, operation_id, stack)
        return 202, {"silo_id": silo, "operation_id": operation_id}

    return await idempotency.respond(request, response, who, key, {"silo": silo, "state": state}, act, wait=wait)


@router.post("/{silo}/start", status_code=202, response_model=SiloAccepted)
async def start_silo(
    silo: str,
    request: Request,
    response: Response,
    wait: bool = Query(False),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    who: Caller = Depends(allowed("silos.start")),
) -> Any:
    """start-silo: same URLs, same keys; connection info comes back once it runs."""
    return await _set_state(request, response, who, silo, "running", idempotency_key, wait)


@router.post("/{silo}/stop", status_code=202, response_model=SiloAccepted)
async def stop_silo(
    silo: str,
    request: Request,
    response: Response,
    wait: bool = Query(False),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    who: Caller = Depends(allowed("silos.stop")),
) -> Any:
    """stop-silo: machines stopped, nothing deleted; connection info is withdrawn."""
    return await _set_state(request, response, who, silo, "stopped", idempotency_key, wait)


# What each role's view is, from the stack outputs (components/stacks/outputs.py writes them per role).
ROLE_VIEW = {
    Role.DEVOPS: "roles_devops",
    Role.DEV_WORKER: "roles.dev-worker",
    Role.DEV_ORCHESTRATOR: "roles.dev-orchestrator",
    Role.SECURITY_AUDITOR: "roles.security-auditor",
}


def _connection_info(request: Request, stack: str, role: Role) -> dict[str, Any] | None:
    target = request.app.state.stacks.silo_stack(stack)
    outputs = {k: v.value for k, v in target.outputs().items()}
    if outputs.get("status") != "running":
        return None
    where, _, key = ROLE_VIEW[role].partition(".")
    view = outputs.get(where) or {}
    if key:
        view = view.get(key) or {}
    return json.loads(json.dumps(view))


@router.get("/{silo}/connection-info")
async def connection_info(
    silo: str, request: Request, who: Caller = Depends(allowed("silos.connection_info"))
) -> dict[str, Any]:
    """The Service Desk's connection info, as much as the caller's role may see; none while stopped."""
    stack = _stack_of(request, silo)
    info = await asyncio.to_thread(_connection_info, request, stack, who.role)
    if info is None:
        return {"silo_id": silo, "status": "stopped", "connection_info": None}
    return {"silo_id": silo, "status": "running", "connection_info": info}
