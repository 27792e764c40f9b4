"""The service catalogue and the environment each app gets: secrets only as Fly secrets, public URLs
on Kong, private upstreams on Flycast, and the pg app's init SQL and pg_hba on a real PostgreSQL."""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from psycopg import sql

from components.config.model import SiloConfig
from components.domain import naming
from components.domain import services as svc
from components.render.files import pg_files, render_fly_toml, secret_env
from components.stacks.devenv import psql_command
from tests.fixtures.postgres import PostgresServer, _free_port, _os_user, find_bindir
from tests.fixtures.pulumi_mocks import RecordingMocks, declare_silo

SECRETS = svc.SiloSecrets(
    jwt_secret="jwt-secret-value-0123456789abcdefghijkl",
    postgres_password="PgPassw0rdValue123",
    dashboard_username="supabase",
    dashboard_password="DashPassw0rdValue456",
    pg_meta_crypto_key="meta-crypto-key-value-0123456789abcdef",
    anon_key="anon.key.value",
    service_role_key="service.role.key.value",
)

# What each service reads in supabase/supabase docker/docker-compose.yml, except Kong, which gets its
# rendered kong.yml as one file secret.
EXPECTED_SECRET_NAMES = {
    "pg": {"POSTGRES_PASSWORD", "JWT_SECRET"},
    "rest": {"PGRST_DB_URI", "PGRST_JWT_SECRET", "PGRST_APP_SETTINGS_JWT_SECRET"},
    "auth": {"GOTRUE_DB_DATABASE_URL", "GOTRUE_JWT_SECRET"},
    "storage": {"DATABASE_URL", "PGRST_JWT_SECRET", "ANON_KEY", "SERVICE_KEY"},
    "meta": {"PG_META_DB_PASSWORD", "CRYPTO_KEY"},
    "studio": {
        "POSTGRES_PASSWORD",
        "AUTH_JWT_SECRET",
        "SUPABASE_ANON_KEY",
        "SUPABASE_SERVICE_KEY",
        "PG_META_CRYPTO_KEY",
    },
    "kong": {svc.KONG_YML_SECRET},
}


def _cfg(**overrides: object) -> SiloConfig:
    return SiloConfig(
        **{"client": "acme", "app": "erp", "fly_org": "acme", "site_url": "https://erp.acme.dev", **overrides}
    )


def test_catalogue_covers_the_service_list_in_order() -> None:
    # The images are the catalog's (tests/db/test_catalog.py pins the S-2026-02 defaults).
    assert tuple(svc.SERVICES) == naming.SERVICES
    assert {n: s.title for n, s in svc.SERVICES.items()} == {
        "pg": "postgres",
        "rest": "postgrest",
        "auth": "gotrue",
        "storage": "storage",
        "meta": "postgres-meta",
        "studio": "studio",
        "kong": "kong",
    }


def test_catalogue_shape() -> None:
    assert [n for n, s in svc.SERVICES.items() if s.public] == ["kong"]
    assert {n: s.volume.name for n, s in svc.SERVICES.items() if s.volume} == {
        "pg": "pg_data",
        "storage": "storage_data",
    }
    assert svc.SERVICES["pg"].volume.size_gb == 10
    assert all(naming.is_volume_name(s.volume.name) for s in svc.SERVICES.values() if s.volume)
    assert all(s.vm.size == "shared-cpu-1x" for s in svc.SERVICES.values())
    small = svc.SERVICES["rest"].vm.memory_mb
    assert svc.SERVICES["pg"].vm.memory_mb > small and svc.SERVICES["studio"].vm.memory_mb > small
    # Every upstream is created (and healthy) before the services that need it.
    order = list(naming.SERVICES)
    for name, spec in svc.SERVICES.items():
        assert all(order.index(u) < order.index(name) for u in spec.upstreams), name
    assert {n: s.upstreams for n, s in svc.SERVICES.items()} == {
        "pg": (),
        "rest": ("pg",),
        "auth": ("pg",),
        "storage": ("pg",),
        "meta": ("pg",),
        "studio": ("meta",),
        "kong": ("rest", "auth", "storage", "meta", "studio"),
    }


def test_kong_waits_for_studio_only_when_it_exists() -> None:
    assert "studio" in svc.enabled_upstreams(_cfg(), "kong")
    assert svc.enabled_upstreams(_cfg(studio=False), "kong") == ("rest", "auth", "storage", "meta")


