"""fly.toml parsing, strict validation, the flyctl-equivalent conversion to a Machine config, and
normalize (the form desired configs and API echoes are compared in)."""

from __future__ import annotations

import base64
import copy
import json
import shlex

import pytest

from components.config.model import SiloConfig
from components.domain import naming
from components.domain import services as svc
from components.domain.catalog import load_catalog
from components.providers.fly import flytoml
from components.render.files import pg_files, render_fly_toml

# The fly.toml examples of seed 004 (docs "Fly.io Dev-Environment Architecture"), copied verbatim.
# test_seed_* below shows what is wrong with them (flyctl internal/appconfig, TOML 1.0).
SEED_KONG = """\
app = "devenv-acme-erp-kong"
primary_region = "yul"

[build]
  image = "kong:3.4"

[env]
  KONG_PROXY_ACCESS_LOG = "/dev/stdout"
  KONG_ADMIN_ACCESS_LOG = "/dev/stdout"
  KONG_PROXY_ERROR_LOG = "/dev/stderr"
  KONG_ADMIN_ERROR_LOG = "/dev/stderr"
  KONG_LOG_LEVEL = "notice"

[services]
  [[services.ports]]
    handlers = ["http"]
    port = 80
    force_https = true

  [[services.ports]]
    handlers = ["tls", "http"]
    port = 443

  [[services.tcp_checks]]
    interval = "10s"
    timeout = "5s"
    grace_period = "30s"

[processes]
  api = "kong start -c /etc/kong/kong.conf"

[mounts]
  source = "kong_data"
  destination = "/usr/local/kong/data"

[build.args]
  KONG_PLUGINS = "cors,key-auth,jwt,rate-limiting"

[autoscaling]
  max_machines = 3
  min_machines = 1
  policies = [
    {
      type = "cpu_percentage_avg"
      threshold = 80
      scale_down_threshold = 20
    }
  ]

[env]
  auto_stop_machines = true
  auto_start_machines = true
  min_machines_running = 1
"""

SEED_PG = """\
app = "devenv-acme-erp-pg"
primary_region = "yul"

[build]
  image = "supabase/postgres:15.1.1.78"

[services]
  [[services.ports]]
    internal_port = 5432
    external_port = 5432
    protocol = "tcp"

  [[services.tcp_checks]]
    interval = "10s"
    timeout = "5s"
    grace_period = "30s"

[mounts]
  source = "postgres_data"
  destination = "/var/lib/postgresql/data"

[env]
  POSTGRES_PASSWORD = "secure_password_here"
  POSTGRES_DB = "postgres"
  auto_stop_machines = true
  auto_start_machines = true
  min_machines_running = 1
"""

SEED_REST = """\
app = "devenv-acme-erp-rest"
primary_region = "yul"

[build]
  image = "postgrest/postgrest:v12.0.1"

[services]
  [[services.ports]]
    handlers = ["http"]
    port = 80
    force_https = true

  [[services.ports]]
    handlers = ["tls", "http"]
    port = 443

[env]
  PGRST_DB_URI = "postgres://postgres:password@devenv-acme-erp-pg.fly.dev:5432/postgres"
  PGRST_DB_SCHEMA = "public"
  PGRST_DB_ANON_ROLE = "anon"
  auto_stop_machines = true
  auto_start_machines = true
  min_machines_running = 1
"""

SEED_AUTH = """\
app = "devenv-acme-erp-auth"
primary_region = "yul"

[build]
  image = "supabase/gotrue:v2.143.0"

[services]
  [[services.ports]]
    internal_port = 9999
    external_port = 9999
    protocol = "http"

[env]
  GOTRUE_JWT_SECRET = "super_secret_jwt_key_min_32_chars_long"
  GOTRUE_DB_DRIVER = "postgres"
  DATABASE_URL = "postgres://postgres:password@devenv-acme-erp-pg.fly.dev:5432/postgres"
  GOTRUE_SITE_URL = "https://silo-acme-erp--prod.netlify.app"
  GOTRUE_URI_ALLOW_LIST = "https://silo-acme-erp--prod.netlify.app,https://localhost:3000"
  auto_stop_machines = true
  auto_start_machines = true
  min_machines_running = 1
"""


