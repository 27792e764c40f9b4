"""Each service's fly.toml, Kong's kong.yml, the pg app's init files and the RLS SQL, rendered from
``templates/`` through the one Jinja environment (components/render/environment.py)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.config.model import SiloConfig
from components.domain import services as svc
from components.domain.catalog import ResolvedImage, silo_image, silo_images
from components.domain.rls import LOCK_KEY, POLICY_PREFIX, RLS_MODES
from components.render.environment import environment

# Placeholders written instead of secrets (render_kong_yml(cfg, None)): the copy on disk holds none.
KONG_PLACEHOLDERS: dict[str, str] = {
    "anon_key": "${SUPABASE_ANON_KEY}",
    "service_key": "${SUPABASE_SERVICE_KEY}",
    "dashboard_username": "${DASHBOARD_USERNAME}",
    "dashboard_password": "${DASHBOARD_PASSWORD}",
}

# guest path → template of the pg app's init files (shipped with [[files]] raw_value).
PG_FILES: dict[str, str] = {
    svc.ROLES_SQL_PATH: "pg/roles.sql",
    f"{svc.PG_INITDB_DIR}/99-jwt.sql": "pg/jwt.sql",
    svc.PG_HBA_PATH: "pg/pg_hba.conf",
    svc.ROLE_SYNC_PATH: "pg/role-sync.sh",
}


def render_file(template: str, **ctx: Any) -> str:
    """Render ``templates/<template>`` (a path relative to ``templates/``) with ``ctx``."""
    return environment().get_template(template).render(**ctx)


def _fly_context(cfg: SiloConfig, name: str, image: str) -> dict[str, Any]:
    spec = svc.service(name)
    section = [spec.check] if spec.check.port is None else []
    top = [("health", spec.check)] if spec.check.port is not None else []
    ctx: dict[str, Any] = {
        "app": cfg.app_name(name),
        "title": spec.title,
        "region": cfg.region,
        "image": image,
        "port": spec.port,
        "env": svc.public_env(cfg, name),
        "kill_signal": spec.kill_signal,
        "kill_timeout": spec.kill_timeout,
        "auto_stop": "stop" if cfg.auto_stop_minutes > 0 and not (name == "pg" and cfg.pg_public) else "off",
        "pg_tls": name == "pg" and cfg.pg_public,
        "auto_stop_minutes": cfg.auto_stop_minutes,
        "section_checks": section,
        "top_checks": [*top, *spec.extra_checks],
        "volume": spec.volume,
        "vm": spec.vm,
        "processes": None,
        "files": [],
    }
    if name == "pg":
        ctx["processes"] = {"app": svc.PG_COMMAND}
        ctx["files"] = [{"guest_path": path, "raw_value": text} for path, text in pg_files(cfg).items()]
    if name == "kong":
        ctx["kong_secret"] = svc.KONG_YML_SECRET
        ctx["kong_config_path"] = svc.KONG_DECLARATIVE_CONFIG
    return ctx


def pg_files(cfg: SiloConfig) -> dict[str, str]:
    """guest path → text of the pg app's init SQL and pg_hba.conf (which depends on silo:pgPublic)."""
    ctx = {"pg_public": cfg.pg_public, "public_role": svc.PUBLIC_DB_ROLE}
    return {path: render_file(template, **ctx) for path, template in PG_FILES.items()}


def render_fly_toml(cfg: SiloConfig, service: str, image: str | None = None) -> str:
    """The fly.toml of one service's app. ``image`` (a full reference) defaults to what ``up`` deploys:
    the silo's tag resolved through the image catalog (by digest when the catalog knows it)."""
    if service not in cfg.services:
        raise ValueError(f"service {service!r} is not enabled in this silo (enabled: {', '.join(cfg.services)})")
    ref = image or silo_image(cfg, service).ref
    return render_file(f"fly/{service}.toml.j2", **_fly_context(cfg, service, ref))


def render_kong_yml(cfg: SiloConfig, secrets: svc.SiloSecrets | None) -> str:
    """Kong's declarative config. ``secrets=None`` writes ``${...}`` placeholders instead of keys."""
    values: Mapping[str, str] = (
        KONG_PLACEHOLDERS
        if secrets is None
        else {
            "anon_key": secrets.anon_key,
            "service_key": secrets.service_role_key,
            "dashboard_username": secrets.dashboard_username,
            "dashboard_password": secrets.dashboard_password,
        }
    )
    upstream = {name: cfg.flycast_url(name, svc.SERVICES[name].port) for name in svc.enabled_upstreams(cfg, "kong")}
    return render_file("kong/kong.yml.j2", app=cfg.app_name("kong"), studio=cfg.studio, upstream=upstream, **values)


