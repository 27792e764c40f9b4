"""GET /v1/operations/{id}: queued, running, succeeded or failed (naming the resource and the reason).

An operation is visible to the caller whose request made it, and to devops; to anyone else it is a 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from service import operations
from service.auth import Caller, Role, allowed
from service.operations import Operation

router = APIRouter(prefix="/v1/operations", tags=["operations"])


@router.get("/{operation_id}", response_model=Operation)
async def get_operation(
    operation_id: str, request: Request, who: Caller = Depends(allowed("operations.get"))
) -> Operation:
    async with request.app.state.pool.connection() as conn:
        try:
            row = await operations.get_async(conn, operation_id)
        except Exception:  # not a uuid: no such operation
            row = None
    if row is None or (row.pop("requested_by") != who.principal and who.role != Role.DEVOPS):
        raise HTTPException(404, f"no operation {operation_id}")
    return Operation(**row)