def _cfg(**overrides: object) -> SiloConfig:
    return SiloConfig(
        **{"client": "acme", "app": "erp", "fly_org": "acme", "site_url": "https://erp.acme.dev", **overrides}
    )


# -- the seed's templates -----------------------------------------------------------------------------


def test_seed_kong_example_is_not_even_toml() -> None:
    # The multi-line inline table under [autoscaling] and the second [env] are both TOML 1.0 errors.
    with pytest.raises(ValueError, match=r"not valid TOML 1\.0"):
        flytoml.parse(SEED_KONG)


def test_seed_kong_second_env_table_fails_parsing() -> None:
    # Even with the [autoscaling] inline table written legally, defining [env] twice stays invalid.
    legal_policies = SEED_KONG.replace(
        """policies = [
    {
      type = "cpu_percentage_avg"
      threshold = 80
      scale_down_threshold = 20
    }
  ]""",
        'policies = [{ type = "cpu_percentage_avg", threshold = 80, scale_down_threshold = 20 }]',
    )
    assert legal_policies != SEED_KONG
    with pytest.raises(ValueError, match=r"env"):
        flytoml.parse(legal_policies)


def test_seed_kong_example_rejected_for_autoscaling_build_args_and_services() -> None:
    # Make it parse (inline table on one line, second [env] dropped) to see what validate says.
    text = SEED_KONG.replace(
        """policies = [
    {
      type = "cpu_percentage_avg"
      threshold = 80
      scale_down_threshold = 20
    }
  ]""",
        'policies = [{ type = "cpu_percentage_avg", threshold = 80, scale_down_threshold = 20 }]',
    ).replace("[env]\n  auto_stop_machines = true\n  auto_start_machines = true\n  min_machines_running = 1\n", "")
    problems = flytoml.validate(flytoml.parse(text))
    assert any(p.startswith("[autoscaling]: not a fly.toml section") for p in problems)
    assert any(p.startswith("[build.args]: ignored when [build] image is set") for p in problems)
    assert any(p.startswith("[services]: must be an array of tables") for p in problems)


@pytest.mark.parametrize("text", [SEED_PG, SEED_REST, SEED_AUTH], ids=["pg", "rest", "auth"])
def test_seed_service_examples_put_settings_and_secrets_in_env(text: str) -> None:
    problems = flytoml.validate(flytoml.parse(text))
    for setting in ("auto_stop_machines", "auto_start_machines", "min_machines_running"):
        assert any(p.startswith(f"[env].{setting}: a service setting") for p in problems), setting
    assert any(p.startswith("[services]: must be an array of tables") for p in problems)


def test_seed_examples_name_their_plaintext_secrets() -> None:
    secrets = {
        "pg": (SEED_PG, ["POSTGRES_PASSWORD"]),
        "rest": (SEED_REST, ["PGRST_DB_URI"]),
        "auth": (SEED_AUTH, ["GOTRUE_JWT_SECRET", "DATABASE_URL"]),
    }
    for text, names in secrets.values():
        problems = flytoml.validate(flytoml.parse(text))
        for name in names:
            assert f"[env].{name}: looks like a secret; set it with Fly secrets, never in fly.toml" in problems


def test_seed_service_ports_use_keys_fly_does_not_know() -> None:
    doc = flytoml.parse(SEED_PG)
    doc["services"] = [doc["services"]]  # as [[services]], to get to the port entries
    problems = flytoml.validate(doc)
    assert any(p.startswith("[[services]][0].ports[0].internal_port: unknown key") for p in problems)
    assert any(p.startswith("[[services]][0].ports[0].external_port: unknown key") for p in problems)
    assert any(p.startswith("[[services]][0].internal_port: required") for p in problems)


