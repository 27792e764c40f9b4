"""POST /api/gastown/heartbeat: a town reports its sync (seed 002), with its own token.

The token names the town (its hash is in the registry row), so a town can update only its own row: a
report that names another town is a 403, and a token that is no town's a 401. What a report moves:
`last_heartbeat_at` always, `last_r2_sync_at` when it reports a published snapshot (`r2_sync` `ok`), and
the boot phase (the event and status last reported).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from service.auth import town_caller

router = APIRouter(tags=["heartbeat"])


class Heartbeat(BaseModel):
    """What the town's scripts send (templates/town/common.sh.j2 `report_status`)."""

    model_config = ConfigDict(extra="allow")

    town_id: str | None = Field(None, max_length=64)
    event: str = Field(max_length=64)
    status: str = Field(max_length=64)
    reported_at: datetime | None = None
    r2_credentials: dict[str, Any] | None = None


@router.post("/api/gastown/heartbeat", status_code=204)
async def heartbeat(report: Heartbeat, request: Request, town_id: str = Depends(town_caller)) -> None:
    if report.town_id and report.town_id != town_id:
        raise HTTPException(403, "a town reports for itself only")
    synced = report.event == "r2_sync" and report.status == "ok"
    async with request.app.state.pool.connection() as conn:
        await conn.execute(
            """UPDATE gastown_towns SET last_heartbeat_at = now(),
                      last_r2_sync_at = CASE WHEN %s THEN coalesce(%s, now()) ELSE last_r2_sync_at END,
                      boot_phase = %s
               WHERE id = %s AND destroyed_at IS NULL""",
            (synced, report.reported_at, f"{report.event}: {report.status}"[:200], town_id),
        )
