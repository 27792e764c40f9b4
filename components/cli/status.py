"""`silo status`: what each of a silo's Fly apps is doing, read from the Fly Machines API; for a town
machine also when its temporary R2 credentials lapse (its backups stop then, until a `pulumi up`).

Read-only (GETs only), so it is safe to run at any time, also on a stopped silo.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from components.config.model import SiloConfig
from components.domain.town_credentials import TOWN_MACHINE, machine_expiry
from components.providers.fly.answers import describe_events, ip_kind
from components.providers.fly.client import COMPAT_CHECK_PREFIX, FlyClient
from components.providers.fly.settings import FlySettings


def status_report(cfg: SiloConfig, settings: FlySettings) -> list[dict[str, Any]]:
    """One row per machine (or per app without machines): app, machine, state, checks, volume, IPs."""
    town_apps = {t.sandbox_id for t in cfg.towns}
    apps = [cfg.app_name(s) for s in cfg.services] + [t.sandbox_id for t in cfg.towns]
    now = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    with FlyClient(settings) as fly:
        for app in apps:
            if fly.get_app(app) is None:
                rows.append({"app": app, "state": "absent"})
                continue
            ips = [f"{ip_kind(ip)}:{ip.get('ip')}" for ip in fly.list_ips(app)]
            volumes = {v["id"]: v for v in fly.list_volumes(app)}
            machines = fly.list_machines(app)
            is_town = app in town_apps
            for machine in machines:
                mounts = (machine.get("config") or {}).get("mounts") or []
                volume_ids = [m.get("volume") for m in mounts]
                checks = {
                    c.get("name"): c.get("status")
                    for c in machine.get("checks") or []
                    if not str(c.get("name", "")).startswith(COMPAT_CHECK_PREFIX)
                }
                rows.append(
                    {
                        "app": app,
                        "machine_id": machine.get("id"),
                        "state": _state(fly, app, machine),
                        "checks": checks,
                        "volume": [
                            f"{volumes[v]['name']}:{v}:{volumes[v].get('size_gb')}GB" if v in volumes else v
                            for v in volume_ids
                        ],
                        "ips": ips,
                        **(_credentials(machine, now) if is_town and machine.get("name") == TOWN_MACHINE else {}),
                    }
                )
            if not machines:
                rows.append(
                    {
                        "app": app,
                        "state": "no machines",
                        "volume": [f"{v['name']}:{i}" for i, v in volumes.items()],
                        "ips": ips,
                    }
                )
    return rows


def _credentials(machine: dict[str, Any], now: dt.datetime) -> dict[str, str]:
    expiry = machine_expiry(machine, now)
    short = {"ok": "ok until", "expiring": "EXPIRING", "expired": "EXPIRED"}
    return {"r2_credentials": f"{short[expiry.state]} {expiry.value}" if expiry.state in short else "unknown"}


def _state(fly: FlyClient, app: str, machine: dict[str, Any]) -> str:
    """The machine's state; a `failed` one (Fly could not start it, and it stays so until someone acts)
    with its last event, which says why (the exit code, out of memory). A listed machine may come without
    its events: they are read from the machine then."""
    state = str(machine.get("state") or "")
    if state != "failed":
        return state
    events = machine.get("events")
    if not events:
        events = (fly.get_machine(app, str(machine.get("id"))) or {}).get("events") or []
    return f"failed ({describe_events(events, limit=1)})"
