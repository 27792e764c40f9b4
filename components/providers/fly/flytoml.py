"""fly.toml: parse, validate like ``fly config validate --strict``, and convert to a Machine config.

The conversion follows flyctl's ``internal/appconfig/machines.go`` / ``service.go``
(``updateMachineConfig``), so a machine created through the API looks to flyctl like one it deployed itself:

- metadata ``fly_platform_version=v2`` and ``fly_process_group``; env gets ``FLY_PROCESS_GROUP`` and
  ``PRIMARY_REGION``;
- ``[http_service]`` becomes one tcp service with ports 80 ``["http"]`` and 443 ``["http", "tls"]``
  (flyctl's order); ``[[services]]`` tcp/http checks become ``services[].checks[]`` with a ``type``;
- check durations written as bare integers are milliseconds, ``kill_timeout`` integers are seconds;
  the output uses Go duration strings ("15s", "1m0s") as the API echoes them;
- ``[[files]] raw_value`` is base64-encoded here, and a ``local_path`` file is read and base64-encoded,
  like flyctl's ``appconfig.File.toMachineFile``, when a reader is given.

``normalize`` puts a desired config and the API's echo of it into one form before they are compared.
"""

from __future__ import annotations

import base64
import copy
import re
import shlex
import tomllib
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from components.domain import naming
from components.errors import UserError

TOP_LEVEL_KEYS = frozenset({
    "app", "primary_region", "kill_signal", "kill_timeout", "swap_size_mb", "console_command",
    "host_dedication_id", "build", "deploy", "env", "processes", "http_service", "services", "checks",
    "files", "mounts", "mount", "vm", "compute", "computes", "restart", "metrics", "statics",
    "machine_checks", "experimental", "machine_config", "container",
})  # fmt: skip
_TABLES = TOP_LEVEL_KEYS - {
    "app", "primary_region", "kill_signal", "kill_timeout", "swap_size_mb", "console_command",
    "host_dedication_id", "machine_config", "container",
}  # fmt: skip
BUILD_KEYS = frozenset({
    "image", "dockerfile", "ignorefile", "build-target", "builder", "buildpacks", "builtin", "args",
    "settings", "compose", "compression", "compression_level",
})  # fmt: skip
DEPLOY_KEYS = frozenset({
    "strategy", "max_unavailable", "wait_timeout", "release_command", "release_command_timeout",
    "release_command_vm", "seed_command",
})  # fmt: skip
HTTP_SERVICE_KEYS = frozenset({
    "internal_port", "force_https", "auto_stop_machines", "auto_start_machines", "min_machines_running",
    "processes", "concurrency", "checks", "tls_options", "http_options", "machine_checks",
})  # fmt: skip
SERVICE_KEYS = frozenset({
    "protocol", "internal_port", "auto_stop_machines", "auto_start_machines", "min_machines_running",
    "ports", "concurrency", "tcp_checks", "http_checks", "machine_checks", "processes",
})  # fmt: skip
PORT_KEYS = frozenset({
    "port", "start_port", "end_port", "handlers", "force_https", "tls_options", "http_options",
    "proxy_proto_options",
})  # fmt: skip
TCP_CHECK_KEYS = frozenset({"interval", "timeout", "grace_period", "restart_limit"})
HTTP_CHECK_KEYS = TCP_CHECK_KEYS | {"method", "path", "protocol", "tls_skip_verify", "tls_server_name", "headers"}
TOP_CHECK_KEYS = HTTP_CHECK_KEYS - {"restart_limit"} | {"port", "type", "processes", "kind"}
MOUNT_KEYS = frozenset({
    "source", "destination", "initial_size", "snapshot_retention", "scheduled_snapshots",
    "auto_extend_size_threshold", "auto_extend_size_increment", "auto_extend_size_limit", "processes",
})  # fmt: skip
VM_KEYS = frozenset({
    "size", "memory", "cpus", "cpu_kind", "memory_mb", "gpus", "gpu_kind", "kernel_args",
    "host_dedication_id", "persist_rootfs", "processes",
})  # fmt: skip
RESTART_KEYS = frozenset({"policy", "retries", "processes"})
FILE_KEYS = frozenset({"guest_path", "local_path", "raw_value", "secret_name", "processes"})
HANDLERS = frozenset({"http", "tls", "proxy_proto", "pg_tls", "edge_http"})
AUTOSTOP_VALUES = ("off", "stop", "suspend")
RESTART_POLICIES = ("always", "never", "on-failure")
DEPLOY_STRATEGIES = ("rolling", "immediate", "canary", "bluegreen")
SIGNALS = ("SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2")
SERVICE_SETTINGS = frozenset(
    {
        "auto_stop_machines",
        "auto_start_machines",
        "min_machines_running",
        "internal_port",
        "force_https",
        "processes",
        "concurrency",
    }
)
MAX_KILL_TIMEOUT_S = 300
# Env names that hold credentials: they belong in Fly secrets, never in fly.toml (the guardrails in
# policy/rules.py use the same rule).
SECRET_ENV_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|DB_URI|DATABASE_URL|(^|_)KEY$|PRIVATE_KEY", re.IGNORECASE)
# fly-go machine_types.go MachinePresets: [[vm]] size → guest; flyctl's computeToGuest starts from
# fly.DefaultVMSize ("shared-cpu-1x") when no size is given, or from DefaultGPUVMSize ("performance-8x")
# when a gpu_kind is (internal/appconfig/machines.go), then lays memory and the guest keys over it.
VM_PRESETS: dict[str, dict[str, Any]] = {
    **{f"shared-cpu-{n}x": {"cpu_kind": "shared", "cpus": n, "memory_mb": n * 256} for n in (1, 2, 4, 6, 8)},
    **{f"performance-{n}x": {"cpu_kind": "performance", "cpus": n, "memory_mb": n * 2048}
       for n in (1, 2, 4, 6, 8, 10, 12, 14, 16)},
    **{size: {"gpu_kind": gpu, "gpus": 1, "cpu_kind": "performance", "cpus": 8, "memory_mb": 16 * 2048}
       for size, gpu in (("a100-40gb", "a100-pcie-40gb"), ("a100-80gb", "a100-sxm4-80gb"), ("l40s", "l40s"),
                         ("a10", "a10"))},
}  # fmt: skip
DEFAULT_VM_SIZE, DEFAULT_GPU_VM_SIZE = "shared-cpu-1x", "performance-8x"
# fly-go machine_types.go TLSOptions and HTTPOptions: what [http_service] puts on its ports.
TLS_OPTION_KEYS = frozenset({"alpn", "versions", "default_self_signed"})
HTTP_OPTION_KEYS = frozenset(
    {"compress", "response", "h2_backend", "idle_timeout", "headers_read_timeout", "replay_cache"}
)
_SIZE = re.compile(r"^\s*(\d+)\s*(gb|g|mb|m)?\s*$", re.IGNORECASE)

