"""The Supabase service catalogue: one table of the seven Fly apps of a silo, and their environment.

Each service is one Fly app (``devenv-{client}-{app}-{service}``; the names and their order are
``naming.SERVICES``). This module says where each one listens, how Fly checks it, what it needs before
it starts, and which environment it gets:

- ``public_env(cfg, service)``: non-secret settings, rendered into the fly.toml ``[env]``;
- ``secret_env(cfg, service, secrets)`` (components/render/files.py): the Fly secrets of that app, exactly the
  secret values that service reads in supabase/supabase docker/docker-compose.yml (DB URLs carry the
  password, so they are secrets too), except that Kong gets its fully rendered ``kong.yml`` as one base64
  secret mounted as a file instead of the keys.

Which image a service runs is not here: ``catalog/images.yaml`` (``components.domain.catalog``) holds the
repositories and default tags, so what ``silo render`` shows and what ``up`` deploys come from one file.

Networking rules (Fly docs, Networking > Flycast and Private networking): services reach each other through Flycast
(``http://<app>.flycast:<port>``) so Fly Proxy can wake a stopped machine; everything the browser sees
(``API_EXTERNAL_URL``, ``SUPABASE_PUBLIC_URL``, storage's public URL, GoTrue redirects) is Kong's https
URL. Every server binds a dual-stack address: Fly Proxy (and so Flycast) reaches a machine over its
private IPv4 while 6PN (``.internal``) traffic is IPv6, so binding ``0.0.0.0`` or ``fly-local-6pn``
alone would lose one of the two.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from components.domain import naming

if TYPE_CHECKING:
    from components.config.model import SiloConfig

POSTGRES_DB = "postgres"
JWT_EXPIRY_SECONDS = 3600
PGRST_DB_SCHEMAS = "public,storage,graphql_public"
# Dual-stack wildcard: on Linux an AF_INET6 socket bound to "::" also accepts IPv4 (bindv6only=0).
DUAL_STACK_HOST = "::"
PGRST_ADMIN_PORT = 3001  # PostgREST serves /live and /ready here; it must differ from the API port
KONG_STATUS_PORT = 8100  # KONG_STATUS_LISTEN: /status without exposing the Admin API
KONG_DECLARATIVE_CONFIG = "/home/kong/kong.yml"
KONG_YML_SECRET = "SUPABASE_KONG_YML"  # base64 of the rendered kong.yml; not KONG_* (Kong reads those)
KONG_TRUSTED_IPS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"  # see public_env("kong")
PG_MOUNT = "/data"
PGDATA = "/data/pgdata"
PG_CUSTOM_DIR = "/data/postgresql-custom"  # persisted /etc/postgresql-custom (pgsodium root key)
PG_HBA_PATH = "/etc/postgresql/pg_hba.conf"
# silo:pgPublic: the only role that may log in from outside the silo's private network (pg_hba.conf),
# with its own password: the shared POSTGRES_PASSWORD, which every service holds, never opens it.
PUBLIC_DB_ROLE = "silo_public"
PUBLIC_DB_PASSWORD_SECRET = "SILO_PUBLIC_DB_PASSWORD"
PG_CONFIG_FILE = "/etc/postgresql/postgresql.conf"  # the image's own config file
PG_INITDB_DIR = "/docker-entrypoint-initdb.d/init-scripts"
ROLES_SQL_PATH = f"{PG_INITDB_DIR}/99-roles.sql"
ROLE_SYNC_PATH = "/usr/local/bin/silo-role-sync.sh"  # templates/pg/role-sync.sh, shipped as a machine file
STORAGE_PATH = "/var/lib/storage"
STUDIO_SNIPPETS_DIR = "/tmp/snippets"  # writable by Studio's non-root user; not persisted


@dataclass(frozen=True)
class HealthCheck:
    """A Fly check. ``port=None`` means the service's own port (a routing check in the service
    section); a different port makes it a top-level ``[checks.<name>]`` (which does not affect routing,
    but Fly still reports it on the machine)."""

    type: Literal["tcp", "http"]
    path: str | None = None
    port: int | None = None
    interval: str = "15s"
    timeout: str = "5s"
    grace_period: str = "30s"


@dataclass(frozen=True)
class VolumeSpec:
    name: str  # Fly volume name: [a-z0-9_], at most 30 characters
    size_gb: int
    path: str  # mount point in the machine


@dataclass(frozen=True)
class VmSpec:
    size: str = "shared-cpu-1x"
    memory_mb: int = 256


@dataclass(frozen=True)
class Service:
    name: str
    title: str  # the Service Desk key (seed 004): postgres, postgrest, gotrue, ...
    port: int
    check: HealthCheck
    vm: VmSpec
    volume: VolumeSpec | None = None
    # The services this one sends requests to (Kong routes to them); each is resolved per request.
    upstreams: tuple[str, ...] = ()
    # The services that must be up and passing their checks before this one boots: only those it needs
    # at start-up (GoTrue and Storage run their migrations, PostgREST loads its schema cache). A service
    # that reaches its upstreams per request (Kong, Studio, postgres-meta) boots alongside them.
    boot_after: tuple[str, ...] = ()
    public: bool = False  # only Kong gets public IPs; the rest are Flycast-only
    extra_checks: tuple[tuple[str, HealthCheck], ...] = ()  # top-level [checks.<name>]
    kill_signal: str = "SIGTERM"
    kill_timeout: int = 10  # seconds (fly.toml integer; at most 300)


_SPECS: tuple[Service, ...] = (
    Service(
        name="pg", title="postgres", port=5432,
        check=HealthCheck("tcp"), vm=VmSpec(memory_mb=1024),
        volume=VolumeSpec("pg_data", 10, PG_MOUNT),
        # SIGINT is Postgres's "fast" shutdown (SIGTERM waits for every client to leave).
        kill_signal="SIGINT", kill_timeout=60,
    ),
    Service(
        name="rest", title="postgrest", port=3000,
        check=HealthCheck("tcp"), vm=VmSpec(memory_mb=256), upstreams=("pg",), boot_after=("pg",),
        # /ready is 503 until the pool and schema cache are ready (PostgREST admin server docs).
        extra_checks=(("ready", HealthCheck("http", path="/ready", port=PGRST_ADMIN_PORT)),),
    ),
    Service(
        name="auth", title="gotrue", port=9999,
        check=HealthCheck("http", path="/health"), vm=VmSpec(memory_mb=256), upstreams=("pg",),
        boot_after=("pg",),
    ),
    Service(
        name="storage", title="storage", port=5000,
        check=HealthCheck("http", path="/status"), vm=VmSpec(memory_mb=512), upstreams=("pg",),
        boot_after=("pg",), volume=VolumeSpec("storage_data", 5, STORAGE_PATH),
    ),
    Service(
        name="meta", title="postgres-meta", port=8080,
        check=HealthCheck("tcp"), vm=VmSpec(memory_mb=256), upstreams=("pg",),
    ),
    Service(
        name="studio", title="studio", port=3000,
        check=HealthCheck("http", path="/api/platform/profile", grace_period="60s"),
        vm=VmSpec(memory_mb=1024), upstreams=("meta",),
    ),
    Service(
        name="kong", title="kong", port=8000,
        check=HealthCheck("http", path="/status", port=KONG_STATUS_PORT), vm=VmSpec(memory_mb=512),
        upstreams=("rest", "auth", "storage", "meta", "studio"), public=True,
        kill_signal="SIGQUIT",  # nginx's graceful shutdown (the Kong image's STOPSIGNAL)
    ),
)  # fmt: skip
SERVICES: dict[str, Service] = {spec.name: spec for spec in _SPECS}
# The specs must cover naming.SERVICES, in its order (callers iterate SERVICES as the start order).
if tuple(SERVICES) != naming.SERVICES:
    raise RuntimeError(f"service specs {tuple(SERVICES)} do not match naming.SERVICES {naming.SERVICES}")


@dataclass(frozen=True)
class SiloSecrets:
    """The one secret set of a silo, fanned out to the apps by ``secret_env``. Never repr'd."""

    jwt_secret: str
    postgres_password: str
    dashboard_username: str
    dashboard_password: str
    pg_meta_crypto_key: str
    anon_key: str
    service_role_key: str
    public_db_password: str | None = None  # only with silo:pgPublic
    smtp_password: str | None = None  # the secret silo:smtpPassword (GoTrue's SMTP login), when set

    def __repr__(self) -> str:  # keeps values out of logs and tracebacks
        return "SiloSecrets(<redacted>)"

    def values(self) -> list[str]:
        values = [
            self.jwt_secret, self.postgres_password, self.dashboard_password,
            self.pg_meta_crypto_key, self.anon_key, self.service_role_key,
            *([self.public_db_password] if self.public_db_password else []),
        ]  # fmt: skip
        return [*values, self.smtp_password] if self.smtp_password else values