# -- validate on its own ----------------------------------------------------------------------------------

GOOD = """\
app = "a"
primary_region = "yul"
[build]
  image = "nginx:1.27"
[env]
  MODE = "dev"
[http_service]
  internal_port = 8080
  auto_stop_machines = "stop"
  auto_start_machines = true
"""


def test_validate_accepts_a_minimal_app() -> None:
    assert flytoml.validate(flytoml.parse(GOOD)) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  PORT = 8080\n", "[env].PORT: values must be strings (got int 8080)"),
        ('  FLY_APP = "x"\n', "[env].FLY_APP: names starting with FLY_ are reserved by Fly"),
        ('  SUPABASE_ANON_KEY = "x"\n', "[env].SUPABASE_ANON_KEY: looks like a secret"),
        ('  GITHUB_TOKEN_FILE = "x"\n', "[env].GITHUB_TOKEN_FILE: looks like a secret"),
        ('  MY_DB_URI = "x"\n', "[env].MY_DB_URI: looks like a secret"),
        ('  DATABASE_URL = "x"\n', "[env].DATABASE_URL: looks like a secret"),
        ('  jwt_secret = "x"\n', "[env].jwt_secret: looks like a secret"),
    ],
)
def test_validate_env_rules_name_the_key(extra: str, message: str) -> None:
    text = GOOD.replace('  MODE = "dev"\n', f'  MODE = "dev"\n{extra}')
    assert any(p.startswith(message) for p in flytoml.validate(flytoml.parse(text)))


def test_validate_service_rules() -> None:
    text = (
        GOOD
        + """
[processes]
  app = "run"
[[services]]
  internal_port = 5432
  protocol = "tcp"
  auto_stop_machines = "sometimes"
  [[services.ports]]
    port = 5432
    handlers = ["postgres"]
  [[services.tcp_checks]]
    interval = "soon"
[checks.x]
  type = "exec"
[[mounts]]
  source = "Bad-Name"
  destination = "data"
[[vm]]
  size = "huge"
[[restart]]
  policy = "sometimes"
[[files]]
  guest_path = "/etc/x"
  raw_value = "a"
  secret_name = "B"
"""
    )
    problems = flytoml.validate(flytoml.parse(text))
    expected = [
        '[[services]][0].auto_stop_machines: must be "off", "stop" or "suspend"',
        "[[services]][0].ports[0].handlers: must be a list of",
        "[[services]][0].tcp_checks[0].interval: not a duration",
        "[[services]][0].processes: required because [processes] is defined",
        "[http_service].processes: required because [processes] is defined",
        '[checks.x].type: must be "tcp" or "http"',
        "[[mounts]][0].source: required, a volume name",
        "[[mounts]][0].destination: required, an absolute path",
        "[[vm]][0].size: unknown size 'huge'",
        "[[restart]][0].policy: must be one of always, never, on-failure",
        "[[files]][0]: exactly one of raw_value, local_path or secret_name is required",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)


def test_validate_rejects_autostop_without_autostart() -> None:
    text = GOOD.replace("auto_start_machines = true", "auto_start_machines = false")
    assert any("autostop without autostart" in p for p in flytoml.validate(flytoml.parse(text)))


# -- durations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("15s", 1, "15s"),
        ("60s", 1, "1m0s"),
        ("1m", 1, "1m0s"),
        ("1h2m3.5s", 1, "1h2m3.5s"),
        ("500ms", 1, "500ms"),
        (10000, 10**6, "10s"),
        (2000, 10**6, "2s"),
        (5, 10**9, "5s"),
        (1500, 10**6, "1.5s"),
        (15_000_000_000, 1, "15s"),
        (15e9, 1, "15s"),
        ("0", 1, "0s"),
    ],
)
def test_durations_come_out_as_go_strings(value: object, unit: int, expected: str) -> None:
    assert flytoml.go_duration(flytoml.parse_duration(value, unit)) == expected