def test_unknown_service() -> None:
    with pytest.raises(ValueError, match="unknown service 'redis'"):
        svc.public_env(_cfg(), "redis")


@pytest.mark.parametrize("name", naming.SERVICES)
def test_each_app_gets_exactly_its_secrets(name: str) -> None:
    cfg = _cfg()
    secret = secret_env(cfg, name, SECRETS)
    public = svc.public_env(cfg, name)
    assert set(secret) == EXPECTED_SECRET_NAMES[name]
    assert not set(secret) & set(public)
    assert all(isinstance(v, str) for v in public.values())
    for value in SECRETS.values():
        assert all(value not in v for v in public.values()), (name, value)


SMTP = {
    "host": "smtp.postmarkapp.com",
    "port": 2525,
    "user": "apikey",
    "adminEmail": "dev@acme.dev",
    "senderName": "Acme dev",
}


def test_auth_without_smtp_confirms_sign_ups_itself_and_gets_no_smtp_settings() -> None:
    env = svc.public_env(_cfg(), "auth")
    assert env["GOTRUE_MAILER_AUTOCONFIRM"] == "true"
    assert not [k for k in env if k.startswith("GOTRUE_SMTP_")]
    assert "GOTRUE_SMTP_PASS" not in secret_env(_cfg(), "auth", SECRETS)


def test_auth_with_smtp_sends_mail_and_its_password_is_a_fly_secret_only() -> None:
    cfg = _cfg(smtp=SMTP)
    secrets = svc.SiloSecrets(**{**SECRETS.__dict__, "smtp_password": "SmtpPassw0rdValue"})
    env = svc.public_env(cfg, "auth")
    assert (env["GOTRUE_SMTP_HOST"], env["GOTRUE_SMTP_PORT"], env["GOTRUE_SMTP_USER"]) == (
        "smtp.postmarkapp.com",
        "2525",
        "apikey",
    )
    assert (env["GOTRUE_SMTP_ADMIN_EMAIL"], env["GOTRUE_SMTP_SENDER_NAME"]) == ("dev@acme.dev", "Acme dev")
    assert env["GOTRUE_MAILER_AUTOCONFIRM"] == "false"  # sign-ups confirm their address by mail
    assert secret_env(cfg, "auth", secrets)["GOTRUE_SMTP_PASS"] == "SmtpPassw0rdValue"
    assert "SmtpPassw0rdValue" not in render_fly_toml(cfg, "auth")
    assert "SmtpPassw0rdValue" in secrets.values() and "SmtpPassw0rdValue" not in repr(secrets)


def test_studio_has_a_writable_snippets_folder_off_the_volume() -> None:
    # Studio's SQL editor saves snippets under SNIPPETS_MANAGEMENT_FOLDER (supabase/supabase:docker/
    # docker-compose.yml); the studio app has no volume, so they are not kept across restarts (README).
    folder = svc.public_env(_cfg(), "studio")["SNIPPETS_MANAGEMENT_FOLDER"]
    assert folder.startswith("/tmp/") and svc.SERVICES["studio"].volume is None


def test_database_urls_are_secrets_on_flycast_with_the_right_roles() -> None:
    cfg = _cfg()
    urls = {
        "authenticator": secret_env(cfg, "rest", SECRETS)["PGRST_DB_URI"],
        "supabase_auth_admin": secret_env(cfg, "auth", SECRETS)["GOTRUE_DB_DATABASE_URL"],
        "supabase_storage_admin": secret_env(cfg, "storage", SECRETS)["DATABASE_URL"],
    }
    for user, url in urls.items():
        parts = urlsplit(url)
        assert (parts.scheme, parts.username, parts.password) == ("postgres", user, SECRETS.postgres_password)
        assert (parts.hostname, parts.port, parts.path) == ("devenv-acme-erp-pg.flycast", 5432, "/postgres")