def service(name: str) -> Service:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r} (expected one of {', '.join(naming.SERVICES)})") from None


def enabled_upstreams(cfg: SiloConfig, name: str) -> tuple[str, ...]:
    """The upstreams of ``name`` that exist in this silo (Studio is optional)."""
    enabled = set(cfg.services)
    return tuple(u for u in service(name).upstreams if u in enabled)


def _url(cfg: SiloConfig, name: str) -> str:
    return cfg.flycast_url(name, SERVICES[name].port)


def db_url(cfg: SiloConfig, user: str, password: str) -> str:
    # Passwords are letters and digits (supabase docs); quote anyway so no character can break the URL.
    return f"postgres://{user}:{quote(password, safe='')}@{cfg.pg_host}:{SERVICES['pg'].port}/{POSTGRES_DB}"


# The postgres server's argv. The image's postgresql.conf pins data_directory = '/var/lib/postgresql/data'
# (supabase/postgres:ansible/files/postgresql_config/postgresql.conf.j2, FILE LOCATIONS), and a
# data_directory in the config file wins over PGDATA and -D, so with PGDATA on the volume the server would
# open an empty image directory and die on every boot. A -c option on the command line outranks the file
# (PostgreSQL docs, "Setting Parameters", §Parameter Interaction via the Shell), so data_directory is
# given here; the entrypoint's initdb and its temporary init server use PGDATA and these same options.
PG_SERVER_ARGS: tuple[str, ...] = (
    "postgres",
    "-c", f"config_file={PG_CONFIG_FILE}",
    "-c", f"data_directory={PGDATA}",
    "-c", f"hba_file={PG_HBA_PATH}",
    "-c", "log_min_messages=fatal",
)  # fmt: skip