def render_stack(cfg: SiloConfig, out_dir: Path, images: Mapping[str, ResolvedImage] | None = None) -> list[Path]:
    """Write ``<out>/<fly app>/fly.toml`` per enabled service and Kong's kong.yml (placeholders only).

    ``images`` defaults to the catalog's resolution for this silo (``silo_images``), the one ``up``
    deploys, so the files reviewed name the images that run. Resolved before anything is written: a tag
    the catalog refuses leaves no partial output.
    """
    images = images if images is not None else silo_images(cfg, towns=False)
    written: list[Path] = []
    for name in cfg.services:
        folder = Path(out_dir) / cfg.app_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "fly.toml"
        path.write_text(render_fly_toml(cfg, name, images[name].ref))
        written.append(path)
    kong_yml = Path(out_dir) / cfg.app_name("kong") / "kong.yml"
    kong_yml.write_text(render_kong_yml(cfg, None))
    written.append(kong_yml)
    return written


def rls_sql(mode: str) -> str:
    """The idempotent SQL (one DO block) that puts every table in schema ``public`` into ``mode``; an
    unknown mode is an error naming the key. Run on the pg machine (FlyExec + psql); see the template for
    what each mode means (Supabase docs, Row Level Security)."""
    if mode not in RLS_MODES:
        raise ValueError(f"silo:rlsMode: must be one of {', '.join(RLS_MODES)} (got {mode!r})")
    return render_file("pg/rls.sql.j2", mode=mode, prefix=POLICY_PREFIX, lock_key=LOCK_KEY)


def secret_env(cfg: SiloConfig, name: str, secrets: svc.SiloSecrets) -> dict[str, str]:
    """The Fly secrets of one app, and nothing more (its secrets in supabase/supabase docker/docker-compose.yml).

    ``cfg`` is needed for the DB hosts and, for Kong, to render ``kong.yml`` (its routes depend on the
    silo's names and on whether Studio is enabled).
    """
    svc.service(name)
    s = secrets
    if name == "pg":
        env = {"POSTGRES_PASSWORD": s.postgres_password, "JWT_SECRET": s.jwt_secret}
        if cfg.pg_public:
            if not s.public_db_password:
                raise ValueError(
                    "silo:pgPublic needs the public login's own password (svc.SiloSecrets.public_db_password)"
                )
            env[svc.PUBLIC_DB_PASSWORD_SECRET] = s.public_db_password  # read by roles.sql at boot
        return env
    if name == "rest":
        return {
            "PGRST_DB_URI": svc.db_url(cfg, "authenticator", s.postgres_password),
            "PGRST_JWT_SECRET": s.jwt_secret,
            "PGRST_APP_SETTINGS_JWT_SECRET": s.jwt_secret,
        }
    if name == "auth":
        auth = {
            "GOTRUE_DB_DATABASE_URL": svc.db_url(cfg, "supabase_auth_admin", s.postgres_password),
            "GOTRUE_JWT_SECRET": s.jwt_secret,
        }
        if cfg.smtp is not None and s.smtp_password:
            auth["GOTRUE_SMTP_PASS"] = s.smtp_password
        return auth
    if name == "storage":
        return {
            "DATABASE_URL": svc.db_url(cfg, "supabase_storage_admin", s.postgres_password),
            "PGRST_JWT_SECRET": s.jwt_secret,
            "ANON_KEY": s.anon_key,
            "SERVICE_KEY": s.service_role_key,
        }
    if name == "meta":
        return {"PG_META_DB_PASSWORD": s.postgres_password, "CRYPTO_KEY": s.pg_meta_crypto_key}
    if name == "studio":
        return {
            "POSTGRES_PASSWORD": s.postgres_password,
            "AUTH_JWT_SECRET": s.jwt_secret,
            "SUPABASE_ANON_KEY": s.anon_key,
            "SUPABASE_SERVICE_KEY": s.service_role_key,
            "PG_META_CRYPTO_KEY": s.pg_meta_crypto_key,
        }
    # kong: the complete kong.yml (keys and dashboard credentials inside), delivered as a file through
    # [[files]] secret_name, so Kong needs no entrypoint substitution (supabase/supabase#12416, #12661).
    kong_yml = render_kong_yml(cfg, secrets)
    return {svc.KONG_YML_SECRET: base64.b64encode(kong_yml.encode()).decode("ascii")}
