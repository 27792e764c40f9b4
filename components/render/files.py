"""Jinja rendering of ``templates/``: each service's fly.toml, Kong's kong.yml, SQL and scripts.

One Environment for the whole repo: ``StrictUndefined`` (a missing value is an error, never an empty
string), ``keep_trailing_newline``, no autoescape (the outputs are TOML, YAML, SQL and shell, not
HTML). Values are escaped for their format by filters: ``toml`` (TOML 1.0 literal values) and
``yaml`` (a JSON string, which YAML reads as a double-quoted scalar).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from components.config.model import SiloConfig
from components.domain import services as svc
from components.domain.catalog import ResolvedImage, silo_image, silo_images
from components.paths import TEMPLATES_DIR

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


# TOML 1.0 basic strings: `"` and `\` escaped, and every control character (U+0000-U+001F, U+007F) as
# an escape. JSON's string syntax escapes the same set except DEL, with escapes TOML also accepts
# (\n, \t, \uXXXX, ...), and json.dumps does it in C: a town's fly.toml carries its scripts (tens of KB),
# so a character-by-character loop here took most of a 100-town preview (bench/run.py).
_DEL = "\x7f"


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False).replace(_DEL, "\\u007F")


def _defined(value: Any) -> None:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the missing variable


def toml_value(value: Any) -> str:
    """A Python value as a TOML 1.0 value (strings, bools, ints, finite floats and lists of those)."""
    _defined(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as a TOML value")


def yaml_string(value: Any) -> str:
    """A YAML double-quoted scalar: printable ASCII as is, everything else escaped (\\uXXXX or
    \\UXXXXXXXX, never a surrogate pair, which YAML parsers do not recombine)."""
    _defined(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string for YAML, got {type(value).__name__}")
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


@functools.cache
def environment() -> jinja2.Environment:
    """The shared Environment (built on first use: no work at import time)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["toml"] = toml_value
    env.filters["yaml"] = yaml_string
    return env


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