def _pg_command() -> str:
    """Postgres start command: persist /etc/postgresql-custom on the one volume, then the stock entrypoint.

    A Fly machine mounts one volume, but supabase/postgres keeps state in two places: PGDATA and
    /etc/postgresql-custom (the pgsodium root key). The volume is mounted at /data; PGDATA points into
    it, and /etc/postgresql-custom becomes a link to a directory on it, seeded from the image once.
    PGDATA is a subdirectory because initdb refuses the volume root (it holds lost+found).
    """
    script = (
        f"set -e; mkdir -p {PG_CUSTOM_DIR}; "
        f'if [ -z "$(ls -A {PG_CUSTOM_DIR})" ]; then cp -a /etc/postgresql-custom/. {PG_CUSTOM_DIR}/; fi; '
        f"chown -R postgres:postgres {PG_CUSTOM_DIR}; "
        f"rm -rf /etc/postgresql-custom; ln -s {PG_CUSTOM_DIR} /etc/postgresql-custom; "
        # Re-apply the role passwords on every boot, in the background while the entrypoint starts the
        # server (templates/pg/role-sync.sh: it logs why when it gives up).
        f"bash {ROLE_SYNC_PATH} & "
        f"exec docker-entrypoint.sh {shlex.join(PG_SERVER_ARGS)}"
    )
    return f"bash -c '{script}'"


PG_COMMAND = _pg_command()


def _smtp_env(cfg: SiloConfig) -> dict[str, str]:
    """GoTrue's SMTP settings (supabase/supabase:docker/docker-compose.yml, auth); the password is a secret."""
    smtp = cfg.smtp
    if smtp is None:
        return {}
    env = {
        "GOTRUE_SMTP_HOST": smtp.host,
        "GOTRUE_SMTP_PORT": str(smtp.port),
        "GOTRUE_SMTP_ADMIN_EMAIL": smtp.admin_email,
        "GOTRUE_SMTP_SENDER_NAME": smtp.sender_name,
    }
    if smtp.user:
        env["GOTRUE_SMTP_USER"] = smtp.user
    return env