# -- conversion (flyctl's mapping) ------------------------------------------------------------------------

FLYCTL_STYLE = """\
app = "demo"
primary_region = "ams"
kill_signal = "SIGTERM"
kill_timeout = 5

[build]
  image = "demo:1"

[env]
  FOO = "BAR"

[processes]
  app = "bin/server --port 8080 'quoted arg'"
  worker = "bin/worker"

[http_service]
  internal_port = 8080
  force_https = true
  auto_stop_machines = true
  auto_start_machines = true
  min_machines_running = 0
  processes = ["app"]
  [[http_service.checks]]
    interval = "30s"
    timeout = "5s"
    grace_period = "10s"
    method = "GET"
    path = "/"

[[services]]
  internal_port = 9000
  protocol = "tcp"
  processes = ["worker"]
  [[services.ports]]
    port = 9000
  [[services.http_checks]]
    interval = 10000
    grace_period = "5s"
    method = "get"
    path = "/health"
    protocol = "http"
    timeout = 2000
    [services.http_checks.headers]
      X-Forwarded-Proto = "https"
  [[services.tcp_checks]]
    interval = "15s"
    timeout = "2s"

[checks.status]
  type = "http"
  interval = "15s"
  timeout = "10s"
  path = "/status"
  processes = ["app"]

[[mounts]]
  source = "data"
  destination = "/data"

[[vm]]
  size = "shared-cpu-2x"
  memory = "1gb"
  processes = ["app"]

[[vm]]
  size = "performance-1x"
  processes = ["worker"]

[[restart]]
  policy = "never"
  processes = ["worker"]
"""


