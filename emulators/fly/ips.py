"""IP assignments, and the private networks (6PN, Flycast) that addresses and machines live on."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from werkzeug.wrappers import Request

from emulators.fly.model import DEFAULT_NETWORK, FIRST_NETWORK_ID, NETWORK_NAME_RE
from emulators.fly.util import ApiError, json_body, not_found, rfc3339

IP_TYPES = ("v6", "shared_v4", "private_v6", "v4")
PUBLIC_IP_TYPES = frozenset({"v6", "v4", "shared_v4"})


class IpsMixin:
    """The IP assignment routes of `FlyEmulator` (server.py), and name resolution within a network."""

    # -- IP assignments -----------------------------------------------------------------------------------
    def _h_ips(self, request: Request, method: str, extra: dict, app: str) -> tuple[int, Any]:
        with self._cond:
            record = self._app(app)
            ips = self._state["ips"].setdefault(app, [])
            if method == "GET":
                return 200, {"ips": [_ip_view(ip) for ip in ips]}
            body = json_body(request)
            kind = body.get("type")
            if kind not in IP_TYPES:
                raise ApiError(400, f"invalid type {kind!r}: expected one of {', '.join(IP_TYPES)}")
            # fly-go's AssignIPRequest has no omitempty (flaps_ip_assignments.go): an unset region, org_slug,
            # network or service_name arrives as "", which means "not given".
            region = body.get("region") or "global"
            if not isinstance(region, str):
                raise ApiError(400, "invalid region: must be a string")
            # A Flycast address serves one network: the one `network` names, which then reaches the app while
            # the app's own network no longer does (Fly docs networking/flycast), or without `network` the org's
            # default network, whatever network the app is on: flyctl's first deploy sends network "" (internal/
            # command/deploy/deploy_first.go), and `fly deploy --flycast` of an app on a custom network is
            # reported to land on the default one, needing `fly ips allocate-v6 --private --network <name>`.
            network = body.get("network") or DEFAULT_NETWORK
            if not isinstance(network, str) or not NETWORK_NAME_RE.match(network):
                raise ApiError(400, f"invalid network {network!r}")
            # The org is the app's: one named must be it, and "" or none stands for it (flyctl's `ips
            # allocate-v6 --private` without --org sends none, internal/command/ips/allocate.go).
            org = body.get("org_slug") or None
            if org is not None and org != record["org_slug"]:
                raise ApiError(400, f"invalid org_slug {org!r}: app {app} belongs to organization {record['org_slug']}")
            existing_shared = next((ip for ip in ips if ip["type"] == "shared_v4"), None)
            if kind == "shared_v4" and existing_shared is not None:
                return 200, _ip_view(existing_shared)  # an app has one shared IPv4 at most
            counters = self._state["counters"]
            if kind == "shared_v4":
                address = self._state["shared_v4"]
            else:
                counters[kind] += 1
                n = counters[kind]
                address = {
                    "v6": f"2a09:8280:1::{n:x}",
                    "v4": f"137.66.{(n >> 8) & 255}.{n & 255}",
                    "private_v6": f"{self._network_prefix(record['org_slug'], network)}:0:1::{n:x}",
                }[kind]
            ip = {
                "ip": address,
                "type": kind,
                "region": region,
                "service_name": str(body.get("service_name") or ""),
                "shared": kind == "shared_v4",
                "created_at": rfc3339(time.time()),
            }
            if kind == "private_v6":
                ip.update(network=network, org_slug=record["org_slug"])
            ips.append(ip)
            return 200, _ip_view(ip)

    def _h_ip(self, request: Request, method: str, extra: dict, app: str, ip: str) -> tuple[int, Any]:
        with self._cond:
            self._app(app)
            ips = self._state["ips"].get(app, [])
            found = next((x for x in ips if x["ip"] == ip), None)
            if found is None:
                raise not_found()
            ips.remove(found)
            return 204, None

    # -- private networks (callers hold the lock) ------------------------------------------------------
    def _resolve(self, where: tuple[str, str], target: str) -> tuple[list[str], str]:
        st = self._state
        org, network = where
        here = f"network {network} of org {org}"
        try:
            literal = str(ipaddress.ip_address(target))
        except ValueError:
            literal = None
        if literal is not None:
            for app_name, ips in st["ips"].items():
                for ip in ips:
                    if ip["ip"] != literal:
                        continue
                    if ip["type"] in PUBLIC_IP_TYPES:
                        return [literal], ""
                    if self._ip_network(app_name, ip) == where:
                        return [literal], ""
            for m in st["machines"].values():
                if m["private_ip"] == literal and m["state"] == "started":
                    owner = st["apps"].get(m["app"])
                    if owner is not None and (owner["org_slug"], owner["network"]) == where:
                        return [literal], ""
            return [], f"{literal} is not routed to {here} (another network, another org, or nobody's address)"
        name, _, suffix = target.partition(".")
        app = st["apps"].get(name)
        if app is None or suffix not in ("flycast", "internal", "fly.dev"):
            return [], f"{target} does not resolve on {here}"
        ips = st["ips"].get(name, [])
        if suffix == "fly.dev":
            found = [ip["ip"] for ip in ips if ip["type"] in PUBLIC_IP_TYPES]
            return found, f"{target} does not resolve: the app has no public IP"
        if suffix == "flycast":
            found = [ip["ip"] for ip in ips if ip["type"] == "private_v6" and self._ip_network(name, ip) == where]
            return found, f"{target} does not resolve on {here} (no Flycast address of the app on it)"
        if (app["org_slug"], app["network"]) != where:
            return [], f"{target} does not resolve on {here}"
        found = [m["private_ip"] for m in st["machines"].values() if m["app"] == name and m["state"] == "started"]
        return found, f"{target} does not resolve: .internal lists started machines only, and the app has none"

    def _ip_network(self, app_name: str, ip: dict) -> tuple[str, str]:
        """(org, network) a private IP belongs to (older state files did not record it: the app's own)."""
        app = self._state["apps"].get(app_name) or {}
        return ip.get("org_slug") or app.get("org_slug", ""), ip.get("network") or app.get("network", DEFAULT_NETWORK)

    def _network_prefix(self, org: str, network: str) -> str:
        """``fdaa:<hi>:<lo>``: the first 48 bits of every private address of that network."""
        networks = self._state.setdefault("networks", {})
        key = f"{org}/{network}"
        if key not in networks:
            counters = self._state["counters"]
            counters["network"] = counters.get("network", 0) + 1
            networks[key] = FIRST_NETWORK_ID + counters["network"]
        net = networks[key]
        return f"fdaa:{net >> 16:x}:{net & 0xFFFF:x}"


def _ip_view(ip: dict) -> dict:
    return {k: ip[k] for k in ("ip", "region", "service_name", "shared", "created_at")}