def public_env(cfg: SiloConfig, name: str) -> dict[str, str]:
    """Non-secret environment of one service (the fly.toml ``[env]``); never holds a secret."""
    service(name)
    kong = cfg.kong_url
    if name == "pg":
        return {
            "POSTGRES_HOST": "/var/run/postgresql",
            "PGPORT": "5432",
            "POSTGRES_PORT": "5432",
            "PGDATABASE": POSTGRES_DB,
            "POSTGRES_DB": POSTGRES_DB,
            "PGDATA": PGDATA,
            "JWT_EXP": str(JWT_EXPIRY_SECONDS),
        }
    if name == "rest":
        return {
            # "::" with a literal host leaves IPV6_V6ONLY off, so one socket takes IPv4 (Fly Proxy,
            # Flycast) and IPv6 (6PN). Not "*" (PostgREST#3203: no IPv6) and not "!6" (its dual-stack
            # behaviour was PostgREST#3202, removed by the fix in PR #4441) (inference from those issues).
            "PGRST_SERVER_HOST": DUAL_STACK_HOST,
            "PGRST_SERVER_PORT": "3000",
            "PGRST_ADMIN_SERVER_PORT": str(PGRST_ADMIN_PORT),
            "PGRST_DB_SCHEMAS": PGRST_DB_SCHEMAS,
            "PGRST_DB_MAX_ROWS": "1000",
            "PGRST_DB_EXTRA_SEARCH_PATH": "public",
            "PGRST_DB_ANON_ROLE": "anon",
            "PGRST_DB_USE_LEGACY_GUCS": "false",
            "PGRST_APP_SETTINGS_JWT_EXP": str(JWT_EXPIRY_SECONDS),
        }
    if name == "auth":
        verify = "/auth/v1/verify"
        return {
            "GOTRUE_API_HOST": DUAL_STACK_HOST,
            "GOTRUE_API_PORT": "9999",
            # The Kong base URL: GoTrue builds OAuth callbacks and email links from it (supabase/auth#1228).
            "API_EXTERNAL_URL": kong,
            "GOTRUE_DB_DRIVER": "postgres",
            "GOTRUE_SITE_URL": cfg.site_url,
            # The site URL and silo:redirectUrls, each an exact https URL (components/config/model.py).
            "GOTRUE_URI_ALLOW_LIST": ",".join(cfg.uri_allow_list),
            # silo:authSignup (default off): closed sign-up leaves the invite and admin APIs working.
            "GOTRUE_DISABLE_SIGNUP": "false" if cfg.auth_signup else "true",
            "GOTRUE_JWT_ADMIN_ROLES": "service_role",
            "GOTRUE_JWT_AUD": "authenticated",
            "GOTRUE_JWT_DEFAULT_GROUP_NAME": "authenticated",
            "GOTRUE_JWT_EXP": str(JWT_EXPIRY_SECONDS),
            "GOTRUE_EXTERNAL_EMAIL_ENABLED": "true",
            "GOTRUE_EXTERNAL_ANONYMOUS_USERS_ENABLED": "false",
            # Without an SMTP server (silo:smtp) GoTrue cannot send mail: sign-ups are confirmed without
            # it. With one, sign-ups confirm their address by mail, as upstream's default does.
            "GOTRUE_MAILER_AUTOCONFIRM": "false" if cfg.smtp else "true",
            "GOTRUE_MAILER_URLPATHS_INVITE": verify,
            "GOTRUE_MAILER_URLPATHS_CONFIRMATION": verify,
            "GOTRUE_MAILER_URLPATHS_RECOVERY": verify,
            "GOTRUE_MAILER_URLPATHS_EMAIL_CHANGE": verify,
            "GOTRUE_EXTERNAL_PHONE_ENABLED": "false",
            "GOTRUE_SMS_AUTOCONFIRM": "false",
            **_smtp_env(cfg),
        }
    if name == "storage":
        return {
            "SERVER_HOST": DUAL_STACK_HOST,
            "SERVER_PORT": "5000",
            "POSTGREST_URL": _url(cfg, "rest"),
            "STORAGE_PUBLIC_URL": kong,
            # Kong strips /storage/v1; storage rebuilds its public URLs from X-Forwarded-Path.
            "REQUEST_ALLOW_X_FORWARDED_PATH": "true",
            "FILE_SIZE_LIMIT": "52428800",
            # The storage app owns a dedicated volume (Fly docs, Volumes overview: one machine per volume) and
            # image transformation is off, so the file backend needs no shared filesystem.
            "STORAGE_BACKEND": "file",
            "FILE_STORAGE_BACKEND_PATH": STORAGE_PATH,
            "GLOBAL_S3_BUCKET": "stub",
            "TENANT_ID": "stub",
            "REGION": "local",
            "ENABLE_IMAGE_TRANSFORMATION": "false",
        }
    if name == "meta":
        return {
            "PG_META_HOST": DUAL_STACK_HOST,  # postgres-meta PR #353
            "PG_META_PORT": "8080",
            "PG_META_DB_HOST": cfg.pg_host,
            "PG_META_DB_PORT": "5432",
            "PG_META_DB_NAME": POSTGRES_DB,
            "PG_META_DB_USER": "supabase_admin",
        }
    if name == "studio":
        return {
            "HOSTNAME": DUAL_STACK_HOST,
            "STUDIO_PG_META_URL": _url(cfg, "meta"),
            # Without these Studio falls back to host "db" (supabase/supabase#39593).
            "POSTGRES_HOST": cfg.pg_host,
            "POSTGRES_PORT": "5432",
            "POSTGRES_DB": POSTGRES_DB,
            "PGRST_DB_SCHEMAS": PGRST_DB_SCHEMAS,
            "PGRST_DB_MAX_ROWS": "1000",
            "PGRST_DB_EXTRA_SEARCH_PATH": "public",
            "DEFAULT_ORGANIZATION_NAME": cfg.client,
            "DEFAULT_PROJECT_NAME": cfg.app,
            # Kong has no Flycast address (it is the public app), so Studio uses its public URL.
            "SUPABASE_URL": kong,
            "SUPABASE_PUBLIC_URL": kong,
            # No Logflare/Vector in a dev silo (supabase/supabase PR #45327).
            "ENABLED_FEATURES_LOGS_ALL": "false",
            "NEXT_PUBLIC_ENABLE_LOGS": "false",
            # The SQL editor saves snippets here (upstream mounts ./volumes/snippets at /app/snippets). The
            # studio app has no volume, so saved snippets are lost when the machine stops or restarts
            # (autostop included): the README says so; keep SQL worth keeping in the app's migrations.
            "SNIPPETS_MANAGEMENT_FOLDER": STUDIO_SNIPPETS_DIR,
        }
    # kong
    return {
        "KONG_DATABASE": "off",
        "KONG_DECLARATIVE_CONFIG": KONG_DECLARATIVE_CONFIG,
        # Flycast names resolve to IPv6 only (Fly docs, Networking > Flycast; cepro/supabase-host on Fly).
        "KONG_DNS_ORDER": "LAST,AAAA,A,CNAME",
        "KONG_PLUGINS": "request-transformer,cors,key-auth,acl,basic-auth,request-termination,ip-restriction",
        "KONG_NGINX_PROXY_PROXY_BUFFER_SIZE": "160k",
        "KONG_NGINX_PROXY_PROXY_BUFFERS": "64 160k",
        # Kong believes X-Forwarded-* (client IP, proto, host: TUS upload URLs, SupaAutoFly) only from
        # these peers. Fly Proxy, which carries every public request, reaches a machine over its private
        # IPv4 (fly.io/docs/networking/app-services); Fly publishes no fixed proxy address, so the private
        # IPv4 ranges are trusted. Nothing else reaches Kong over IPv4: machine-to-machine traffic (6PN,
        # fdaa::/16) is IPv6 and stays untrusted, so a machine on the network cannot spoof a client IP.
        "KONG_TRUSTED_IPS": KONG_TRUSTED_IPS,
        "KONG_PROXY_LISTEN": "0.0.0.0:8000, [::]:8000",
        "KONG_STATUS_LISTEN": f"0.0.0.0:{KONG_STATUS_PORT}, [::]:{KONG_STATUS_PORT}",
        "KONG_PROXY_ACCESS_LOG": "/dev/stdout",
        "KONG_PROXY_ERROR_LOG": "/dev/stderr",
    }
