"""Rendering: every fly.toml is valid TOML that flyctl accepts strictly and holds no secret; kong.yml
routes and protects what Supabase's does; render_stack writes one folder per app."""

from __future__ import annotations

import base64
import hashlib
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from components.config.model import SiloConfig
from components.domain import services as svc
from components.domain.catalog import CatalogError, load_catalog
from components.providers.fly import flytoml
from components.render.environment import toml_value
from components.render.files import render_file, render_fly_toml, render_kong_yml, render_stack, secret_env

SECRETS = svc.SiloSecrets(
    jwt_secret="jwt-secret-value-0123456789abcdefghijkl",
    postgres_password="PgPassw0rdValue123",
    dashboard_username="supabase",
    dashboard_password="DashPassw0rdValue456",
    pg_meta_crypto_key="meta-crypto-key-value-0123456789abcdef",
    anon_key="eyJhbGciOiJIUzI1NiJ9.anon.sig",
    service_role_key="eyJhbGciOiJIUzI1NiJ9.service.sig",
)


def _cfg(**overrides: object) -> SiloConfig:
    return SiloConfig(
        **{"client": "acme", "app": "erp", "fly_org": "acme", "site_url": "https://erp.acme.dev", **overrides}
    )


@pytest.mark.parametrize("studio", [True, False])
@pytest.mark.parametrize("minutes", [0, 30])
def test_every_fly_toml_is_strictly_valid_and_secret_free(studio: bool, minutes: int) -> None:
    cfg = _cfg(studio=studio, auto_stop_minutes=minutes)
    secret_values = [*SECRETS.values()]
    for name in cfg.services:
        secret_values += secret_env(cfg, name, SECRETS).values()
    for name in cfg.services:
        text = render_fly_toml(cfg, name)
        doc = tomllib.loads(text)
        assert flytoml.validate(doc) == [], name
        assert doc["app"] == f"devenv-acme-erp-{name}" and doc["primary_region"] == "yul"
        assert "autoscaling" not in doc and "args" not in doc["build"]
        assert all(isinstance(v, str) for v in doc["env"].values())
        assert not any(value in text for value in secret_values), name
        section = doc["http_service"] if name == "kong" else doc["services"][0]
        assert section["auto_stop_machines"] == ("stop" if minutes else "off")
        assert section["auto_start_machines"] is True and section["min_machines_running"] == 0


def test_only_kong_is_an_http_service() -> None:
    cfg = _cfg()
    for name in cfg.services:
        doc = tomllib.loads(render_fly_toml(cfg, name))
        if name == "kong":
            assert doc["http_service"]["force_https"] is True and "services" not in doc
        else:
            assert "http_service" not in doc
            [service] = doc["services"]
            assert service["protocol"] == "tcp" and service["ports"] == [{"port": svc.SERVICES[name].port}]


def test_volumes_and_files() -> None:
    cfg = _cfg()
    pg = tomllib.loads(render_fly_toml(cfg, "pg"))
    assert pg["mounts"] == [{"source": "pg_data", "destination": "/data", "initial_size": "10gb"}]
    # PGDATA and the pgsodium key dir on the one volume, and the server told to open PGDATA: the image's
    # postgresql.conf pins another data_directory, which only a command-line -c outranks (proven on a real
    # server in tests/db/test_services.py).
    assert pg["env"]["PGDATA"].startswith(pg["mounts"][0]["destination"] + "/")
    assert f"-c data_directory={pg['env']['PGDATA']}" in pg["processes"]["app"]
    assert (
        svc.PG_CUSTOM_DIR.startswith("/data/")
        and f"ln -s {svc.PG_CUSTOM_DIR} /etc/postgresql-custom" in (pg["processes"]["app"])
    )
    paths = {f["guest_path"]: f for f in pg["files"]}
    assert set(paths) == {
        "/docker-entrypoint-initdb.d/init-scripts/99-roles.sql",
        "/docker-entrypoint-initdb.d/init-scripts/99-jwt.sql",
        "/etc/postgresql/pg_hba.conf",
        "/usr/local/bin/silo-role-sync.sh",
    }
    assert "::/0" in paths["/etc/postgresql/pg_hba.conf"]["raw_value"]
    storage = tomllib.loads(render_fly_toml(cfg, "storage"))
    assert storage["mounts"][0]["source"] == "storage_data"
    assert storage["mounts"][0]["destination"] == storage["env"]["FILE_STORAGE_BACKEND_PATH"]
    kong = tomllib.loads(render_fly_toml(cfg, "kong"))
    assert kong["files"] == [{"guest_path": "/home/kong/kong.yml", "secret_name": svc.KONG_YML_SECRET}]
    assert "mounts" not in kong


