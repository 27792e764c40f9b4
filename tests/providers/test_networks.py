"""Fly private networks: each silo on its own network, each town on its own, Kong the only way in.

The emulator models custom 6PN networks the way Fly documents them: an app lives on one network, its
machines' 6PN addresses and its Flycast addresses belong to that network, and `.flycast` / `.internal`
names resolve (and route) only from the same network. ``FlyEmulator.reach(from_app, target)`` answers
"could a machine of this app open a connection to that name or address".
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pulumi.dynamic import Config as DynamicConfig
from pulumi.dynamic import ConfigureRequest

from components.config.model import APP_CONFIG_KEYS, SiloConfig, TownConfig, from_mapping
from components.providers.fly.apps import FlyAppProvider
from components.providers.fly.errors import FlyError
from components.providers.fly.ip_assignments import FlyIpAssignmentProvider
from emulators.fly import FlyEmulator
from tests.fixtures.fly import visible_app
from tests.fixtures.pulumi_mocks import RecordingMocks, declare_silo, declare_town

IMAGE = "registry-1.docker.io/library/busybox:1.36"


@pytest.fixture(autouse=True)
def _no_rate_limits(request: pytest.FixtureRequest) -> None:
    """The network model's tests call the raw API far faster than any client would; the limits have
    tests of their own (test_fly_emulator.py, test_fly_client.py)."""
    if "fly_emulator" in request.fixturenames:
        request.getfixturevalue("fly_emulator").set_rate_limits(False)


def configured(provider: Any, emulator: FlyEmulator) -> Any:
    config = {"fly:apiToken": "test", "fly:apiUrl": emulator.url}
    provider.configure(ConfigureRequest(DynamicConfig(config, "silo-infra")))
    return provider


def app(api: httpx.Client, name: str, network: str | None = None, org: str = "acme") -> str:
    return visible_app(api, name, org, **({"network": network} if network else {}))


def flycast(api: httpx.Client, name: str, **extra: str) -> str:
    """Allocate a Flycast address on the app's own network (an address without `network` is on the org's
    default one), as `fly ips allocate-v6 --private --network <app's network>` does; `extra` may name another."""
    record = api.get(f"/apps/{name}").json()
    body = {"type": "private_v6", "org_slug": record["organization"]["slug"], "network": record["network"], **extra}
    answer = api.post(f"/apps/{name}/ip_assignments", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["ip"]


def started_machine(api: httpx.Client, name: str) -> dict:
    machine = api.post(f"/apps/{name}/machines", json={"config": {"image": IMAGE}}).json()
    assert api.get(f"/apps/{name}/machines/{machine['id']}/wait", params={"state": "started"}).status_code == 200
    return machine


# -- the emulator's network model --------------------------------------------------------------------------
def test_flycast_and_6pn_resolve_only_inside_a_network(fly_api: httpx.Client, fly_emulator: FlyEmulator) -> None:
    a, b = app(fly_api, "a-api", "net-a"), app(fly_api, "a-db", "net-a")
    other = app(fly_api, "b-web", "net-b")
    legacy = app(fly_api, "old-app")  # no network: the org's default network
    db_flycast = flycast(fly_api, b)
    machine = started_machine(fly_api, b)

    # The network id is part of every private address (fdaa:<network id, 32 bits>:...).
    assert db_flycast.split(":")[1:3] == machine["private_ip"].split(":")[1:3]
    assert fly_api.get(f"/apps/{a}").json()["network"] == "net-a"
    assert fly_api.get(f"/apps/{legacy}").json()["network"] == "default"

    assert fly_emulator.reach(a, "a-db.flycast") == {"reachable": True, "addresses": [db_flycast], "reason": ""}
    assert fly_emulator.can_reach(a, "a-db.internal") and fly_emulator.can_reach(a, machine["private_ip"])
    assert fly_emulator.can_reach(a, db_flycast)
    for outsider in (other, legacy):
        denied = fly_emulator.reach(outsider, "a-db.flycast")
        assert denied["reachable"] is False and denied["addresses"] == []
        assert "does not resolve" in denied["reason"]
        assert not fly_emulator.can_reach(outsider, "a-db.internal")
        # Knowing the address is no help: the platform does not route between networks.
        assert not fly_emulator.can_reach(outsider, db_flycast)
        assert not fly_emulator.can_reach(outsider, machine["private_ip"])


def test_public_addresses_are_reachable_from_every_network(fly_api: httpx.Client, fly_emulator: FlyEmulator) -> None:
    kong, town = app(fly_api, "s-kong", "silo-net"), app(fly_api, "gt-town", "town-net")
    assert not fly_emulator.can_reach(town, "s-kong.fly.dev")  # no public IP yet
    v6 = fly_api.post(f"/apps/{kong}/ip_assignments", json={"type": "v6"}).json()["ip"]
    assert fly_emulator.can_reach(town, "s-kong.fly.dev") and fly_emulator.can_reach(town, v6)


def test_flycast_allocated_for_another_network_serves_that_network_only(
    fly_api: httpx.Client, fly_emulator: FlyEmulator
) -> None:
    # `fly ips allocate-v6 --private --network N`: exposed to N, no longer via Flycast on its own network.
    api_app, neighbour = app(fly_api, "n-api", "net-a"), app(fly_api, "n-peer", "net-a")
    client = app(fly_api, "c-client", "net-c")
    flycast(fly_api, api_app, network="net-c")
    assert fly_emulator.can_reach(client, "n-api.flycast")
    assert not fly_emulator.can_reach(neighbour, "n-api.flycast")


def test_other_organisations_never_share_a_network(fly_api: httpx.Client, fly_emulator: FlyEmulator) -> None:
    ours, theirs = app(fly_api, "o-db", "shared-name"), app(fly_api, "t-probe", "shared-name", org="other")
    flycast(fly_api, ours)
    assert not fly_emulator.can_reach(theirs, "o-db.flycast")


def test_network_names_follow_fly_rules(fly_api: httpx.Client) -> None:
    for bad in ("1-starts-with-digit", "has_underscore", "dot.name", "-dash"):
        answer = fly_api.post("/apps", json={"name": "x-app", "org_slug": "acme", "network": bad})
        assert answer.status_code in (400, 422) and "network" in answer.json()["error"], bad


def test_reach_over_http_controls(fly_api: httpx.Client, fly_emulator: FlyEmulator) -> None:
    app(fly_api, "h-db", "net-h")
    app(fly_api, "h-api", "net-h")
    flycast(fly_api, "h-db")
    answer = httpx.post(f"{fly_emulator.url}/__emulator/reach", json={"from": "h-api", "to": "h-db.flycast"})
    assert answer.status_code == 200 and answer.json()["reachable"] is True
    unknown = httpx.post(f"{fly_emulator.url}/__emulator/reach", json={"from": "nope", "to": "h-db.flycast"})
    assert unknown.status_code == 404


def test_the_network_survives_a_restart_of_a_persistent_emulator(tmp_path) -> None:
    state = tmp_path / "fly.json"
    with (
        FlyEmulator(state_file=state, rate_limits=False) as first,
        httpx.Client(base_url=first.url + "/v1", headers={"Authorization": "Bearer t"}) as api,
    ):
        app(api, "p-db", "net-p")
        app(api, "p-api", "net-p")
        address = flycast(api, "p-db")
    with FlyEmulator(state_file=state) as second:
        assert second.reach("p-api", "p-db.flycast")["addresses"] == [address]


# -- what the program creates ---------------------------------------------------------------------------------
def deploy_networking(declared: RecordingMocks, emulator: FlyEmulator) -> None:
    """Create the declared apps and IP assignments on the emulator through the real providers."""
    apps, ips = configured(FlyAppProvider(), emulator), configured(FlyIpAssignmentProvider(), emulator)
    for resource in declared.of_type("App"):
        apps.create(apps.check({}, resource.inputs).inputs)
    for resource in declared.of_type("IpAssignment"):
        ips.create(ips.check({}, resource.inputs).inputs)


def silo(**overrides: Any) -> SiloConfig:
    base: dict[str, Any] = dict(
        client="acme", app="erp", fly_org="acme-erp", site_url="https://acme.example", control_stack="acme/s/control",
    )  # fmt: skip
    return SiloConfig(**{**base, **overrides})


def test_a_town_cannot_reach_the_silos_private_services(silo_mocks: RecordingMocks, fly_emulator: FlyEmulator) -> None:
    alpha, beta = TownConfig(name="alpha", user="u1"), TownConfig(name="beta", user="u2")
    cfg = silo(towns=[alpha, beta])
    declare_silo(cfg)
    declare_town(cfg, alpha)
    declare_town(cfg, beta)
    deploy_networking(silo_mocks, fly_emulator)

    town = alpha.sandbox_id
    for service in ("meta", "studio", "pg", "rest", "auth", "storage"):
        assert not fly_emulator.can_reach(town, cfg.flycast_host(service)), service
        assert not fly_emulator.can_reach(town, f"{cfg.app_name(service)}.internal"), service
    # Kong is the way in, from anywhere: towns included.
    assert fly_emulator.can_reach(town, f"{cfg.app_name('kong')}.fly.dev")
    assert not fly_emulator.can_reach(town, f"{cfg.app_name('meta')}.fly.dev")  # meta has no public address
    # Inside the silo every upstream Kong and Studio use still resolves.
    assert fly_emulator.can_reach(cfg.app_name("kong"), cfg.flycast_host("meta"))
    assert fly_emulator.can_reach(cfg.app_name("studio"), cfg.flycast_host("meta"))
    assert fly_emulator.can_reach(cfg.app_name("meta"), cfg.flycast_host("pg"))
    # Towns are hostile to each other too, and the silo has no business inside a town.
    assert not fly_emulator.can_reach(town, f"{beta.sandbox_id}.flycast")
    assert not fly_emulator.can_reach(cfg.app_name("kong"), f"{town}.flycast")


def test_two_silos_of_one_organisation_are_isolated(silo_mocks: RecordingMocks, fly_emulator: FlyEmulator) -> None:
    erp, crm = silo(), silo(app="crm")
    declare_silo(erp)
    declare_silo(crm)
    deploy_networking(silo_mocks, fly_emulator)
    assert not fly_emulator.can_reach(crm.app_name("kong"), erp.flycast_host("meta"))
    assert fly_emulator.can_reach(crm.app_name("kong"), erp.flycast_host("meta").replace("-erp-", "-crm-"))


# -- moving an existing app to a network ---------------------------------------------------------------------
def test_a_network_change_is_refused_at_preview_without_the_override() -> None:
    provider = FlyAppProvider()
    keys = {"config_keys": APP_CONFIG_KEYS}  # as the silo stack declares its apps: errors name silo: keys
    legacy = {"name": "devenv-acme-erp-pg", "org": "acme", "keep_volumes": True, "network": None, "app_id": "x", **keys}
    news = {"name": "devenv-acme-erp-pg", "org": "acme", "keep_volumes": True, "network": "devenv-acme-erp", **keys}
    [failure] = provider.check(legacy, news).failures
    assert failure.property == "network"
    assert "silo:networkMigration" in failure.reason and "default" in failure.reason
    # With the override, data kept: still refused, since replacing the app deletes its volumes.
    [failure] = provider.check(legacy, {**news, "allow_network_change": True}).failures
    assert "silo:allowDataDeletion" in failure.reason
    allowed = {**news, "allow_network_change": True, "keep_volumes": False}
    assert provider.check(legacy, allowed).failures == []
    diff = provider.diff("devenv-acme-erp-pg", legacy, allowed)
    assert diff.replaces == ["network"] and diff.delete_before_replace is True
    # A new app, or one already on its network, is no change at all.
    assert provider.check({}, news).failures == []
    assert provider.check({**legacy, "network": "devenv-acme-erp"}, news).failures == []


def test_the_override_is_a_config_key() -> None:
    base = {"silo:client": "acme", "silo:app": "erp", "silo:flyOrg": "acme", "silo:siteUrl": "https://a.dev"}
    assert from_mapping(base).network_migration is False
    assert from_mapping({**base, "silo:networkMigration": "true"}).network_migration is True
    assert from_mapping(base).network == "devenv-acme-erp"


def test_adopting_an_app_on_another_network_fails_instead_of_lying(fly_api: httpx.Client, fly_emulator) -> None:
    # A retained app (a data app kept by a replacement) still sits on the old network: Fly cannot move it.
    app(fly_api, "devenv-acme-erp-pg")
    provider = configured(FlyAppProvider(), fly_emulator)
    with pytest.raises(FlyError, match=r"network default.*cannot move"):
        provider.create(
            {"name": "devenv-acme-erp-pg", "org": "acme", "keep_volumes": True, "network": "devenv-acme-erp"}
        )
    same = provider.create({"name": "devenv-acme-erp-pg", "org": "acme", "keep_volumes": True, "network": None})
    assert same.id == "devenv-acme-erp-pg"
