"""postgres-meta, Supabase's own meta server (npm ``@supabase/postgres-meta``, the version the image catalog
deploys), run with the environment and secrets the program renders for the meta app, against a real
PostgreSQL set up as the pg app sets itself up: the supabase/postgres login roles, our roles.sql
(passwords from POSTGRES_PASSWORD) and our pg_hba.conf (SCRAM over TCP). It must list the schema's tables
the two ways it is called in a silo: through Kong's ``/pg/`` route (meta's own connection, from the
PG_META_DB_* env) and from Studio (the connection string Studio builds from its own env, encrypted with
its PG_META_CRYPTO_KEY, which meta decrypts with its CRYPTO_KEY).

The server listens on 127.0.0.1 on free ports (PG_META_HOST and PG_META_PORT are the only values
changed, with the database's address: on Fly they are ``::``, 8080 and the pg app's Flycast name).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from components.config.model import SiloConfig
from components.domain import services as svc
from components.domain.catalog import load_catalog
from components.render.files import pg_files, secret_env
from tests.fixtures.postgres import PostgresServer, _os_user, find_bindir

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
META_PACKAGE = TOOLS / "node_modules" / "@supabase" / "postgres-meta"
# The login roles the supabase/postgres image creates before our init SQL runs (as in test_services.py).
IMAGE_ROLES = ("supabase_admin", "authenticator", "pgbouncer", "supabase_auth_admin", "supabase_storage_admin")
SECRETS = svc.SiloSecrets(
    jwt_secret="jwt-secret-value-0123456789abcdefghijkl",
    postgres_password="MetaPeerPassw0rd",
    dashboard_username="supabase",
    dashboard_password="DashPassw0rdValue456",
    pg_meta_crypto_key="meta-crypto-key-value-0123456789abcdef",
    anon_key="anon.key.value",
    service_role_key="service.role.key.value",
)
CFG = SiloConfig(client="acme", app="erp", fly_org="acme", site_url="https://erp.acme.dev")

pytestmark = pytest.mark.db


def _catalog_meta_version() -> str:
    return load_catalog().resolve("meta", None).tag.removeprefix("v")


def _two_free_ports() -> int:
    """A port p with p+1 free too: postgres-meta serves its admin app on PG_META_PORT + 1."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