def test_public_urls_are_kong_and_upstreams_are_flycast() -> None:
    cfg = _cfg()
    kong = "https://devenv-acme-erp-kong.fly.dev"
    auth, storage, studio = (svc.public_env(cfg, n) for n in ("auth", "storage", "studio"))
    assert auth["API_EXTERNAL_URL"] == kong
    assert auth["GOTRUE_SITE_URL"] == "https://erp.acme.dev"
    assert auth["GOTRUE_URI_ALLOW_LIST"].split(",")[0] == "https://erp.acme.dev"
    assert storage["STORAGE_PUBLIC_URL"] == kong and studio["SUPABASE_PUBLIC_URL"] == kong
    assert storage["REQUEST_ALLOW_X_FORWARDED_PATH"] == "true"
    assert storage["POSTGREST_URL"] == "http://devenv-acme-erp-rest.flycast:3000"
    assert studio["STUDIO_PG_META_URL"] == "http://devenv-acme-erp-meta.flycast:8080"
    assert studio["ENABLED_FEATURES_LOGS_ALL"] == "false"
    assert svc.public_env(cfg, "meta")["PG_META_DB_HOST"] == "devenv-acme-erp-pg.flycast"


def test_every_server_binds_ipv4_and_ipv6() -> None:
    cfg = _cfg()
    binds = {
        "rest": "PGRST_SERVER_HOST",
        "auth": "GOTRUE_API_HOST",
        "storage": "SERVER_HOST",
        "meta": "PG_META_HOST",
        "studio": "HOSTNAME",
    }
    for name, key in binds.items():
        assert svc.public_env(cfg, name)[key] == "::", name
    kong = svc.public_env(cfg, "kong")
    assert "0.0.0.0:8000" in kong["KONG_PROXY_LISTEN"] and "[::]:8000" in kong["KONG_PROXY_LISTEN"]
    assert f"0.0.0.0:{svc.KONG_STATUS_PORT}" in kong["KONG_STATUS_LISTEN"]
    assert "AAAA" in kong["KONG_DNS_ORDER"].split(",")
    rest = svc.public_env(cfg, "rest")
    assert rest["PGRST_ADMIN_SERVER_PORT"] != rest["PGRST_SERVER_PORT"]


def test_kong_secret_is_the_full_kong_yml_base64() -> None:
    encoded = secret_env(_cfg(), "kong", SECRETS)[svc.KONG_YML_SECRET]
    doc = yaml.safe_load(base64.b64decode(encoded))
    keys = {c["username"]: c.get("keyauth_credentials") for c in doc["consumers"]}
    assert keys["anon"] == [{"key": SECRETS.anon_key}]
    assert keys["service_role"] == [{"key": SECRETS.service_role_key}]
    assert doc["basicauth_credentials"] == [
        {"consumer": "DASHBOARD", "username": "supabase", "password": SECRETS.dashboard_password}
    ]


def test_secrets_never_show_in_repr() -> None:
    assert all(value not in repr(SECRETS) for value in SECRETS.values())


# -- the pg app's init SQL and pg_hba on a real PostgreSQL --------------------------------------------------

SERVICE_ROLES = ("supabase_admin", "authenticator", "pgbouncer", "supabase_auth_admin", "supabase_storage_admin")


@pytest.fixture(scope="module")
def supabase_like_server() -> Iterator[PostgresServer]:
    """A private server with the login roles supabase/postgres creates, before our init SQL runs."""
    root = Path(tempfile.mkdtemp(prefix="silo-pg-init-"))
    server = PostgresServer(bindir=find_bindir(), root=root, user=_os_user())
    server.start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            for role in SERVICE_ROLES:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute("ALTER ROLE supabase_admin SUPERUSER")  # as in supabase/postgres
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _restart_with_our_hba(server: PostgresServer, cfg: SiloConfig | None = None, also_listen: str = "") -> None:
    """Restart the way the pg app runs: -c hba_file=<our pg_hba.conf>, listening on IPv4 and IPv6."""
    hba = server.root / "pg_hba.conf"
    hba.write_text(pg_files(cfg or _cfg())[svc.PG_HBA_PATH])
    if server.user is not None:
        os.chown(hba, server.user.pw_uid, server.user.pw_gid)
    listen = ",".join(a for a in ("127.0.0.1", "::1", also_listen) if a)
    options = (
        f"-c listen_addresses={listen} -c port={server.port} -c unix_socket_directories={server.root} -c hba_file={hba}"
    )
    result = server._run(
        str(server.bindir / "pg_ctl"),
        "-D",
        str(server.data),
        "-l",
        str(server.log),
        "-o",
        options,
        "-w",
        "-t",
        "60",
        "-m",
        "fast",
        "restart",
    )
    assert result.returncode == 0, result.stderr + server.log.read_text()


