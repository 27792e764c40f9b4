"""Fly and Cloudflare settings: only a loopback API may be used without a token, and tokens never
show up in a repr (tracebacks, debug logs, pytest's assertion output)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from components.providers.cloudflare.settings import resolve_cloudflare_settings
from components.providers.fly.client import FlyClient
from components.providers.fly.settings import EMULATOR_TOKEN, resolve_fly_settings
from emulators.fly import FlyEmulator
from tests.fixtures.cloudflare import CF_ACCOUNT_ID

# Hosts that merely contain a loopback name or address somewhere in the URL text.
NOT_LOOPBACK = [
    "http://localhost.evil.tld:4280",
    "http://127.0.0.1.nip.io:4280",
    "http://localhost@evil.tld:4280",
    "http://evil.tld/?next=http://127.0.0.1",
    "http://evil.tld#://[::1]",
    "https://[::2]:4280",
    "http://128.0.0.1:4280",
]


@pytest.fixture
def emulator_on_127_0_0_2() -> Iterator[FlyEmulator]:
    # Any address of 127.0.0.0/8 is loopback, not only 127.0.0.1.
    emulator = FlyEmulator()
    emulator.start(host="127.0.0.2")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.mark.parametrize("url", NOT_LOOPBACK)
def test_a_remote_fly_api_without_a_token_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"no Fly API token .*fly:apiToken"):
        resolve_fly_settings({"fly:apiUrl": url}, env={})


@pytest.mark.parametrize("url", NOT_LOOPBACK)
def test_a_remote_cloudflare_api_without_a_token_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"^cloudflare:apiToken"):
        resolve_cloudflare_settings({"cloudflare:apiUrl": url, "cloudflare:accountId": CF_ACCOUNT_ID}, env={})


def test_any_loopback_host_runs_without_a_token(emulator_on_127_0_0_2: FlyEmulator) -> None:
    port = emulator_on_127_0_0_2.url.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.2:{port}", f"http://LOCALHOST:{port}", "http://[::1]:4280"):
        settings = resolve_fly_settings({"fly:apiUrl": url}, env={})
        assert (settings.token, settings.uses_emulator) == (EMULATOR_TOKEN, True), url
        cf = resolve_cloudflare_settings({"cloudflare:apiUrl": url, "cloudflare:accountId": CF_ACCOUNT_ID}, env={})
        assert cf.source == "emulator", url
    settings = resolve_fly_settings({"fly:apiUrl": f"http://127.0.0.2:{port}"}, env={})
    with FlyClient(settings) as fly:
        fly.create_app("devenv-acme-erp-kong", "acme")
    assert list(emulator_on_127_0_0_2.snapshot()["apps"]) == ["devenv-acme-erp-kong"]


def test_settings_reprs_hide_the_tokens() -> None:
    fly = resolve_fly_settings({"fly:apiToken": "fm2_SECRETFLYTOKEN"}, env={})
    cf = resolve_cloudflare_settings(
        {"cloudflare:apiToken": "SECRETCFTOKEN", "cloudflare:accountId": CF_ACCOUNT_ID}, env={}
    )
    assert "SECRETFLYTOKEN" not in repr(fly) and "SECRETFLYTOKEN" not in str(fly)
    assert "SECRETCFTOKEN" not in repr(cf) and "SECRETCFTOKEN" not in str(cf)
    # The rest stays visible: it says which API and where the token came from.
    assert "https://api.machines.dev" in repr(fly) and "config" in repr(fly)
    assert fly.token == "fm2_SECRETFLYTOKEN" and fly.authorization == "FlyV1 fm2_SECRETFLYTOKEN"
