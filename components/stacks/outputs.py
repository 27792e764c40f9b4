"""Stack outputs of a silo: connection info exists only while the silo runs.

Shapes follow seed 004: the Service Desk JSON (`connection_info`) and the access-control matrix
(`roles`): dev-worker and dev-orchestrator get the URL and the anon key; devops gets everything
(secret); security-auditor gets the connection string as it appears in logs (password masked);
clientele gets nothing.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.config.model import SiloConfig
from components.config.program import program_values
from components.domain import services as svc
from components.errors import UserError
from components.providers.fly.settings import CONFIG_KEYS, resolve_fly_settings
from components.stacks.devenv import DevEnvStack

MASK = "********"


def db_connection_string(cfg: SiloConfig, password: str) -> str:
    # The database is private: reachable over Fly's private network (Flycast), never on fly.dev.
    return f"postgres://postgres:{password}@{cfg.pg_host}:5432/postgres"


def db_public_connection_string(cfg: SiloConfig, password: str) -> str:
    # The public login (pg_hba.conf admits no other role from outside the silo's network). sslmode=require
    # encrypts but does not check the server's certificate; README: verify-full.
    role = svc.PUBLIC_DB_ROLE
    return f"postgres://{role}:{password}@{cfg.app_name('pg')}.fly.dev:5432/postgres?sslmode=require"


def fly_target() -> str:
    """Which Fly the stack's apps live on, as its providers resolve it (stack config, then environment):
    an output, so `pulumi stack output` tells a local emulator's silo from a real one even though both
    show fly.dev URLs. Never the token itself."""
    try:
        return resolve_fly_settings(program_values(CONFIG_KEYS)).target
    except ValueError as exc:  # a real Fly URL without a token: said at preview, before anything is made
        raise UserError(str(exc)) from None


def silo_outputs(cfg: SiloConfig, devenv: DevEnvStack) -> dict[str, Any]:
    """The outputs to export (Outputs or plain values); connection data only while running."""
    running = cfg.state == "running"
    machines = {
        name: {"app": res.app.name, "machine_id": res.machine.machine_id, "state": devenv.machine_state(name)}
        for name, res in devenv.services.items()
    }
    services_view = {
        svc.SERVICES[name].title: {
            "status": devenv.machine_state(name).apply(_status),
            "machine_id": res.machine.machine_id,
        }
        for name, res in devenv.services.items()
    }
    outputs: dict[str, Any] = {
        "silo_id": cfg.silo_id,
        "status": cfg.state,
        "apps": {name: cfg.app_name(name) for name in cfg.services},
        "machines": machines,
        "monthly_cost_estimate": devenv.cost,
    }
    if not running:
        # Withdrawn, not stale: a stopped silo publishes no URLs or keys (seed 004, "Critical Rule").
        return outputs

    db_url = pulumi.Output.secret(devenv.db_password.apply(lambda p: db_connection_string(cfg, p)))
    connection_info = {
        "supabase_url": cfg.kong_url,
        "supabase_anon_key": devenv.anon_key,
        "supabase_service_role_key": devenv.service_role_key,
        "db_connection_string": db_url,
        "db_password": devenv.db_password,
        "studio_url": cfg.studio_url if cfg.studio else None,
        "silo_preview_url": cfg.site_url,
    }
    public_view = {"supabase_url": cfg.kong_url, "supabase_anon_key": devenv.anon_key}
    outputs.update(
        {
            "supabase_url": cfg.kong_url,
            "anon_key": devenv.anon_key,
            "service_role_key": devenv.service_role_key,
            "db_password": pulumi.Output.secret(devenv.db_password),
            "db_connection_string": db_url,
            "studio_url": cfg.studio_url if cfg.studio else None,
            "db_public_connection_string": pulumi.Output.secret(
                devenv.public_db_password.apply(lambda p: db_public_connection_string(cfg, p))
            )
            if devenv.public_db_password is not None
            else None,
            "connection_info": pulumi.Output.secret(
                {
                    "silo_id": cfg.silo_id,
                    "status": "running",
                    "connection_info": connection_info,
                    "services": services_view,
                }
            ),
            # One secret entry would make the whole map secret, so devops' view is its own output.
            "roles": {
                "dev-worker": public_view,
                "dev-orchestrator": public_view,
                "security-auditor": {"db_connection_string": db_connection_string(cfg, MASK)},
                "clientele": {},
            },
            "roles_devops": pulumi.Output.secret(connection_info),
            "netlify": {"VITE_SUPABASE_URL": cfg.kong_url, "VITE_SUPABASE_ANON_KEY": devenv.anon_key},
        }
    )
    return outputs


def _status(state: str | None) -> str:
    return {"started": "running"}.get(state or "", state or "unknown")