def _psql(server: PostgresServer, sql_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(server.bindir / "psql"),
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-f",
            str(sql_file),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


@pytest.mark.db
def test_init_sql_and_pg_hba_on_a_real_postgres(supabase_like_server: PostgresServer, tmp_path: Path) -> None:
    server = supabase_like_server
    password = SECRETS.postgres_password
    env = {**secret_env(_cfg(), "pg", SECRETS), **svc.public_env(_cfg(), "pg")}
    for name in ("roles.sql", "jwt.sql"):
        text = pg_files(_cfg())[f"{svc.PG_INITDB_DIR}/99-jwt.sql" if name == "jwt.sql" else svc.ROLES_SQL_PATH]
        assert password not in text and SECRETS.jwt_secret not in text
        path = tmp_path / name
        path.write_text(text)
        result = _psql(server, path, {k: env[k] for k in ("POSTGRES_PASSWORD", "JWT_EXP")})
        assert result.returncode == 0, result.stderr

    _restart_with_our_hba(server)
    local = f"host={server.root} port={server.port} dbname=postgres user=postgres"
    with psycopg.connect(local, autocommit=True) as conn:  # the Unix socket stays trusted (in-machine only)
        assert conn.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchone() == (0,)
        rules = conn.execute(
            "SELECT address, netmask, auth_method FROM pg_hba_file_rules WHERE type = 'host'"
        ).fetchall()
    assert ("::", "::", "scram-sha-256") in rules  # ::/0: Fly's private network is IPv6
    assert {method for *_, method in rules} == {"scram-sha-256"}

    for host in ("127.0.0.1", "::1"):
        for role in SERVICE_ROLES:
            dsn = f"host={host} port={server.port} dbname=postgres user={role} connect_timeout=10"
            with psycopg.connect(dsn, password=password) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (role,)
                if role == "authenticator":
                    assert conn.execute("SELECT current_setting('app.settings.jwt_exp')").fetchone() == ("3600",)
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(dsn, password="wrong").close()
        # The superuser gets no trust over TCP any more either.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                f"host={host} port={server.port} dbname=postgres user=postgres connect_timeout=10", password=""
            ).close()