def test_image_defaults_overrides_and_explicit_reference() -> None:
    # Without an explicit reference the fly.toml names what `up` deploys: the catalog's resolution.
    catalog = load_catalog()
    assert tomllib.loads(render_fly_toml(_cfg(), "auth"))["build"]["image"] == catalog.resolve("auth").ref
    pg = catalog.resolve("pg")  # the catalog knows its digest: deployed, and so rendered, by digest
    assert tomllib.loads(render_fly_toml(_cfg(), "pg"))["build"]["image"] == f"supabase/postgres@{pg.digest}"
    cfg = _cfg(images={"storage": "v1.33.5"})  # a deprecated tag: still deployed, so still rendered
    assert tomllib.loads(render_fly_toml(cfg, "storage"))["build"]["image"] == catalog.resolve("storage", "v1.33.5").ref
    pinned = "supabase/gotrue@sha256:" + "a" * 64
    assert tomllib.loads(render_fly_toml(cfg, "auth", pinned))["build"]["image"] == pinned
    with pytest.raises(CatalogError, match=r"silo:images\.auth: tag 'v2\.185\.0' is not in the image catalog"):
        render_fly_toml(_cfg(images={"auth": "v2.185.0"}), "auth")


def test_disabled_studio_has_no_fly_toml() -> None:
    with pytest.raises(ValueError, match="'studio' is not enabled"):
        render_fly_toml(_cfg(studio=False), "studio")


@settings(deadline=None, max_examples=200)
@given(st.text())
def test_toml_strings_round_trip(value: str) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


@pytest.mark.parametrize(
    "value",
    [
        "a\nb",
        "\nstarts with a newline",
        "ends in a quote\n'",
        "ends in two\n''",
        "holds '''\n",
        "crlf\r\n",
        "del\x7f\n",
    ],
)
def test_multiline_strings_round_trip_whatever_they_hold(value: str) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_a_town_fly_toml_names_its_scripts_by_content_and_the_machine_gets_them_verbatim() -> None:
    from components.config.model import TownConfig
    from components.render.town_scripts import render_town_scripts
    from components.stacks.town import town_fly_toml, town_script_context

    text = town_fly_toml(_cfg(), TownConfig(name="acme", user="u_1"), "img:1", town_id="t1", bucket="b", endpoint="e")
    entries = {f["guest_path"]: f for f in tomllib.loads(text)["files"]}
    scripts = render_town_scripts(town_script_context())
    # Each script by the SHA-256 of its bytes in the store, not inline: the fly.toml (and so every
    # machine's inputs) stays small however long the scripts grow.
    for guest_path, content in scripts.items():
        local = Path(entries[guest_path]["local_path"])
        assert local.name == hashlib.sha256(content.encode()).hexdigest()
        assert local.read_text() == content
    assert len(text) < 5000 < sum(len(c) for c in scripts.values())
    # What the machine gets: every script verbatim, and the town's rigs file inline.
    config = flytoml.to_machine_config(tomllib.loads(text), read_local=flytoml.read_local_file)
    sent = {f["guest_path"]: base64.b64decode(f["raw_value"]).decode() for f in config["files"]}
    assert sent == {**scripts, "/etc/gastown/rigs.json": '{\n  "rigs": []\n}\n'}