@pytest.fixture(scope="module")
def pg_app_like_server() -> Iterator[PostgresServer]:
    """A private server with the image's roles, our roles.sql applied and our pg_hba.conf in force."""
    root = Path(tempfile.mkdtemp(prefix="silo-pg-meta-"))
    server = PostgresServer(bindir=find_bindir(), root=root, user=_os_user())
    server.start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            for role in IMAGE_ROLES:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute("ALTER ROLE supabase_admin SUPERUSER")  # as in supabase/postgres
        roles = root / "roles.sql"
        roles.write_text(pg_files(CFG)[svc.ROLES_SQL_PATH])
        psql = [str(server.bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", str(root), "-p", str(server.port)]
        env = {**os.environ, "POSTGRES_PASSWORD": secret_env(CFG, "pg", SECRETS)["POSTGRES_PASSWORD"]}
        done = subprocess.run(
            [*psql, "-U", "postgres", "-d", "postgres", "-f", str(roles)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        hba = root / "pg_hba.conf"
        hba.write_text(pg_files(CFG)[svc.PG_HBA_PATH])
        if server.user is not None:
            os.chown(hba, server.user.pw_uid, server.user.pw_gid)
        options = f"-c port={server.port} -c unix_socket_directories={root} -c hba_file={hba}"
        pg_ctl = [str(server.bindir / "pg_ctl"), "-D", str(server.data), "-l", str(server.log), "-o", options]
        restarted = server._run(*pg_ctl, "-w", "-t", "60", "-m", "fast", "restart")
        assert restarted.returncode == 0, restarted.stderr
        local = f"host={root} port={server.port} dbname=postgres user=postgres"
        with psycopg.connect(local, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.todos (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text)")
            conn.execute("CREATE SCHEMA crm")
            conn.execute("CREATE TABLE crm.contacts (id bigint PRIMARY KEY, email text NOT NULL)")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class MetaServer:
    url: str
    log: Path


@contextmanager
def _running_meta(server: PostgresServer, tmp_path: Path, overrides: dict[str, str]) -> Iterator[MetaServer]:
    node = shutil.which("node")
    if node is None or not (META_PACKAGE / "package.json").is_file():
        pytest.fail(
            "postgres-meta is not installed: `make test` installs tools/package.json with `npm ci --prefix tools`",
            pytrace=False,
        )
    installed = json.loads((META_PACKAGE / "package.json").read_text())["version"]
    assert installed == _catalog_meta_version(), "tools/package.json pins the postgres-meta the catalog deploys"
    port = _two_free_ports()
    env = {
        # Only what a machine of the meta app has: its rendered env and its Fly secrets.
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        **svc.public_env(CFG, "meta"),
        **secret_env(CFG, "meta", SECRETS),
        "PG_META_HOST": "127.0.0.1",
        "PG_META_PORT": str(port),
        "PG_META_DB_HOST": "127.0.0.1",
        "PG_META_DB_PORT": str(server.port),
        **overrides,
    }
    log = tmp_path / "postgres-meta.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [node, str(META_PACKAGE / "dist" / "server" / "server.js")],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # Up when /health answers (postgres-meta's own health route); a crash ends the wait at once.
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"postgres-meta exited with {proc.returncode}:\n{log.read_text()}", pytrace=False)
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail(f"postgres-meta did not answer /health:\n{log.read_text()}", pytrace=False)
        yield MetaServer(url, log)
    finally:
        # Killed, not terminated: on SIGTERM its close-with-grace handler waits out a 10 s grace delay,
        # and a test server has nothing to flush.
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def meta(pg_app_like_server: PostgresServer, tmp_path: Path) -> Iterator[MetaServer]:
    with _running_meta(pg_app_like_server, tmp_path, {}) as server:
        yield server


def _kong_headers() -> dict[str, str]:
    """What Kong's /pg/ route forwards (templates/kong/kong.yml.j2): key-auth with hide_credentials false
    passes the service_role key on, and the consumer headers of the acl plugin."""
    return {
        "apikey": SECRETS.service_role_key,
        "X-Consumer-Username": "SERVICE_ROLE",
        "X-Forwarded-Prefix": "/pg/",
        "Accept": "application/json",
    }


def _studio_headers(server: PostgresServer) -> dict[str, str]:
    """What Studio sends postgres-meta when self-hosted (supabase/supabase apps/studio/lib/api: apiHelpers.ts
    constructHeaders adds `apiKey`; self-hosted/util.ts builds postgresql://postgres:$POSTGRES_PASSWORD@
    $POSTGRES_HOST:$POSTGRES_PORT/$POSTGRES_DB and encrypts it with crypto-js AES under PG_META_CRYPTO_KEY
    into `x-connection-encrypted`), from the studio app's rendered env and secrets."""
    env = {**svc.public_env(CFG, "studio"), **secret_env(CFG, "studio", SECRETS)}
    env.update(POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(server.port))  # the pg app's Flycast address, here
    connection = (
        f"postgresql://postgres:{env['POSTGRES_PASSWORD']}@{env['POSTGRES_HOST']}:{env['POSTGRES_PORT']}"
        f"/{env['POSTGRES_DB']}"
    )
    return {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "apiKey": env["SUPABASE_SERVICE_KEY"],
        "x-connection-encrypted": _crypto_js_encrypt(connection, env["PG_META_CRYPTO_KEY"]),
    }


def _crypto_js_encrypt(text: str, key: str) -> str:
    """crypto-js's AES.encrypt(text, passphrase), as Studio calls it: the crypto-js postgres-meta ships."""
    script = "process.stdout.write(require('crypto-js').AES.encrypt(process.env.TEXT, process.env.KEY).toString())"
    done = subprocess.run(
        ["node", "-e", script],
        cwd=META_PACKAGE,
        env={"PATH": os.environ["PATH"], "TEXT": text, "KEY": key},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _tables(meta: MetaServer, headers: dict[str, str], schemas: str) -> httpx.Response:
    # Studio's Table Editor asks for one schema's tables with their columns.
    params = {"included_schemas": schemas, "include_columns": "true"}
    return httpx.get(f"{meta.url}/tables", params=params, headers=headers, timeout=60)


def test_meta_lists_the_tables_through_kong_with_its_own_connection(meta: MetaServer) -> None:
    answer = _tables(meta, _kong_headers(), "public,crm")

    assert answer.status_code == 200, answer.text
    tables = {(t["schema"], t["name"]): t for t in answer.json()}
    assert set(tables) == {("public", "todos"), ("crm", "contacts")}
    assert [c["name"] for c in tables[("public", "todos")]["columns"]] == ["id", "title"]
    assert [k["name"] for k in tables[("crm", "contacts")]["primary_keys"]] == ["id"]
    # meta logs in as the user the program renders, with the password of its Fly secret.
    who = httpx.post(f"{meta.url}/query", json={"query": "select current_user"}, headers=_kong_headers(), timeout=60)
    assert who.status_code == 200 and who.json() == [{"current_user": "supabase_admin"}]


def test_meta_lists_the_tables_for_studio_with_the_connection_studio_encrypts(
    meta: MetaServer, pg_app_like_server: PostgresServer
) -> None:
    answer = _tables(meta, _studio_headers(pg_app_like_server), "public")

    assert answer.status_code == 200, answer.text
    assert [(t["schema"], t["name"]) for t in answer.json()] == [("public", "todos")]
    who = httpx.post(
        f"{meta.url}/query",
        json={"query": "select current_user"},
        headers=_studio_headers(pg_app_like_server),
        timeout=60,
    )
    assert who.json() == [{"current_user": "postgres"}]  # Studio's own login, not meta's


def test_meta_refuses_studio_when_the_crypto_keys_differ(pg_app_like_server: PostgresServer, tmp_path: Path) -> None:
    # The pairing the program renders (studio's PG_META_CRYPTO_KEY = meta's CRYPTO_KEY) is what makes the
    # previous test pass: with another key meta cannot read Studio's connection.
    with _running_meta(pg_app_like_server, tmp_path, {"CRYPTO_KEY": "another-crypto-key-0123456789"}) as other:
        answer = _tables(other, _studio_headers(pg_app_like_server), "public")
    # Under a wrong key crypto-js yields nothing or bytes that are no URL: either way meta says so.
    assert answer.status_code == 500
    assert answer.json()["error"] in (
        "failed to get upstream connection details",
        "failed to process upstream connection details",
    )


def test_meta_with_a_wrong_database_password_lists_nothing(pg_app_like_server: PostgresServer, tmp_path: Path) -> None:
    # SCRAM is really in force: meta's listing depends on PG_META_DB_PASSWORD being the role's password.
    with _running_meta(pg_app_like_server, tmp_path, {"PG_META_DB_PASSWORD": "not-the-password"}) as wrong:
        answer = _tables(wrong, _kong_headers(), "public")
    assert answer.status_code == 500
    assert "password authentication failed" in answer.json()["error"]
    assert "not-the-password" not in answer.text