def _boot_roles(server: PostgresServer, env: dict[str, str], tmp_path: Path) -> None:
    """roles.sql as the pg machine runs it at boot: over the local socket, passwords from the env."""
    roles = tmp_path / "roles.sql"
    roles.write_text(pg_files(_cfg())[svc.ROLES_SQL_PATH])
    result = subprocess.run(
        [
            str(server.bindir / "psql"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(server.root),
            "-p",
            str(server.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-f",
            str(roles),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _role_sync_script(roles_sql: Path) -> str:
    """The role-password sync script the pg machine gets, with the init SQL's path pointed at `roles_sql`."""
    doc = tomllib.loads(render_fly_toml(_cfg(), "pg"))
    files = {f["guest_path"]: f["raw_value"] for f in doc["files"]}
    # The start command runs it in the background before handing over to the image's entrypoint.
    assert f"bash {svc.ROLE_SYNC_PATH} &" in doc["processes"]["app"]
    return files[svc.ROLE_SYNC_PATH].replace(svc.ROLES_SQL_PATH, str(roles_sql))


def _run_role_sync(server: PostgresServer, tmp_path: Path, password: str, tries: int) -> subprocess.CompletedProcess:
    roles = tmp_path / "roles.sql"
    roles.write_text(pg_files(_cfg())[svc.ROLES_SQL_PATH])
    script = tmp_path / "role-sync.sh"
    script.write_text(_role_sync_script(roles))
    env = {
        **os.environ,
        **svc.public_env(_cfg(), "pg"),
        "PATH": f"{server.bindir}:{os.environ['PATH']}",
        "POSTGRES_HOST": str(server.root),  # the server's socket directory stands in for /var/run/postgresql
        "PGPORT": str(server.port),
        "POSTGRES_PASSWORD": password,
        # Fewer, quicker attempts than on a machine (120 every 2 s): the outcome is the same.
        "SILO_ROLE_SYNC_TRIES": str(tries),
        "SILO_ROLE_SYNC_DELAY_S": "0",
    }
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, check=False, timeout=120)


@pytest.mark.db
def test_boot_reapplies_a_rotated_password(supabase_like_server: PostgresServer, tmp_path: Path) -> None:
    # What the pg start command runs on every boot over the trusted local socket: roles.sql again.
    server = supabase_like_server
    _restart_with_our_hba(server)  # passwords are checked over TCP (scram), as on Fly
    for password in ("FirstPassw0rd", "RotatedPassw0rd"):
        result = _run_role_sync(server, tmp_path, password, tries=3)
        assert result.returncode == 0, result.stderr
        assert "role passwords applied" in result.stdout
    dsn = f"host=127.0.0.1 port={server.port} dbname=postgres user=authenticator connect_timeout=10"
    with psycopg.connect(dsn, password="RotatedPassw0rd") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("authenticator",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, password="FirstPassw0rd").close()


@pytest.mark.db
def test_role_sync_that_never_succeeds_says_why_in_the_machine_log(
    supabase_like_server: PostgresServer, tmp_path: Path
) -> None:
    # supabase_admin without superuser cannot ALTER the postgres superuser: every attempt fails.
    local = f"host={supabase_like_server.root} port={supabase_like_server.port} dbname=postgres user=postgres"
    with psycopg.connect(local, autocommit=True) as conn:
        conn.execute("ALTER ROLE supabase_admin NOSUPERUSER")
    password = "NeverShownPassw0rd"
    try:
        result = _run_role_sync(supabase_like_server, tmp_path, password, tries=2)
    finally:
        # The server is shared by the module: later tests (the RLS SQL runs as supabase_admin) need it back.
        with psycopg.connect(local, autocommit=True) as conn:
            conn.execute("ALTER ROLE supabase_admin SUPERUSER")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "could not re-apply the role passwords" in line]
    assert len(lines) == 1, result.stderr
    assert "after 2 attempts" in lines[0] and "ERROR" in lines[0] and "superuser" in lines[0]
    assert password not in result.stderr + result.stdout


def test_password_with_url_characters_stays_one_password() -> None:
    odd = svc.SiloSecrets(**{**SECRETS.__dict__, "postgres_password": "p@ss:w/rd#1"})
    url = secret_env(_cfg(), "rest", odd)["PGRST_DB_URI"]
    params = psycopg.conninfo.conninfo_to_dict(url)
    assert params["password"] == "p@ss:w/rd#1" and params["host"] == "devenv-acme-erp-pg.flycast"


# -- sign-up and proxies (issue 11) --------------------------------------------------------------------------
def _machine_env(cfg: SiloConfig, service: str) -> dict[str, str]:
    from components.providers.fly import flytoml
    from components.render.files import render_fly_toml

    return flytoml.to_machine_config(flytoml.parse(render_fly_toml(cfg, service)), image="x:1")["env"]


def test_sign_up_is_closed_unless_silo_auth_signup() -> None:
    from components.config.model import from_mapping

    base = {"silo:client": "acme", "silo:app": "erp", "silo:flyOrg": "acme", "silo:siteUrl": "https://erp.acme.dev"}
    closed = from_mapping(base)
    assert closed.auth_signup is False
    assert _machine_env(closed, "auth")["GOTRUE_DISABLE_SIGNUP"] == "true"
    opened = from_mapping({**base, "silo:authSignup": "true"})
    assert _machine_env(opened, "auth")["GOTRUE_DISABLE_SIGNUP"] == "false"
    with pytest.raises(Exception, match=r"silo:authSignup: must be true or false"):
        from_mapping({**base, "silo:authSignup": "yes"})


def test_kong_trusts_forwarded_headers_only_from_fly_proxy() -> None:
    import ipaddress

    trusted = [ipaddress.ip_network(n.strip()) for n in svc.public_env(_cfg(), "kong")["KONG_TRUSTED_IPS"].split(",")]

    def is_trusted(address: str) -> bool:
        return any(ipaddress.ip_address(address) in net for net in trusted)

    # Fly Proxy reaches the machine over its private IPv4 (public and Flycast traffic alike).
    assert is_trusted("172.16.5.186") and is_trusted("172.19.132.35")
    # A machine on the private network (6PN is IPv6) or anyone on the internet can set X-Forwarded-For
    # to whatever it likes: Kong must not believe it.
    for spoofer in ("fdaa:0:18:a7b:7d:f066:b83b:2", "2a09:8280:1::1", "66.241.124.11", "8.8.8.8", "::1"):
        assert not is_trusted(spoofer), spoofer


# -- what runs on the pg machine, run for real (issue 11) -----------------------------------------------------
def _machine_run(
    server: PostgresServer, cfg: SiloConfig, secrets: svc.SiloSecrets, command: list[str]
) -> subprocess.CompletedProcess[str]:
    """``command`` with the pg machine's environment (its [env] and Fly secrets); the test server's port
    stands in for the machine's PGPORT, and its psql for the image's."""
    env = {
        **svc.public_env(cfg, "pg"),
        **secret_env(cfg, "pg", secrets),
        "PGPORT": str(server.port),
        "PATH": f"{server.bindir}:{os.environ['PATH']}",
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


@pytest.mark.db
def test_the_rls_command_flyexec_runs_works_on_the_pg_machine(
    supabase_like_server: PostgresServer, silo_mocks: RecordingMocks, tmp_path: Path
) -> None:
    server = supabase_like_server
    cfg = _cfg(rls_mode="permissive", studio=False)
    declare_silo(cfg)
    [rls] = silo_mocks.of_type("Exec")
    command = rls.inputs["command"]  # exactly what FlyExec sends to the machine's exec endpoint
    assert SECRETS.postgres_password not in repr(command)

    _boot_roles(server, secret_env(cfg, "pg", SECRETS), tmp_path)
    _restart_with_our_hba(server, cfg)  # TCP logins need the password, as on Fly
    local = f"host={server.root} port={server.port} dbname=postgres user=postgres"
    with psycopg.connect(local, autocommit=True) as conn:
        for role in ("anon", "authenticated", "service_role"):
            if conn.execute("SELECT to_regrole(%s)", (role,)).fetchone() == (None,):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute("DROP TABLE IF EXISTS public.rls_probe")
        conn.execute("CREATE TABLE public.rls_probe (id int)")

    result = _machine_run(server, cfg, SECRETS, command)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(local, autocommit=True) as conn:
        assert conn.execute(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.rls_probe'::regclass"
        ).fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE tablename = 'rls_probe'").fetchone() == (1,)

    # A failing statement fails the command, so FlyExec reports it instead of recording success.
    failed = _machine_run(server, cfg, SECRETS, psql_command("SELECT 1/0"))
    assert failed.returncode != 0 and "division by zero" in failed.stderr


def _non_loopback_address() -> str | None:
    """This host's own address on its outbound interface (no packet is sent), if it has one."""
    import ipaddress
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route lookup happens
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.db
def test_public_postgres_admits_only_its_own_login_from_outside(
    supabase_like_server: PostgresServer, tmp_path: Path
) -> None:
    """With silo:pgPublic, anything not from loopback or 6PN came through Fly Proxy from the internet."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    server = supabase_like_server
    cfg = _cfg(pg_public=True)
    secrets = svc.SiloSecrets(**{**SECRETS.__dict__, "public_db_password": "PublicPassw0rdValue"})
    env = secret_env(cfg, "pg", secrets)
    assert env[svc.PUBLIC_DB_PASSWORD_SECRET] == "PublicPassw0rdValue"
    _boot_roles(server, env, tmp_path)
    _restart_with_our_hba(server, cfg, also_listen=address)

    def login(host: str, user: str, password: str) -> str:
        dsn = f"host={host} port={server.port} dbname=postgres user={user} connect_timeout=10"
        with psycopg.connect(dsn, password=password) as conn:
            return conn.execute("SELECT current_user").fetchone()[0]

    for superuser in ("postgres", "supabase_admin", *SERVICE_ROLES):
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
            login(address, superuser, SECRETS.postgres_password)
    assert login(address, svc.PUBLIC_DB_ROLE, "PublicPassw0rdValue") == svc.PUBLIC_DB_ROLE
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        login(address, svc.PUBLIC_DB_ROLE, SECRETS.postgres_password)  # the shared password does not open it
    # Inside the machine (FlyExec's psql, the boot scripts) nothing changes.
    assert login("127.0.0.1", "supabase_admin", SECRETS.postgres_password) == "supabase_admin"

    # A private silo has no public path: its boundary is the silo's own Fly network.
    _boot_roles(server, secret_env(_cfg(), "pg", SECRETS), tmp_path)
    _restart_with_our_hba(server, _cfg(), also_listen=address)
    assert login(address, "postgres", SECRETS.postgres_password) == "postgres"
    with pytest.raises(psycopg.OperationalError):
        login(address, svc.PUBLIC_DB_ROLE, "PublicPassw0rdValue")  # turned off with pgPublic


# -- the pg app's start command on a real PostgreSQL ---------------------------------------------------------


def _rendered_pg_server_argv() -> list[str]:
    """The postgres argv the pg app runs, read back from the rendered fly.toml's [processes] command."""
    command = tomllib.loads(render_fly_toml(_cfg(), "pg"))["processes"]["app"]
    outer = shlex.split(command)
    assert outer[:2] == ["bash", "-c"], command
    _, found, server = outer[2].partition("exec docker-entrypoint.sh ")
    assert found, outer[2]
    return shlex.split(server)


def _relocate(argv: list[str], root: Path) -> list[str]:
    """The same argv with every absolute path in a `-c name=/path` moved under `root` (a stand-in for /)."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(f"{name}={root}{value}" if eq and value.startswith("/") else arg)
    return out


@pytest.mark.db
def test_postgres_starts_on_the_volume_although_the_image_config_pins_another_data_directory() -> None:
    """supabase/postgres's postgresql.conf pins data_directory = '/var/lib/postgresql/data'
    (supabase/postgres:ansible/files/postgresql_config/postgresql.conf.j2, FILE LOCATIONS); the entrypoint's
    initdb fills PGDATA on the volume. The exact server command line we render must start on PGDATA."""
    bindir, user = find_bindir(), _os_user()
    # Not under pytest's tmp_path: the server's OS user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="silo-pg-start-"))
    try:
        _start_with_the_rendered_command_line(bindir, user, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start_with_the_rendered_command_line(bindir: Path, user, root: Path) -> None:
    argv = _rendered_pg_server_argv()
    assert argv[0] == "postgres"
    pgdata = root / svc.PGDATA.lstrip("/")
    config = root / svc.PG_CONFIG_FILE.lstrip("/")
    config.parent.mkdir(parents=True)
    (root / "run").mkdir()
    port = _free_port()
    # The image's FILE LOCATIONS block, relocated under root, plus where this test may listen.
    config.write_text(
        f"data_directory = '{root}/var/lib/postgresql/data'\n"
        f"hba_file = '{root}/etc/postgresql/pg_hba.conf'\n"
        f"ident_file = '{root}/etc/postgresql/pg_ident.conf'\n"
        f"listen_addresses = ''\nport = {port}\nunix_socket_directories = '{root}/run'\n"
    )
    (config.parent / "pg_hba.conf").write_text(pg_files(_cfg())[svc.PG_HBA_PATH])
    (config.parent / "pg_ident.conf").write_text("")
    run_as: dict = {}
    if user is not None:
        run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        for path in [root, *sorted(root.rglob("*"))]:
            os.chown(path, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(pgdata.parent, user.pw_uid, user.pw_gid)
    initdb = subprocess.run(
        [str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        **run_as,
    )
    assert initdb.returncode == 0, initdb.stderr

    server = subprocess.Popen(
        [str(bindir / "postgres"), *_relocate(argv[1:], root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=root,
        **run_as,
    )
    try:
        dsn = f"host={root}/run port={port} dbname=postgres user=postgres connect_timeout=5"
        data_directory = None
        for _ in range(240):  # bounded: until the server answers or exits
            if server.poll() is not None:
                break
            try:
                with psycopg.connect(dsn) as conn:
                    data_directory = conn.execute("SHOW data_directory").fetchone()[0]
                break
            except psycopg.OperationalError:
                time.sleep(0.25)
        if data_directory is None:
            server.send_signal(signal.SIGINT)
            output = server.communicate(timeout=60)[0]
            pytest.fail(f"postgres did not start with the rendered command line:\n{output}")
        assert data_directory == str(pgdata)
        assert not (root / "var/lib/postgresql/data").exists()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # fast shutdown
            server.communicate(timeout=60)