def test_a_town_machine_never_auto_stops() -> None:
    """A town works unattended (its agents, its 5-minute R2 sync): if Fly's proxy could stop it for
    idleness, an idle town would stop and nothing would start it again. What the machine gets (its
    fly.toml converted as the machine provider converts it) has services, and none of them autostops."""
    from components.config.model import TownConfig
    from components.stacks.town import town_fly_toml

    text = town_fly_toml(_cfg(), TownConfig(name="acme", user="u_1"), "img:1", town_id="t1", bucket="b", endpoint="e")
    doc = tomllib.loads(text)
    assert flytoml.validate(doc) == []
    config = flytoml.to_machine_config(doc, read_local=flytoml.read_local_file)
    services = flytoml.normalize(config).get("services") or []
    assert services, "the town's internal API is a service"
    assert [s.get("autostop") for s in services] == ["off"] * len(services)


def test_strict_undefined() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render_file("kong/kong.yml.j2", app="x", studio=True)


# -- kong.yml -------------------------------------------------------------------------------------------------


def _route(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """The service Kong picks for ``path``: the longest matching route prefix."""
    matches = [
        (len(prefix), service)
        for service in doc["services"]
        for route in service["routes"]
        for prefix in route["paths"]
        if path.startswith(prefix)
    ]
    assert matches, f"no route for {path}"
    return max(matches, key=lambda m: m[0])[1]


def _plugins(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p.get("config", {}) for p in service.get("plugins", [])}


def _consumer_for_key(doc: dict[str, Any], key: str) -> str | None:
    for consumer in doc["consumers"]:
        if any(c["key"] == key for c in consumer.get("keyauth_credentials", [])):
            return consumer["username"]
    return None


def _admitted(doc: dict[str, Any], path: str, apikey: str | None) -> bool:
    """Would key-auth + acl let a request with ``apikey`` through to ``path``'s upstream?"""
    plugins = _plugins(_route(doc, path))
    if "request-termination" in plugins:
        return False
    if "key-auth" not in plugins:
        return "basic-auth" not in plugins
    consumer = _consumer_for_key(doc, apikey) if apikey else None
    if consumer is None:
        return False
    groups = {a["group"] for a in doc["acls"] if a["consumer"] == consumer}
    return "acl" not in plugins or bool(groups & set(plugins["acl"]["allow"]))


def test_kong_yml_routes_and_protection() -> None:
    doc = yaml.safe_load(render_kong_yml(_cfg(), SECRETS))
    assert doc["_format_version"] == "2.1"
    anon, service = SECRETS.anon_key, SECRETS.service_role_key
    for path in ("/rest/v1/todos", "/auth/v1/user"):
        assert _admitted(doc, path, anon) and _admitted(doc, path, service)
        assert not _admitted(doc, path, None) and not _admitted(doc, path, "made-up")
    # postgres-meta runs SQL as supabase_admin: only the service_role key gets through.
    assert not _admitted(doc, "/pg/query", anon) and _admitted(doc, "/pg/query", service)
    # Email links and OAuth redirects need no key; storage authenticates by itself.
    for path in ("/auth/v1/verify", "/auth/v1/callback", "/auth/v1/authorize", "/storage/v1/object/x"):
        assert set(_plugins(_route(doc, path))) == {"cors"}, path
    # Studio: basic-auth with the DASHBOARD user, which is no API consumer.
    dashboard = _route(doc, "/project/default")
    assert _plugins(dashboard) == {"cors": {}, "basic-auth": {"hide_credentials": True}}
    assert doc["basicauth_credentials"] == [
        {"consumer": "DASHBOARD", "username": "supabase", "password": SECRETS.dashboard_password}
    ]
    assert not _admitted(doc, "/api/mcp", service)
    assert {(a["consumer"], a["group"]) for a in doc["acls"]} == {("anon", "anon"), ("service_role", "admin")}


@pytest.mark.parametrize("studio", [True, False])
def test_kong_routes_graphql_to_postgrest_with_the_graphql_public_profile(studio: bool) -> None:
    """Upstream's graphql-v1 service (supabase/supabase:docker/volumes/api/kong.yml): /graphql/v1 goes to
    PostgREST's /rpc/graphql with `Content-Profile: graphql_public`, behind key-auth and the ACL. Without it
    the request falls through to the dashboard's catch-all (basic-auth: 401)."""
    doc = yaml.safe_load(render_kong_yml(_cfg(studio=studio), SECRETS))
    service = _route(doc, "/graphql/v1")
    assert service["url"] == "http://devenv-acme-erp-rest.flycast:3000/rpc/graphql"
    plugins = _plugins(service)
    assert plugins["request-transformer"]["add"]["headers"] == ["Content-Profile:graphql_public"]
    assert plugins["acl"]["allow"] == ["admin", "anon"]
    assert _admitted(doc, "/graphql/v1", SECRETS.anon_key) and _admitted(doc, "/graphql/v1", SECRETS.service_role_key)
    assert not _admitted(doc, "/graphql/v1", None) and not _admitted(doc, "/graphql/v1", "made-up")
    assert "graphql" in svc.public_env(_cfg(), "rest")["PGRST_DB_SCHEMAS"]


def test_kong_upstreams_are_flycast() -> None:
    doc = yaml.safe_load(render_kong_yml(_cfg(), SECRETS))
    expected = {
        "/rest/v1/": "http://devenv-acme-erp-rest.flycast:3000/",
        "/auth/v1/x": "http://devenv-acme-erp-auth.flycast:9999/",
        "/auth/v1/verify": "http://devenv-acme-erp-auth.flycast:9999/verify",
        "/storage/v1/": "http://devenv-acme-erp-storage.flycast:5000/",
        "/pg/": "http://devenv-acme-erp-meta.flycast:8080/",
        "/": "http://devenv-acme-erp-studio.flycast:3000/",
    }
    assert {path: _route(doc, path)["url"] for path in expected} == expected
    assert all(route["strip_path"] for s in doc["services"] for route in s["routes"])


def test_kong_without_studio_has_no_catch_all() -> None:
    doc = yaml.safe_load(render_kong_yml(_cfg(studio=False), SECRETS))
    paths = [p for s in doc["services"] for r in s["routes"] for p in r["paths"]]
    assert "/" not in paths and "/rest/v1/" in paths
    assert "basicauth_credentials" not in doc
    assert SECRETS.dashboard_password not in render_kong_yml(_cfg(studio=False), SECRETS)
    assert not any("studio" in s["url"] for s in doc["services"])


def test_kong_yml_on_disk_holds_placeholders_only() -> None:
    text = render_kong_yml(_cfg(), None)
    assert not any(value in text for value in SECRETS.values())
    doc = yaml.safe_load(text)
    assert _consumer_for_key(doc, "${SUPABASE_ANON_KEY}") == "anon"
    assert _consumer_for_key(doc, "${SUPABASE_SERVICE_KEY}") == "service_role"


@settings(deadline=None, max_examples=100)
@given(st.text(min_size=1))
def test_kong_yml_quotes_any_password(password: str) -> None:
    secrets = svc.SiloSecrets(**{**SECRETS.__dict__, "dashboard_password": password})
    doc = yaml.safe_load(render_kong_yml(_cfg(), secrets))
    assert doc["basicauth_credentials"][0]["password"] == password


# -- render_stack ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("studio", [True, False])
def test_render_stack_writes_one_folder_per_app(tmp_path: Path, studio: bool) -> None:
    cfg = _cfg(studio=studio)
    written = render_stack(cfg, tmp_path / "out")
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert folders == sorted(cfg.app_name(n) for n in cfg.services)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == sorted(
        [f"{cfg.app_name(n)}/fly.toml" for n in cfg.services] + [f"{cfg.app_name('kong')}/kong.yml"]
    )
    for path in written:
        text = path.read_text()
        assert not any(value in text for value in SECRETS.values())
        if path.name == "fly.toml":
            assert flytoml.validate(flytoml.parse(text)) == []
            assert text == render_fly_toml(cfg, path.parent.name.rsplit("-", 1)[1])
        else:
            assert "${SUPABASE_SERVICE_KEY}" in text
