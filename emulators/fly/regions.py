"""The ``/platform`` routes: Fly's regions, and placements limited to the regions an org may use."""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Request

from emulators.fly.model import DEFAULT_REGION, PLATFORM_REGIONS
from emulators.fly.util import ApiError, json_body

PLACEMENT_LIMIT = 100  # machines an org may place per region, when a placement asks for the limit


class RegionsMixin:
    """The platform routes of `FlyEmulator` (server.py)."""

    # -- platform ---------------------------------------------------------------------------------------
    def _h_platform_regions(self, request: Request, method: str, extra: dict) -> tuple[int, Any]:
        regions = [
            {"code": code, "name": code, "gateway_available": True, "requires_paid_plan": False, "deprecated": False}
            for code in PLATFORM_REGIONS
        ]
        return 200, {"Regions": regions, "Nearest": DEFAULT_REGION}

    def _h_platform_placements(self, request: Request, method: str, extra: dict) -> tuple[int, Any]:
        body = json_body(request)
        org = body.get("org_slug")
        if not isinstance(org, str) or not org:
            raise ApiError(400, "org_slug is required")
        asked = [r.strip() for r in str(body.get("region") or "any").split(",") if r.strip()]
        unknown = [r for r in asked if r != "any" and r not in PLATFORM_REGIONS]
        if unknown:
            raise ApiError(400, f"unknown region {unknown[0]!r}")
        count = body.get("count") or 0
        with self._cond:
            usable = self._state["org_regions"].get(org, list(PLATFORM_REGIONS))
        wanted = usable if "any" in asked else [r for r in asked if r in usable]
        # Count 0 asks for the org's limit in each region (fly-go GetPlacementsRequest.Count).
        placed = int(count) if isinstance(count, int) and count > 0 else PLACEMENT_LIMIT
        return 200, {"regions": [{"region": r, "count": placed, "concurrency": 0} for r in wanted]}
