"""What every section of the Fly emulator shares: the timing model, the route table, the empty world and
the constants more than one section uses.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ExecHandler = Callable[[str, str, list[str]], dict]

DEFAULT_REGION = "yul"
# Machines in these states are running (or about to be): destroying one needs force/kill.
RUNNING_STATES = frozenset({"started", "starting", "restarting", "updating", "replacing", "stopping", "suspending"})
# Fly's region codes (fly.io/docs/reference/regions), as components/config/model.py knows them.
PLATFORM_REGIONS = (
    "ams", "arn", "atl", "bog", "bom", "bos", "cdg", "den", "dfw", "ewr", "eze", "fra", "gdl",
    "gig", "gru", "hkg", "iad", "jnb", "lax", "lhr", "mad", "mia", "nrt", "ord", "otp", "phx",
    "qro", "scl", "sea", "sfo", "sin", "sjc", "syd", "waw", "yul", "yyz",
)  # fmt: skip
# Custom private networks (fly.io/docs/networking/custom-private-networks): a name is unique within an
# org and bound for good to a 32-bit network id, which follows "fdaa:" in every 6PN and Flycast address
# of the network; names have letters, digits and dashes and start with a letter. An app is created on
# one network ("default" unless `network` is given) and can never move to another.
DEFAULT_NETWORK = "default"
NETWORK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
FIRST_NETWORK_ID = 0x2_0000  # printed as fdaa:2:<n>:..., the shape of the docs' examples
# fly-go flaps/flaps_volumes.go destroyedVolumeStates (fork_cleanup follows a fork, which is not modelled).
VOLUME_DESTROY_STATES = frozenset(
    {"scheduling_destroy", "fork_cleanup", "waiting_for_detach", "pending_destroy", "destroying"}
)
NONCE_HEADER = "fly-machine-lease-nonce"


@dataclass
class LatencyModel:
    call_s: float = 0.0  # added to every API call before answering
    boot_s: float = 0.0  # created/stopped -> started (machine "starting" for this long)
    stop_s: float = 0.0  # started -> stopped ("stopping")
    destroy_s: float = 0.0  # -> destroyed ("destroying")
    check_pass_s: float = 0.0  # after "started", checks are "warning" until this has passed, then "passing"
    # Strict defaults: delays of the real API that a client has to wait out (sources in __init__.py).
    replace_lag_s: float = 0.2  # an updated running machine keeps running the old version this long
    app_delete_s: float = 2.0  # DELETE /apps answers 202; the name stays taken until this has passed
    volume_destroy_s: float = 10.0  # a deleted volume stays listed, in its destroy states, this long
    secrets_lag_s: float = 2.0  # reads without min_version see the secrets as they were this long ago
    app_hidden_requests: int = 2  # requests about a new app answered 404, then 401, before it is visible


@dataclass
class Fault:
    method: str
    route: str
    skip: int  # matching calls still to let through before firing
    times: int  # how many matching calls fire
    status: int
    after_effect: bool
    body: dict | None


# (templated route, methods, handler attribute). The template is what `fail()` and `calls()` use.
ROUTE_TABLE: list[tuple[str, tuple[str, ...], str]] = [
    ("/v1/apps", ("GET", "POST"), "apps"),
    ("/v1/apps/{app}", ("GET", "DELETE"), "app"),
    ("/v1/apps/{app}/machines", ("GET", "POST"), "machines"),
    ("/v1/apps/{app}/machines/{machine_id}", ("GET", "POST", "DELETE"), "machine"),
    ("/v1/apps/{app}/machines/{machine_id}/start", ("POST",), "machine_start"),
    ("/v1/apps/{app}/machines/{machine_id}/stop", ("POST",), "machine_stop"),
    ("/v1/apps/{app}/machines/{machine_id}/restart", ("POST",), "machine_restart"),
    ("/v1/apps/{app}/machines/{machine_id}/suspend", ("POST",), "machine_suspend"),
    ("/v1/apps/{app}/machines/{machine_id}/cordon", ("POST",), "machine_cordon"),
    ("/v1/apps/{app}/machines/{machine_id}/uncordon", ("POST",), "machine_uncordon"),
    ("/v1/apps/{app}/machines/{machine_id}/wait", ("GET",), "machine_wait"),
    ("/v1/apps/{app}/machines/{machine_id}/lease", ("GET", "POST", "DELETE"), "machine_lease"),
    ("/v1/apps/{app}/machines/{machine_id}/metadata", ("GET",), "machine_metadata"),
    ("/v1/apps/{app}/machines/{machine_id}/metadata/{key}", ("GET", "POST", "DELETE"), "machine_metadata_key"),
    ("/v1/apps/{app}/machines/{machine_id}/events", ("GET",), "machine_events"),
    ("/v1/apps/{app}/machines/{machine_id}/versions", ("GET",), "machine_versions"),
    ("/v1/apps/{app}/machines/{machine_id}/exec", ("POST",), "machine_exec"),
    ("/v1/apps/{app}/machines/{machine_id}/ps", ("GET",), "machine_ps"),
    ("/v1/apps/{app}/machines/{machine_id}/signal", ("POST",), "machine_signal"),
    ("/v1/apps/{app}/volumes", ("GET", "POST"), "volumes"),
    # PUT in the current API, POST in the 2024 spec: both update.
    ("/v1/apps/{app}/volumes/{volume_id}", ("GET", "PUT", "POST", "DELETE"), "volume"),
    ("/v1/apps/{app}/volumes/{volume_id}/extend", ("PUT",), "volume_extend"),
    ("/v1/apps/{app}/secrets", ("GET", "POST"), "secrets"),
    ("/v1/apps/{app}/secrets/{name}", ("GET", "POST", "DELETE"), "secret"),
    ("/v1/apps/{app}/ip_assignments", ("GET", "POST"), "ips"),
    ("/v1/apps/{app}/ip_assignments/{ip}", ("DELETE",), "ip"),
    ("/v1/platform/regions", ("GET",), "platform_regions"),
    ("/v1/platform/placements", ("POST",), "platform_placements"),
]
ROUTES: frozenset[str] = frozenset(template for template, _, _ in ROUTE_TABLE)


def empty_state() -> dict[str, Any]:
    return {
        "apps": {},  # name -> app record
        "machines": {},  # id -> machine record (destroyed ones kept for include_deleted)
        "volumes": {},  # id -> volume record
        "ips": {},  # app -> [ip record]
        "secrets": {},  # app -> {name: {digest, created_at, updated_at}}; values are never stored
        "secrets_version": {},  # app -> int
        "secrets_history": {},  # app -> [{version, at, secrets}]: what a lagging replica can answer
        "deleting_apps": {},  # name -> time the asynchronous deletion completes (the name is taken until then)
        "shared_v4": f"66.241.124.{secrets.randbelow(254) + 1}",
        "counters": {"v6": 0, "v4": 0, "private_v6": 0, "network": 0},
        "networks": {},  # "<org>/<network name>" -> network id
        "org_regions": {},  # org -> the regions it may place machines in (absent: every region)
    }