NS_PER = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
          "h": 3600 * 10**9}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class FlyTomlError(UserError, ValueError):
    """fly.toml text that is not valid TOML 1.0, or a document that cannot be converted."""


def parse(text: str) -> dict[str, Any]:
    """TOML 1.0 → dict. Raises ``FlyTomlError`` (a ValueError), e.g. for a table defined twice."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FlyTomlError(f"fly.toml is not valid TOML 1.0: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Durations (Go's time.Duration text form)


def parse_duration(value: Any, int_unit_ns: int) -> int:
    """Nanoseconds from a Go duration string ("1m30s") or a number in ``int_unit_ns`` units."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return int(Fraction(value) * int_unit_ns)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body == "0":
        return 0
    total = Fraction(0)
    pos = 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += Fraction(match.group(1)) * NS_PER[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f'not a duration: {value!r} (use Go syntax such as "15s" or "1m30s")')
    return sign * int(total)


def _fraction_text(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: 15s, 1m0s, 1h2m3.5s, 500ms."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < 1000:
        return f"{sign}{u}ns"
    if u < 10**6:
        return f"{sign}{_fraction_text(u, 10**3)}µs"
    if u < 10**9:
        return f"{sign}{_fraction_text(u, 10**6)}ms"
    hours, rest = divmod(u, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    head = f"{hours}h{minutes}m" if hours else (f"{minutes}m" if minutes else "")
    return f"{sign}{head}{_fraction_text(rest, 10**9)}s"


# ---------------------------------------------------------------------------------------------------
# Validation


def _where(section: str, index: int | None = None) -> str:
    return section if index is None else f"{section}[{index}]"


def _unknown(where: str, table: Mapping[str, Any], allowed: frozenset[str]) -> list[str]:
    return [
        f"{where}.{key}: unknown key (flyctl ignores it; allowed: {', '.join(sorted(allowed))})"
        for key in table
        if key not in allowed
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_duration(where: str, value: Any, int_unit_ns: int) -> list[str]:
    try:
        parse_duration(value, int_unit_ns)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    return []


def _check_checks(where: str, checks: Any, kind: str) -> list[str]:
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        return [f"{where}: must be an array of tables ([[{where.split('[')[0]}]])"]
    problems: list[str] = []
    allowed = TCP_CHECK_KEYS if kind == "tcp" else HTTP_CHECK_KEYS
    for i, check in enumerate(checks):
        at = _where(where, i)
        problems += _unknown(at, check, allowed)
        for key in ("interval", "timeout", "grace_period"):
            if key in check:
                problems += _check_duration(f"{at}.{key}", check[key], NS_PER["ms"])
        if kind == "http" and "headers" in check and not isinstance(check["headers"], dict):
            problems.append(f"{at}.headers: must be a table of header = value")
    return problems


def _check_autoscaling_keys(where: str, section: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    stop = section.get("auto_stop_machines")
    if stop is not None and not isinstance(stop, bool) and stop not in AUTOSTOP_VALUES:
        problems.append(f'{where}.auto_stop_machines: must be "off", "stop" or "suspend" (got {stop!r})')
    start = section.get("auto_start_machines")
    if start is not None and not isinstance(start, bool):
        problems.append(f"{where}.auto_start_machines: must be true or false (got {start!r})")
    low = section.get("min_machines_running")
    if low is not None and (not _is_int(low) or low < 0):
        problems.append(f"{where}.min_machines_running: must be a whole number >= 0 (got {low!r})")
    if stop not in (None, False, "off") and start is False:
        problems.append(f"{where}.auto_start_machines: autostop without autostart leaves machines stopped")
    return problems


def _check_processes_ref(where: str, section: Mapping[str, Any], groups: set[str] | None) -> list[str]:
    names = section.get("processes")
    if names is None:
        return [f"{where}.processes: required because [processes] is defined"] if groups else []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return [f"{where}.processes: must be a list of process group names"]
    if groups is not None:
        return [f"{where}.processes: unknown process group {n!r}" for n in names if n not in groups]
    return [f"{where}.processes: names process groups but [processes] is not defined"]


def _validate_env(env: Any) -> list[str]:
    if not isinstance(env, dict):
        return ['[env]: must be a table of NAME = "value"']
    problems: list[str] = []
    for name, value in env.items():
        at = f"[env].{name}"
        if name in SERVICE_SETTINGS:
            problems.append(
                f"{at}: a service setting, not an environment variable; move it to [http_service] or [[services]]"
            )
        elif not isinstance(value, str):
            problems.append(f"{at}: values must be strings (got {type(value).__name__} {value!r})")
        if name.upper().startswith("FLY_"):
            problems.append(f"{at}: names starting with FLY_ are reserved by Fly")
        if SECRET_ENV_NAME.search(name):
            problems.append(f"{at}: looks like a secret; set it with Fly secrets, never in fly.toml")
    return problems


def validate(doc: Mapping[str, Any]) -> list[str]:
    """Problems in a parsed fly.toml, each naming its key. Empty when flyctl would accept it strictly."""
    problems: list[str] = []
    wrong_type = False
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            hint = (
                "; scale with auto_stop_machines/auto_start_machines/min_machines_running in "
                "[http_service] or [[services]]"
                if key == "autoscaling"
                else ""
            )
            problems.append(f"[{key}]: not a fly.toml section (flyctl drops it silently){hint}")
        elif key in _TABLES and not isinstance(doc[key], dict | list):
            problems.append(f"[{key}]: must be a table")
            wrong_type = True
    if wrong_type:  # the checks below assume every section has its shape
        return problems

    if "app" in doc and not isinstance(doc["app"], str):
        problems.append("app: must be a string")
    if "primary_region" in doc and not isinstance(doc["primary_region"], str):
        problems.append("primary_region: must be a string")
    if "kill_signal" in doc and doc["kill_signal"] not in SIGNALS:
        problems.append(f"kill_signal: must be one of {', '.join(SIGNALS)} (got {doc['kill_signal']!r})")
    if "kill_timeout" in doc:
        try:
            timeout = parse_duration(doc["kill_timeout"], NS_PER["s"])
            if not 0 < timeout <= MAX_KILL_TIMEOUT_S * NS_PER["s"]:
                problems.append(f"kill_timeout: must be between 1s and {MAX_KILL_TIMEOUT_S}s")
        except ValueError as exc:
            problems.append(f"kill_timeout: {exc}")

    build = doc.get("build", {})
    if isinstance(build, dict):
        problems += _unknown("[build]", build, BUILD_KEYS)
        if "image" in build and "args" in build:
            problems.append("[build.args]: ignored when [build] image is set (build args only apply to builds)")
    deploy = doc.get("deploy", {})
    if isinstance(deploy, dict):
        problems += _unknown("[deploy]", deploy, DEPLOY_KEYS)
        if "strategy" in deploy and deploy["strategy"] not in DEPLOY_STRATEGIES:
            problems.append(f"[deploy].strategy: must be one of {', '.join(DEPLOY_STRATEGIES)}")

    if "env" in doc:
        problems += _validate_env(doc["env"])

    groups: set[str] | None = None
    if "processes" in doc:
        procs = doc["processes"]
        if not isinstance(procs, dict) or not all(isinstance(v, str) and v.strip() for v in procs.values()):
            problems.append('[processes]: must be a table of group = "command"')
        else:
            groups = set(procs)

    http = doc.get("http_service")
    if isinstance(http, dict):
        problems += _unknown("[http_service]", http, HTTP_SERVICE_KEYS)
        if not _is_int(http.get("internal_port")):
            problems.append("[http_service].internal_port: required, a port number")
        problems += _check_autoscaling_keys("[http_service]", http)
        if "checks" in http:
            problems += _check_checks("[http_service].checks", http["checks"], "http")
        for key, allowed in (("tls_options", TLS_OPTION_KEYS), ("http_options", HTTP_OPTION_KEYS)):
            if key in http:
                if isinstance(http[key], dict):
                    problems += _unknown(f"[http_service.{key}]", http[key], allowed)
                else:
                    problems.append(f"[http_service].{key}: must be a table")
        if groups is not None or "processes" in http:
            problems += _check_processes_ref("[http_service]", http, groups)

    if "services" in doc:
        services = doc["services"]
        if not isinstance(services, list):
            problems.append("[services]: must be an array of tables ([[services]]), one per service")
        else:
            for i, service in enumerate(services):
                problems += _validate_service(_where("[[services]]", i), service, groups)

    checks = doc.get("checks")
    if isinstance(checks, dict):
        for name, check in checks.items():
            at = f"[checks.{name}]"
            if not isinstance(check, dict):
                problems.append(f"{at}: must be a table")
                continue
            problems += _unknown(at, check, TOP_CHECK_KEYS)
            if check.get("type") not in ("tcp", "http"):
                problems.append(f'{at}.type: must be "tcp" or "http"')
            if "port" not in check and not isinstance(http, dict):
                problems.append(f"{at}.port: required (there is no [http_service] port to fall back on)")
            elif "port" in check and not _is_int(check["port"]):
                problems.append(f"{at}.port: must be a port number")
            for key in ("interval", "timeout", "grace_period"):
                if key in check:
                    problems += _check_duration(f"{at}.{key}", check[key], NS_PER["ms"])

    for key in ("mounts", "mount"):
        for i, mount in enumerate(_as_list(doc.get(key, []))):
            at = _where(f"[[{key}]]", i)
            if not isinstance(mount, dict):
                problems.append(f"{at}: must be a table")
                continue
            problems += _unknown(at, mount, MOUNT_KEYS)
            if not isinstance(mount.get("source"), str) or not naming.is_volume_name(mount["source"]):
                problems.append(f"{at}.source: required, a volume name of [a-z0-9_] (at most 30 characters)")
            if not isinstance(mount.get("destination"), str) or not mount["destination"].startswith("/"):
                problems.append(f"{at}.destination: required, an absolute path")

    for key in ("vm", "compute", "computes"):
        for i, vm in enumerate(_as_list(doc.get(key, []))):
            at = _where(f"[[{key}]]", i)
            if not isinstance(vm, dict):
                problems.append(f"{at}: must be a table")
                continue
            problems += _unknown(at, vm, VM_KEYS)
            if "size" in vm and vm["size"] not in VM_PRESETS:
                problems.append(f"{at}.size: unknown size {vm['size']!r} (one of {', '.join(VM_PRESETS)})")
            if "memory" in vm and _memory_mb(vm["memory"]) is None:
                problems.append(f'{at}.memory: must be a size such as "512mb" or "1gb"')

    for i, restart in enumerate(_as_list(doc.get("restart", []))):
        at = _where("[[restart]]", i)
        if not isinstance(restart, dict):
            problems.append(f"{at}: must be a table")
            continue
        problems += _unknown(at, restart, RESTART_KEYS)
        if restart.get("policy") not in RESTART_POLICIES:
            problems.append(f"{at}.policy: must be one of {', '.join(RESTART_POLICIES)}")
        if "processes" in restart:
            problems += _check_processes_ref(at, restart, groups)

    for i, file in enumerate(_as_list(doc.get("files", []))):
        at = _where("[[files]]", i)
        if not isinstance(file, dict):
            problems.append(f"{at}: must be a table")
            continue
        problems += _unknown(at, file, FILE_KEYS)
        if not isinstance(file.get("guest_path"), str) or not file["guest_path"].startswith("/"):
            problems.append(f"{at}.guest_path: required, an absolute path")
        sources = [k for k in ("raw_value", "local_path", "secret_name") if k in file]
        if len(sources) != 1:
            problems.append(f"{at}: exactly one of raw_value, local_path or secret_name is required")
        elif "local_path" in file and not (isinstance(file["local_path"], str) and file["local_path"].startswith("/")):
            # flyctl reads a relative path from its working directory; the provider host's has no
            # relation to where the fly.toml was rendered.
            problems.append(f"{at}.local_path: must be an absolute path")
    return problems


def _validate_service(at: str, service: Any, groups: set[str] | None) -> list[str]:
    if not isinstance(service, dict):
        return [f"{at}: must be a table"]
    problems = _unknown(at, service, SERVICE_KEYS)
    if service.get("protocol") not in ("tcp", "udp"):
        problems.append(f'{at}.protocol: must be "tcp" or "udp"')
    if not _is_int(service.get("internal_port")):
        problems.append(f"{at}.internal_port: required, a port number")
    problems += _check_autoscaling_keys(at, service)
    ports = service.get("ports", [])
    if not isinstance(ports, list):
        problems.append(f"{at}.ports: must be an array of tables ([[services.ports]])")
        ports = []
    for j, port in enumerate(ports):
        pat = _where(f"{at}.ports", j)
        if not isinstance(port, dict):
            problems.append(f"{pat}: must be a table")
            continue
        problems += _unknown(pat, port, PORT_KEYS)
        if not (_is_int(port.get("port")) or (_is_int(port.get("start_port")) and _is_int(port.get("end_port")))):
            problems.append(f"{pat}.port: required, a port number (or start_port and end_port)")
        handlers = port.get("handlers", [])
        if not isinstance(handlers, list) or any(h not in HANDLERS for h in handlers):
            problems.append(f"{pat}.handlers: must be a list of {', '.join(sorted(HANDLERS))}")
    for kind in ("tcp", "http"):
        if f"{kind}_checks" in service:
            problems += _check_checks(f"{at}.{kind}_checks", service[f"{kind}_checks"], kind)
    if groups is not None or "processes" in service:
        problems += _check_processes_ref(at, service, groups)
    return problems


# ---------------------------------------------------------------------------------------------------
# fly.toml → Machine config


def _memory_mb(value: Any) -> int | None:
    if _is_int(value):
        return int(value)
    if isinstance(value, str) and (match := _SIZE.match(value)):
        number, unit = int(match.group(1)), (match.group(2) or "mb").lower()
        return number * 1024 if unit in ("gb", "g") else number
    return None


def _for_group(items: Any, group: str) -> list[dict[str, Any]]:
    """Entries that apply to a process group (no ``processes`` key means all groups)."""
    return [dict(i) for i in _as_list(items or []) if group in i.get("processes", [group])]


def _duration_fields(check: Mapping[str, Any], out: dict[str, Any]) -> None:
    for key in ("interval", "timeout", "grace_period"):
        if key in check:
            out[key] = go_duration(parse_duration(check[key], NS_PER["ms"]))


def _headers(headers: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, "values": [str(value)]} for name, value in sorted(headers.items())]


def _service_check(check: Mapping[str, Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind}
    _duration_fields(check, out)
    if kind == "http":
        for key in ("method", "path", "protocol", "tls_skip_verify", "tls_server_name"):
            if key in check:
                out[key] = check[key]
        if check.get("headers"):
            out["headers"] = _headers(check["headers"])
    return out


def _autoscaling(section: Mapping[str, Any], out: dict[str, Any]) -> None:
    if "auto_stop_machines" in section:
        out["autostop"] = _autostop(section["auto_stop_machines"])
    if "auto_start_machines" in section:
        out["autostart"] = bool(section["auto_start_machines"])
    if "min_machines_running" in section:
        out["min_machines_running"] = int(section["min_machines_running"])


def _autostop(value: Any) -> str:
    if value is True:
        return "stop"
    if value is False or value is None:
        return "off"
    return str(value)


def _http_service(http: Mapping[str, Any]) -> dict[str, Any]:
    """flyctl's HTTPService.ToService (internal/appconfig/service.go): port 80 gets the http_options,
    port 443 the http_options and the tls_options."""
    http_options = {"http_options": copy.deepcopy(dict(http["http_options"]))} if "http_options" in http else {}
    tls_options = {"tls_options": copy.deepcopy(dict(http["tls_options"]))} if "tls_options" in http else {}
    service: dict[str, Any] = {
        "protocol": "tcp",
        "internal_port": http["internal_port"],
        "ports": [
            {"port": 80, "handlers": ["http"], "force_https": bool(http.get("force_https", False)), **http_options},
            {"port": 443, "handlers": ["http", "tls"], **copy.deepcopy(http_options), **tls_options},
        ],
    }
    _autoscaling(http, service)
    if "concurrency" in http:
        service["concurrency"] = dict(http["concurrency"])
    checks = [_service_check(c, "http") for c in http.get("checks", [])]
    if checks:
        service["checks"] = checks
    return service


def _service(section: Mapping[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = {
        "protocol": section.get("protocol", "tcp"),
        "internal_port": section["internal_port"],
        "ports": [dict(p) for p in section.get("ports", [])],
    }
    _autoscaling(section, service)
    if "concurrency" in section:
        service["concurrency"] = dict(section["concurrency"])
    checks = [_service_check(c, "tcp") for c in section.get("tcp_checks", [])]
    checks += [_service_check(c, "http") for c in section.get("http_checks", [])]
    if checks:
        service["checks"] = checks
    return service


def _guest(vm: Mapping[str, Any]) -> dict[str, Any]:
    """flyctl's computeToGuest: a preset (the size given, else shared-cpu-1x, or performance-8x for a GPU),
    then ``memory`` and the guest keys over it."""
    size = vm.get("size") or (DEFAULT_GPU_VM_SIZE if vm.get("gpu_kind") else DEFAULT_VM_SIZE)
    if size not in VM_PRESETS:
        raise FlyTomlError(f"[[vm]].size: unknown size {size!r}")
    guest: dict[str, Any] = dict(VM_PRESETS[size])
    if "cpu_kind" in vm:
        guest["cpu_kind"] = vm["cpu_kind"]
    if "cpus" in vm:
        guest["cpus"] = int(vm["cpus"])
    for key in ("memory", "memory_mb"):
        if key in vm:
            memory = _memory_mb(vm[key])
            if memory is None:
                raise FlyTomlError(f"[[vm]].{key}: not a size: {vm[key]!r}")
            guest["memory_mb"] = memory
    for key in ("gpus", "gpu_kind", "kernel_args", "host_dedication_id", "persist_rootfs"):
        if key in vm:
            guest[key] = vm[key]
    return guest


# Every file a machine gets is read by the service's own (non-root) user: Kong runs as `kong`, Postgres as
# `postgres`. fly.toml cannot say a mode (flyctl's appconfig.File has none), but the Machine config can
# (fly-go machine_types.go File.Mode, chmod(2) bits), so it is set explicitly rather than left to Fly's
# default: readable by everyone, writable by no one (the files are rewritten from the config on every boot).
DEFAULT_FILE_MODE = 0o444


def _file(entry: Mapping[str, Any], mode: int, read_local: Callable[[str], bytes] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"guest_path": entry["guest_path"], "mode": mode}
    if "raw_value" in entry:
        # flyctl's toMachineFile base64-encodes raw_value; the Machines API wants base64.
        out["raw_value"] = base64.b64encode(str(entry["raw_value"]).encode()).decode("ascii")
    elif "secret_name" in entry:
        out["secret_name"] = entry["secret_name"]
    elif read_local is not None:
        # flyctl's toMachineFile reads local_path when it deploys and sends the bytes, base64-encoded.
        out["raw_value"] = base64.b64encode(read_local(entry["local_path"])).decode("ascii")
    else:
        # Without a reader the config is for looking at (policy, state transitions), never for the API.
        out["local_path"] = entry["local_path"]
    return out


def read_local_file(path: str) -> bytes:
    """A ``[[files]] local_path``'s bytes, as flyctl reads them when it deploys."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise FlyTomlError(f"[[files]] local_path {path}: cannot read it ({exc.strerror})") from None


def to_machine_config(
    doc: Mapping[str, Any],
    *,
    image: str | None = None,
    volume_id: str | None = None,
    process_group: str = "app",
    file_mode: int = DEFAULT_FILE_MODE,
    read_local: Callable[[str], bytes] | None = None,
) -> dict[str, Any]:
    """The Machine config flyctl would deploy for ``process_group`` of a parsed fly.toml, plus an explicit
    ``mode`` on every file (see ``DEFAULT_FILE_MODE``).

    ``[[files]] local_path`` contents are read with ``read_local`` (``read_local_file``); without it they
    stay ``local_path`` entries: a config to inspect, not one the Machines API accepts."""
    group = process_group
    image = image or (doc.get("build") or {}).get("image")
    if not image:
        raise FlyTomlError("[build].image: required (or pass image=)")
    env = {str(k): str(v) for k, v in (doc.get("env") or {}).items()}
    env["FLY_PROCESS_GROUP"] = group
    if doc.get("primary_region"):
        env["PRIMARY_REGION"] = doc["primary_region"]
    config: dict[str, Any] = {
        "image": image,
        "env": env,
        "metadata": {"fly_platform_version": "v2", "fly_process_group": group},
    }

    processes = doc.get("processes") or {}
    if processes:
        if group not in processes:
            raise FlyTomlError(f"[processes]: no process group {group!r}")
        config["init"] = {"cmd": shlex.split(processes[group])}

    services = []
    http = doc.get("http_service")
    if http and group in http.get("processes", [group]):
        services.append(_http_service(http))
    services += [_service(s) for s in _for_group(doc.get("services"), group)]
    if services:
        config["services"] = services

    checks: dict[str, Any] = {}
    for name, check in (doc.get("checks") or {}).items():
        if group not in check.get("processes", [group]):
            continue
        port = check.get("port", (http or {}).get("internal_port"))
        if port is None:
            raise FlyTomlError(f"[checks.{name}].port: required (no [http_service] to fall back on)")
        out: dict[str, Any] = {"type": check["type"], "port": port}
        _duration_fields(check, out)
        for key in ("method", "path", "protocol", "tls_skip_verify", "tls_server_name", "kind"):
            if key in check:
                out[key] = check[key]
        if check.get("headers"):
            out["headers"] = _headers(check["headers"])
        checks[name] = out
    if checks:
        config["checks"] = checks

    mounts = _for_group(doc.get("mounts", doc.get("mount")), group)
    if mounts:
        mount = mounts[0]  # a machine mounts at most one volume
        entry: dict[str, Any] = {"path": mount["destination"], "name": mount["source"]}
        if volume_id:
            entry = {"volume": volume_id, **entry}
        config["mounts"] = [entry]

    if "kill_signal" in doc or "kill_timeout" in doc:
        stop: dict[str, Any] = {}
        if "kill_signal" in doc:
            stop["signal"] = doc["kill_signal"]
        if "kill_timeout" in doc:
            stop["timeout"] = go_duration(parse_duration(doc["kill_timeout"], NS_PER["s"]))
        config["stop_config"] = stop

    vms = _for_group(doc.get("vm", doc.get("compute", doc.get("computes"))), group)
    if vms:
        config["guest"] = _guest(vms[0])

    restarts = _for_group(doc.get("restart"), group)
    if restarts:
        policy = restarts[0].get("policy", "on-failure")
        restart: dict[str, Any] = {"policy": "no" if policy == "never" else policy}
        if "retries" in restarts[0]:
            restart["max_retries"] = int(restarts[0]["retries"])
        config["restart"] = restart

    files = [_file(f, file_mode, read_local) for f in _for_group(doc.get("files"), group)]
    if files:
        config["files"] = files

    metrics = _for_group(doc.get("metrics"), group)
    if metrics:
        config["metrics"] = {k: v for k, v in metrics[0].items() if k != "processes"}
    return config


# ---------------------------------------------------------------------------------------------------
# normalize: one form for desired configs and API echoes

_DURATION_KEYS = ("interval", "timeout", "grace_period")
# Values the API fills in when they are unset: equal to "not set".
_DEFAULTS: dict[str, Any] = {"auto_destroy": False, "force_https": False, "tls_skip_verify": False}
_MOUNT_VOLUME_FIELDS = ("encrypted", "size_gb")  # properties of the volume, echoed on the mount


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _prune(value: Any) -> Any:
    """Drop None, empty containers and server defaults, recursively."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _prune(item)
            if item is None or item == {} or item == []:
                continue
            if key in _DEFAULTS and item == _DEFAULTS[key]:
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _canonical_duration(value: Any) -> Any:
    # The API's integer durations are nanoseconds (fly-go duration.go).
    try:
        return go_duration(parse_duration(value, 1))
    except ValueError:
        return value


def _normalize_check(check: dict[str, Any]) -> None:
    for key in _DURATION_KEYS:
        if key in check:
            check[key] = _canonical_duration(check[key])
    if isinstance(check.get("method"), str):
        check["method"] = check["method"].upper()


def _truthy(value: Any) -> bool:
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def normalize(config: Mapping[str, Any]) -> dict[str, Any]:
    """One form for a machine config, so ``normalize(desired) == normalize(api_echo)`` when unchanged.

    autostop ``true``/``false`` → "stop"/"off"; autostart → bool; integral floats → ints; durations →
    canonical Go strings; ``restart`` equal to the default (on-failure, no retries) dropped; empty lists
    and tables (``init: {}``) and server defaults dropped.
    """
    out: dict[str, Any] = _numbers(copy.deepcopy(dict(config)))
    for service in out.get("services") or []:
        if "autostop" in service:
            service["autostop"] = _autostop(service["autostop"])
        if "autostart" in service:
            service["autostart"] = _truthy(service["autostart"])
        for check in service.get("checks") or []:
            _normalize_check(check)
    for check in (out.get("checks") or {}).values():
        _normalize_check(check)
    stop = out.get("stop_config")
    if isinstance(stop, dict) and "timeout" in stop:
        stop["timeout"] = _canonical_duration(stop["timeout"])
    restart = out.get("restart")
    if isinstance(restart, dict) and restart.get("policy") == "on-failure" and not restart.get("max_retries"):
        del out["restart"]
    for mount in out.get("mounts") or []:
        for key in _MOUNT_VOLUME_FIELDS:
            mount.pop(key, None)
    return _prune(out)
