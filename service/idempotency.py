"""`Idempotency-Key`: the first answer to a mutation is kept and replayed for the same caller and key.

The same key with a different request is a 422 (it names another operation); a key is the caller's own
(two callers never see each other's answers). `?wait=true` waits for the operation the answer names,
bounded by the service's wait timeout: 200 once it has ended, else the 202.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder

from service.auth import Caller
from service.routers.common import operation_view


def _digest(request: Request, body: Any) -> str:
    text = json.dumps([request.method, request.url.path, body], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


async def respond(
    request: Request,
    response: Response,
    who: Caller,
    key: str | None,
    body: Any,
    act: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
    *,
    wait: bool = False,
    wait_for: str = "operation_id",
) -> Any:
    digest = _digest(request, body)
    pool = request.app.state.pool
    if key:
        async with pool.connection() as conn:
            stored = await (
                await conn.execute(
                    "SELECT request_sha256, status_code, body FROM silo_idempotency WHERE principal = %s AND key = %s",
                    (who.principal, key),
                )
            ).fetchone()
        if stored is not None:
            if stored[0] != digest:
                raise HTTPException(
                    422, [{"loc": ["header", "Idempotency-Key"], "msg": "this key was used for another request"}]
                )
            response.status_code = stored[1]
            return stored[2]
    status, answer = await act()
    if key:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO silo_idempotency (principal, key, request_sha256, status_code, body) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (who.principal, key, digest, status, json.dumps(jsonable_encoder(answer))),
            )
    response.status_code = status
    operation_id = answer.get(wait_for)
    if wait and operation_id:
        op = await request.app.state.finished.wait(
            operation_id, lambda: operation_view(request, operation_id), request.app.state.settings.wait_timeout_s
        )
        if op is not None:
            response.status_code = 200
            return {**answer, "operation": op}
    return answer