def test_http_service_becomes_ports_80_and_443_like_flyctl() -> None:
    config = flytoml.to_machine_config(flytoml.parse(FLYCTL_STYLE), volume_id="vol_123")
    assert config["image"] == "demo:1"
    assert config["metadata"] == {"fly_platform_version": "v2", "fly_process_group": "app"}
    assert config["env"] == {"FOO": "BAR", "FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams"}
    assert config["init"] == {"cmd": ["bin/server", "--port", "8080", "quoted arg"]}
    [service] = config["services"]  # the worker's [[services]] is not this group's
    assert service["protocol"] == "tcp" and service["internal_port"] == 8080
    assert service["ports"] == [
        {"port": 80, "handlers": ["http"], "force_https": True},
        {"port": 443, "handlers": ["http", "tls"]},
    ]
    assert (service["autostop"], service["autostart"], service["min_machines_running"]) == ("stop", True, 0)
    assert service["checks"] == [
        {"type": "http", "interval": "30s", "timeout": "5s", "grace_period": "10s", "method": "GET", "path": "/"}
    ]
    # A top-level check without a port uses the http_service's internal port.
    assert config["checks"] == {
        "status": {"type": "http", "port": 8080, "interval": "15s", "timeout": "10s", "path": "/status"}
    }
    assert config["mounts"] == [{"volume": "vol_123", "path": "/data", "name": "data"}]
    assert config["stop_config"] == {"signal": "SIGTERM", "timeout": "5s"}  # integer kill_timeout = seconds
    assert config["guest"] == {"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024}  # memory overrides preset
    assert "restart" not in config  # [[restart]] applies to the worker only


def test_services_checks_headers_and_restart_for_another_process_group() -> None:
    config = flytoml.to_machine_config(flytoml.parse(FLYCTL_STYLE), process_group="worker")
    assert config["metadata"]["fly_process_group"] == "worker"
    assert config["env"]["FLY_PROCESS_GROUP"] == "worker"
    assert config["init"] == {"cmd": ["bin/worker"]}
    [service] = config["services"]
    assert service["ports"] == [{"port": 9000}]
    # Bare integer check durations are milliseconds; headers become [{name, values}].
    assert service["checks"] == [
        {"type": "tcp", "interval": "15s", "timeout": "2s"},
        {
            "type": "http",
            "interval": "10s",
            "timeout": "2s",
            "grace_period": "5s",
            "method": "get",
            "path": "/health",
            "protocol": "http",
            "headers": [{"name": "X-Forwarded-Proto", "values": ["https"]}],
        },
    ]
    assert "checks" not in config
    assert config["guest"] == {"cpu_kind": "performance", "cpus": 1, "memory_mb": 2048}
    assert config["restart"] == {"policy": "no"}  # "never" is "no" in the Machines API


def test_unknown_process_group_is_an_error() -> None:
    with pytest.raises(ValueError, match="no process group 'web'"):
        flytoml.to_machine_config(flytoml.parse(FLYCTL_STYLE), process_group="web")


@pytest.mark.parametrize("studio", [True, False])
def test_every_rendered_service_converts_to_the_expected_machine(studio: bool) -> None:
    cfg = _cfg(studio=studio)
    catalog = load_catalog()
    for name in cfg.services:
        spec = svc.SERVICES[name]
        doc = flytoml.parse(render_fly_toml(cfg, name))
        config = flytoml.to_machine_config(doc, volume_id="vol_abc")
        assert config["image"] == catalog.resolve(name).ref
        assert config["metadata"] == {"fly_platform_version": "v2", "fly_process_group": "app"}
        assert config["env"]["PRIMARY_REGION"] == "yul" and config["env"]["FLY_PROCESS_GROUP"] == "app"
        [service] = config["services"]
        assert service["internal_port"] == spec.port
        assert (service["autostop"], service["autostart"], service["min_machines_running"]) == ("stop", True, 0)
        if spec.public:
            assert [p["port"] for p in service["ports"]] == [80, 443]
            assert service["ports"][0]["force_https"] is True
        else:  # Flycast: the service's own port, raw TCP through Fly Proxy
            assert service["ports"] == [{"port": spec.port}]
        checks = [*service.get("checks", []), *config.get("checks", {}).values()]
        wanted = [spec.check, *(c for _, c in spec.extra_checks)]
        assert sorted((c["type"], c.get("path")) for c in checks) == sorted((c.type, c.path) for c in wanted)
        for check in config.get("checks", {}).values():
            assert check["port"] != spec.port  # only checks on another port are top-level
        if spec.volume:
            assert config["mounts"] == [{"volume": "vol_abc", "path": spec.volume.path, "name": spec.volume.name}]
        else:
            assert "mounts" not in config
        assert config["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": spec.vm.memory_mb}
        assert config["stop_config"]["signal"] == spec.kill_signal
        assert config["restart"] == {"policy": "on-failure", "max_retries": 10}


def test_pg_machine_gets_its_init_files_and_command() -> None:
    config = flytoml.to_machine_config(flytoml.parse(render_fly_toml(_cfg(), "pg")), volume_id="vol_pg")
    files = {f["guest_path"]: base64.b64decode(f["raw_value"]).decode() for f in config["files"]}
    assert files == pg_files(_cfg())
    assert config["init"]["cmd"] == shlex.split(svc.PG_COMMAND)
    assert config["init"]["cmd"][:2] == ["bash", "-c"]
    assert "exec docker-entrypoint.sh postgres" in config["init"]["cmd"][2]


def test_kong_machine_reads_kong_yml_from_a_secret_file() -> None:
    config = flytoml.to_machine_config(flytoml.parse(render_fly_toml(_cfg(), "kong")))
    assert config["files"] == [
        {"guest_path": svc.KONG_DECLARATIVE_CONFIG, "secret_name": svc.KONG_YML_SECRET, "mode": 0o444}
    ]
    assert config["env"]["KONG_DECLARATIVE_CONFIG"] == svc.KONG_DECLARATIVE_CONFIG
    assert config["checks"]["health"] == {
        "type": "http",
        "port": svc.KONG_STATUS_PORT,
        "interval": "15s",
        "timeout": "5s",
        "grace_period": "30s",
        "method": "get",
        "path": "/status",
    }


def test_auto_stop_zero_turns_proxy_autostop_off() -> None:
    config = flytoml.to_machine_config(flytoml.parse(render_fly_toml(_cfg(auto_stop_minutes=0), "rest")))
    assert config["services"][0]["autostop"] == "off"
    assert config["services"][0]["autostart"] is True


# -- normalize --------------------------------------------------------------------------------------------


def _api_echo(desired: dict) -> dict:
    """What the Machines API sends back for ``desired``: booleans for autostop, floats from JSON
    decoders that do not keep ints, durations in other spellings, defaults filled in."""
    echo = json.loads(json.dumps(desired))
    for service in echo.get("services", []):
        service["autostop"] = service["autostop"] == "stop"
        service["internal_port"] = float(service["internal_port"])
        for port in service["ports"]:
            port["port"] = float(port["port"])
            port.setdefault("force_https", False)
        for check in service.get("checks", []):
            check["interval"] = flytoml.parse_duration(check["interval"], 1)  # nanoseconds
            if "grace_period" in check:
                check["grace_period"] = "30000ms" if check["grace_period"] == "30s" else check["grace_period"]
    if "guest" in echo:
        echo["guest"]["memory_mb"] = float(echo["guest"]["memory_mb"])
    echo["stop_config"]["timeout"] = flytoml.parse_duration(echo["stop_config"]["timeout"], 1)
    for mount in echo.get("mounts", []):
        mount.update(encrypted=True, size_gb=10)
    echo.setdefault("restart", {"policy": "on-failure"})
    echo.update(init=echo.get("init", {}), auto_destroy=False, dns={}, statics=[])
    return echo


@pytest.mark.parametrize("name", naming.SERVICES)
def test_normalize_makes_an_api_echo_equal_to_the_desired_config(name: str) -> None:
    desired = flytoml.to_machine_config(flytoml.parse(render_fly_toml(_cfg(), name)), volume_id="vol_1")
    echo = _api_echo(desired)
    assert echo != desired
    assert flytoml.normalize(echo) == flytoml.normalize(desired)


def test_normalize_drops_the_default_restart_policy_only_when_unset() -> None:
    desired = flytoml.to_machine_config(flytoml.parse(GOOD))
    assert "restart" not in desired
    echo = {**copy.deepcopy(desired), "restart": {"policy": "on-failure"}, "init": {}}
    assert flytoml.normalize(echo) == flytoml.normalize(desired)
    always = {**copy.deepcopy(desired), "restart": {"policy": "always"}}
    assert flytoml.normalize(always) != flytoml.normalize(desired)


def test_normalize_still_sees_real_changes() -> None:
    desired = flytoml.to_machine_config(flytoml.parse(render_fly_toml(_cfg(), "auth")))
    base = flytoml.normalize(desired)
    changes = [
        lambda c: c["guest"].update(memory_mb=512),
        lambda c: c["services"][0].update(autostop=False),
        lambda c: c["services"][0]["checks"][0].update(interval="16s"),
        lambda c: c["env"].update(GOTRUE_SITE_URL="https://other.dev"),
        lambda c: c.update(image="supabase/gotrue:v2.185.0"),
    ]
    for change in changes:
        changed = copy.deepcopy(desired)
        change(changed)
        assert flytoml.normalize(changed) != base


def test_parse_rejects_a_table_defined_twice() -> None:
    with pytest.raises(flytoml.FlyTomlError, match="env"):
        flytoml.parse('[env]\nA = "1"\n[env]\nB = "2"\n')


# -- what flyctl does with the rest of [http_service] and [[vm]] ------------------------------------------
HTTP_OPTIONS = """\
app = "web"
[build]
  image = "web:1"
[http_service]
  internal_port = 8080
  force_https = true
  auto_stop_machines = "off"
  auto_start_machines = true
  [http_service.http_options]
    h2_backend = true
    idle_timeout = 600
    [http_service.http_options.response.headers]
      X-Frame-Options = "DENY"
  [http_service.tls_options]
    alpn = ["h2", "http/1.1"]
    versions = ["TLSv1.2", "TLSv1.3"]
"""


def test_http_service_options_go_on_its_ports_as_flyctl_puts_them() -> None:
    # flyctl HTTPService.ToService (internal/appconfig/service.go): http_options on both ports, tls_options on 443.
    doc = flytoml.parse(HTTP_OPTIONS)
    assert flytoml.validate(doc) == []
    [service] = flytoml.to_machine_config(doc)["services"]
    http_options = {"h2_backend": True, "idle_timeout": 600, "response": {"headers": {"X-Frame-Options": "DENY"}}}
    assert service["ports"] == [
        {"port": 80, "handlers": ["http"], "force_https": True, "http_options": http_options},
        {
            "port": 443,
            "handlers": ["http", "tls"],
            "http_options": http_options,
            "tls_options": {"alpn": ["h2", "http/1.1"], "versions": ["TLSv1.2", "TLSv1.3"]},
        },
    ]


def test_http_service_options_are_tables_of_the_keys_fly_knows() -> None:
    bad = HTTP_OPTIONS.replace("h2_backend = true", "h2 = true").replace('alpn = ["h2", "http/1.1"]', "alpns = []")
    problems = flytoml.validate(flytoml.parse(bad))
    assert any(p.startswith("[http_service.http_options].h2: unknown key") for p in problems), problems
    assert any(p.startswith("[http_service.tls_options].alpns: unknown key") for p in problems), problems
    flat = 'app = "web"\n[build]\n  image = "w:1"\n[http_service]\n  internal_port = 80\n  tls_options = "h2"\n'
    assert "[http_service].tls_options: must be a table" in flytoml.validate(flytoml.parse(flat))


@pytest.mark.parametrize(
    ("vm", "guest"),
    [
        # No size: flyctl starts from fly.DefaultVMSize, shared-cpu-1x (fly-go MachinePresets).
        ('memory = "512mb"', {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512}),
        ("cpus = 2", {"cpu_kind": "shared", "cpus": 2, "memory_mb": 256}),
        ('cpu_kind = "performance"', {"cpu_kind": "performance", "cpus": 1, "memory_mb": 256}),
        # A GPU without a size starts from DefaultGPUVMSize, performance-8x.
        ('gpu_kind = "a10"', {"cpu_kind": "performance", "cpus": 8, "memory_mb": 16384, "gpu_kind": "a10"}),
        (
            'size = "a100-40gb"',
            {"cpu_kind": "performance", "cpus": 8, "memory_mb": 32768, "gpu_kind": "a100-pcie-40gb", "gpus": 1},
        ),
        ('size = "shared-cpu-4x"', {"cpu_kind": "shared", "cpus": 4, "memory_mb": 1024}),
    ],
)
def test_a_vm_section_starts_from_flyctls_preset(vm: str, guest: dict) -> None:
    doc = flytoml.parse(f'app = "w"\n[build]\n  image = "w:1"\n[[vm]]\n  {vm}\n')
    assert flytoml.validate(doc) == []
    assert flytoml.to_machine_config(doc)["guest"] == guest


def test_a_vm_size_must_be_one_of_flyctls_presets() -> None:
    # fly-go's SetSize knows only its presets: shared-cpu-3x is refused by flyctl, so here too.
    doc = flytoml.parse('app = "w"\n[build]\n  image = "w:1"\n[[vm]]\n  size = "shared-cpu-3x"\n')
    [problem] = flytoml.validate(doc)
    assert problem.startswith("[[vm]][0].size: unknown size 'shared-cpu-3x'") and "shared-cpu-1x" in problem
    with pytest.raises(flytoml.FlyTomlError, match="shared-cpu-3x"):
        flytoml.to_machine_config(doc)
