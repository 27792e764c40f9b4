"""R2 providers called directly against the Cloudflare emulator, the component's wiring under
Pulumi mocks, and one round trip through the SDK's real provider host over gRPC."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pulumi
import pytest
from google.protobuf import struct_pb2
from pulumi.dynamic import Config as DynamicConfig
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from components.providers.cloudflare.client import CloudflareClient
from components.providers.cloudflare.errors import CloudflareConflict, CloudflareError, CloudflareNotFound
from components.providers.cloudflare.r2 import (
    ABORT_MULTIPART_RULE_ID,
    DAY_S,
    R2_DEFAULT_LIFECYCLE,
    TOWN_PREFIX_ROOT,
    R2BucketProvider,
    R2LifecycleProvider,
    R2TownCredentials,
    R2TownCredentialsProvider,
    backup_lifecycle_rules,
    normalise_rules,
)
from components.providers.cloudflare.settings import resolve_cloudflare_settings
from components.stacks.control import R2Bucket
from emulators.cloudflare import DEFAULT_LIFECYCLE_RULE, CloudflareEmulator
from tests.fixtures.cloudflare import CF_ACCOUNT_ID, CF_PARENT_ACCESS_KEY_ID, CF_TOKEN

REPO = Path(__file__).resolve().parents[2]
BUCKETS_ROUTE = "/client/v4/accounts/{account_id}/r2/buckets"


def configured(provider: Any, config: dict[str, str]) -> Any:
    provider.configure(ConfigureRequest(DynamicConfig(config, "silo-infra")))
    return provider


def over_the_wire(props: dict[str, Any]) -> dict[str, Any]:
    """What the engine hands back next run: the props through a protobuf Struct (ints become floats)."""
    struct = asyncio.run(rpc.serialize_properties(props, {}))
    return rpc.deserialize_properties(struct)


def failures(result: Any) -> dict[str, str]:
    return {f.property: f.reason for f in result.failures}


# -- settings ---------------------------------------------------------------------------------------
def test_settings_errors_name_the_config_key() -> None:
    with pytest.raises(ValueError, match=r"^cloudflare:apiToken"):
        resolve_cloudflare_settings({"cloudflare:accountId": CF_ACCOUNT_ID}, env={})
    with pytest.raises(ValueError, match=r"^cloudflare:accountId"):
        resolve_cloudflare_settings({"cloudflare:apiToken": "t"}, env={})
    with pytest.raises(ValueError, match=r"^cloudflare:accountId"):
        resolve_cloudflare_settings({"cloudflare:apiToken": "t", "cloudflare:accountId": "ACME"}, env={})


def test_settings_config_first_then_env() -> None:
    env = {"CLOUDFLARE_API_TOKEN": "from-env", "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT_ID}
    from_env = resolve_cloudflare_settings({}, env=env)
    assert (from_env.token, from_env.source) == ("from-env", "env")
    assert from_env.api_url == "https://api.cloudflare.com/client/v4"
    from_config = resolve_cloudflare_settings(
        {"cloudflare:apiToken": "from-config", "cloudflare:apiUrl": "http://127.0.0.1:9/"}, env=env
    )
    assert (from_config.token, from_config.api_url) == ("from-config", "http://127.0.0.1:9/client/v4")
    assert "from-config" not in repr(from_config)


# -- client -----------------------------------------------------------------------------------------
def _client(config: dict[str, str], **kwargs: Any) -> CloudflareClient:
    return CloudflareClient(resolve_cloudflare_settings(config, env={}), **kwargs)


def test_client_retries_what_is_safe_to_retry(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    bucket_route = BUCKETS_ROUTE + "/{bucket}"
    with _client(cloudflare_config, backoff_initial=0.01) as cf:
        cf.create_bucket("gastown-backups")
        cloudflare_emulator.fail("GET", bucket_route, status=503)
        cloudflare_emulator.fail("GET", bucket_route, status=429)
        assert (cf.get_bucket("gastown-backups") or {})["name"] == "gastown-backups"  # 503 and 429 retried
        assert cf.get_bucket("no-such-bucket") is None  # a 404 is an answer, not retried
    statuses = [c["status"] for c in cloudflare_emulator.calls()]
    assert statuses == [200, 503, 429, 200, 404]


def test_client_errors_carry_codes_the_call_and_the_cf_ray(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    with _client(cloudflare_config) as cf, pytest.raises(CloudflareNotFound) as err:
        cf.put_lifecycle("gone", backup_lifecycle_rules())
    [call] = cloudflare_emulator.calls()
    assert (err.value.status, err.value.codes, err.value.request_id) == (404, (10006,), call["cf_ray"])
    assert str(err.value) == (
        "The specified bucket does not exist. (code 10006) "
        f"(PUT /r2/buckets/gone/lifecycle, HTTP 404, cf-ray {call['cf_ray']})"
    )
    assert CF_TOKEN not in str(err.value) and CF_TOKEN not in repr(err.value)


def test_client_sends_its_token_and_no_key_of_the_environment(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cloudflare's library reads these itself and sends them with (or instead of) the bearer token: a
    # developer's global API key would go to whatever URL the stack names.
    monkeypatch.setenv("CLOUDFLARE_EMAIL", "dev@example.com")
    monkeypatch.setenv("CLOUDFLARE_API_KEY", "global-api-key-of-a-developer")
    monkeypatch.setenv("CLOUDFLARE_API_USER_SERVICE_KEY", "v1.0-service-key")
    monkeypatch.setenv("CLOUDFLARE_CUSTOM_HEADERS", "Authorization: Bearer someone-else")
    provider = configured(R2BucketProvider(), cloudflare_config)

    created = provider.create(provider.check({}, {"name": "gastown-backups"}).inputs)

    assert created.id == "gastown-backups"
    assert [(c["status"], c["credentials"]) for c in cloudflare_emulator.calls()] == [(200, ["Authorization"])]


def test_client_does_not_retry_what_r2_answers_with_409(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    # Cloudflare's library would send a 409 twice more (its default max_retries=2 retries 409s); here a
    # 409 is an answer ("bucket exists", "bucket not empty"), seen once.
    with _client(cloudflare_config, backoff_initial=0.01) as cf:
        cf.create_bucket("gastown-backups")
        cloudflare_emulator.put_object("gastown-backups", "gastown/t1/latest.json")
        with pytest.raises(CloudflareConflict) as err:
            cf.delete_bucket("gastown-backups")
    assert err.value.codes == (10008,)
    assert [(c["method"], c["status"]) for c in cloudflare_emulator.calls()] == [("POST", 200), ("DELETE", 409)]


def test_temporary_credentials_never_show_their_secret(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    with _client(cloudflare_config) as cf:
        cf.create_bucket("gastown-backups")
        creds = cf.temp_credentials(
            "gastown-backups",
            parent_access_key_id=CF_PARENT_ACCESS_KEY_ID,
            permission="object-read-write",
            ttl_seconds=3600,
            prefixes=["gastown/t1/"],
        )
    assert creds.access_key_id and creds.secret_access_key and creds.session_token
    assert creds.secret_access_key not in repr(creds) and creds.session_token not in repr(creds)
    assert creds.access_key_id in repr(creds)


def test_a_remote_api_over_plain_http_is_refused() -> None:
    # A bearer token over http would cross the network in clear; only a loopback emulator may be http.
    config = {"cloudflare:apiToken": "t", "cloudflare:accountId": CF_ACCOUNT_ID}
    for url in ("http://api.cloudflare.com", "http://10.0.0.5:8080", "http://localhost.evil.tld"):
        with pytest.raises(ValueError, match=r"^cloudflare:apiUrl: .* is not https"):
            resolve_cloudflare_settings({**config, "cloudflare:apiUrl": url}, env={})
    for url in ("https://cf-proxy.internal", "http://127.0.0.1:9", "http://[::1]:9"):
        assert resolve_cloudflare_settings({**config, "cloudflare:apiUrl": url}, env={}).token == "t"


def test_client_unreachable_api_is_a_clear_error() -> None:
    config = {"cloudflare:accountId": CF_ACCOUNT_ID, "cloudflare:apiUrl": "http://127.0.0.1:9"}
    with _client(config, attempts=2, backoff_initial=0.01) as cf, pytest.raises(CloudflareError) as err:
        cf.get_bucket("gastown-backups")
    assert "cannot reach the Cloudflare API at http://127.0.0.1:9/client/v4" in str(err.value)


# -- R2 bucket --------------------------------------------------------------------------------------
def test_bucket_check_refuses_64_character_names_and_hint_with_jurisdiction() -> None:
    provider = R2BucketProvider()
    assert set(failures(provider.check({}, {"name": "b" * 64}))) == {"name"}
    assert provider.check({}, {"name": "b" * 63}).failures == []
    # A location hint places a bucket inside the default jurisdiction: R2 takes one or the other.
    both = provider.check({}, {"name": "gastown-backups", "jurisdiction": "eu", "location_hint": "weur"})
    assert set(failures(both)) == {"location_hint"}
    assert "jurisdiction" in failures(both)["location_hint"]


def test_bucket_check_names_the_bad_property() -> None:
    provider = R2BucketProvider()
    result = provider.check({}, {"name": "Town_Backups", "jurisdiction": "mars", "location_hint": "moon"})
    assert set(failures(result)) == {"name", "jurisdiction", "location_hint"}
    assert "Town_Backups" in failures(result)["name"]
    ok = provider.check({}, {"name": "gastown-backups", "location_hint": "WNAM"})
    assert ok.failures == []
    assert ok.inputs["location_hint"] == "wnam"
    assert (ok.inputs["jurisdiction"], ok.inputs["allow_delete"]) == ("default", False)


def test_bucket_create_outputs_and_eu_endpoint(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    provider = configured(R2BucketProvider(), cloudflare_config)
    created = provider.create(provider.check({}, {"name": "gastown-backups", "location_hint": "weur"}).inputs)
    assert created.id == "gastown-backups"
    assert created.outs["s3_endpoint"] == f"https://{CF_ACCOUNT_ID}.r2.cloudflarestorage.com"
    assert created.outs["location"] == "weur"
    assert created.outs["name"] == "gastown-backups" and created.outs["location_hint"] == "weur"
    eu = provider.create(provider.check({}, {"name": "gastown-backups", "jurisdiction": "eu"}).inputs)
    assert eu.outs["s3_endpoint"] == f"https://{CF_ACCOUNT_ID}.eu.r2.cloudflarestorage.com"
    jurisdictions = sorted(b["jurisdiction"] for b in cloudflare_emulator.snapshot()["buckets"].values())
    assert jurisdictions == ["default", "eu"]


def test_bucket_create_is_idempotent_after_a_lost_response(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    cloudflare_emulator.fail("POST", BUCKETS_ROUTE, status=500, after_effect=True)
    provider = configured(R2BucketProvider(), cloudflare_config)
    created = provider.create(provider.check({}, {"name": "gastown-backups", "location_hint": "apac"}).inputs)
    assert created.id == "gastown-backups" and created.outs["location"] == "apac"
    assert len(cloudflare_emulator.snapshot()["buckets"]) == 1
    assert [(c["method"], c["status"]) for c in cloudflare_emulator.calls()] == [
        ("POST", 500),  # created, response lost
        ("POST", 409),  # the retry finds it
        ("GET", 200),  # ... in this account: adopted
    ]


def test_bucket_create_adopts_on_code_10004_whatever_the_status(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    cloudflare_emulator.bucket_exists_status = 400
    cloudflare_emulator.fail("POST", BUCKETS_ROUTE, status=502, after_effect=True)
    provider = configured(R2BucketProvider(), cloudflare_config)
    created = provider.create(provider.check({}, {"name": "gastown-backups"}).inputs)
    assert created.id == "gastown-backups"
    assert [(c["method"], c["status"]) for c in cloudflare_emulator.calls()] == [
        ("POST", 502),  # created, answer lost
        ("POST", 400),  # 10004: it exists, and we own it
        ("GET", 200),  # adopted
    ]


def test_recreated_bucket_reports_the_location_r2_kept(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    provider = configured(R2BucketProvider(), cloudflare_config)
    first = provider.create(provider.check({}, {"name": "gastown-backups", "location_hint": "weur"}).inputs).outs
    provider.delete("gastown-backups", {**first, "allow_delete": True})
    again = provider.create(provider.check({}, {"name": "gastown-backups", "location_hint": "apac"}).inputs)
    assert again.outs["location"] == "weur"


def test_bucket_adopts_an_existing_bucket_with_its_real_location(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    provider = configured(R2BucketProvider(), cloudflare_config)
    provider.create(provider.check({}, {"name": "gastown-backups", "location_hint": "enam"}).inputs)
    again = provider.create(provider.check({}, {"name": "gastown-backups", "location_hint": "weur"}).inputs)
    assert again.outs["location"] == "enam"  # first creation's placement wins
    assert len(cloudflare_emulator.snapshot()["buckets"]) == 1


def test_bucket_location_hint_change_is_no_diff_but_rename_replaces(
    cloudflare_config: dict[str, str],
) -> None:
    provider = configured(R2BucketProvider(), cloudflare_config)
    inputs = provider.check({}, {"name": "gastown-backups", "location_hint": "wnam"}).inputs
    olds = over_the_wire(provider.create(inputs).outs)
    for hint in ("WEUR", "weur", None):
        news = provider.check(olds, {"name": "gastown-backups", "location_hint": hint}).inputs
        diff = provider.diff("gastown-backups", olds, news)
        assert diff.changes is False and not diff.replaces
    renamed = provider.diff("gastown-backups", olds, {**inputs, "name": "gastown-backups-2"})
    assert renamed.changes is True and renamed.replaces == ["name"]
    assert renamed.delete_before_replace is True
    moved = provider.diff("gastown-backups", olds, {**inputs, "jurisdiction": "eu"})
    assert moved.replaces == ["jurisdiction"]
    unlocked = provider.diff("gastown-backups", olds, {**inputs, "allow_delete": True})
    assert unlocked.changes is True and not unlocked.replaces
    # State written without the optional keys diffs as their defaults.
    sparse = {k: v for k, v in olds.items() if k not in ("allow_delete", "jurisdiction")}
    assert provider.diff("gastown-backups", sparse, inputs).changes is False


def test_bucket_delete_refused_without_allow_delete(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    provider = configured(R2BucketProvider(), cloudflare_config)
    outs = provider.create(provider.check({}, {"name": "gastown-backups"}).inputs).outs
    with pytest.raises(CloudflareError, match=r"refusing to delete R2 bucket 'gastown-backups'.*allow_delete"):
        provider.delete("gastown-backups", outs)
    assert len(cloudflare_emulator.snapshot()["buckets"]) == 1

    unlocked = provider.update("gastown-backups", outs, {**outs, "allow_delete": True}).outs
    assert unlocked["s3_endpoint"] == outs["s3_endpoint"]  # computed outputs survive the update
    provider.delete("gastown-backups", unlocked)
    assert cloudflare_emulator.snapshot()["buckets"] == {}
    provider.delete("gastown-backups", unlocked)  # already gone: done
    assert provider.read("gastown-backups", unlocked).id == ""


def test_deleting_a_bucket_that_holds_backups_fails_clearly_and_never_empties_it(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    provider = configured(R2BucketProvider(), cloudflare_config)
    outs = provider.create(provider.check({}, {"name": "gastown-backups", "allow_delete": True}).inputs).outs
    cloudflare_emulator.put_object("gastown-backups", "gastown/t1/latest.json")

    with pytest.raises(CloudflareError) as err:
        provider.delete("gastown-backups", outs)

    message = str(err.value)
    assert "gastown-backups" in message and "10008" in message and "holds objects" in message
    assert "never empties" in message
    [bucket] = cloudflare_emulator.snapshot()["buckets"].values()
    assert bucket["objects"] == ["gastown/t1/latest.json"]
    assert [c["method"] for c in cloudflare_emulator.calls() if c["mutating"]] == ["POST", "DELETE"]


def test_bucket_read_returns_inputs(cloudflare_config: dict[str, str]) -> None:
    provider = configured(R2BucketProvider(), cloudflare_config)
    outs = provider.create(provider.check({}, {"name": "gastown-backups", "location_hint": "oc"}).inputs).outs
    read = provider.read("gastown-backups", outs)
    assert read.id == "gastown-backups" and read.outs["location"] == "oc"
    assert read.inputs == {
        "name": "gastown-backups",
        "location_hint": "oc",
        "jurisdiction": "default",
        "allow_delete": False,
    }


def test_bad_token_error_names_the_key(cloudflare_config: dict[str, str]) -> None:
    provider = configured(R2BucketProvider(), {**cloudflare_config, "cloudflare:apiToken": "wrong"})
    with pytest.raises(CloudflareError, match="cloudflare:apiToken") as err:
        provider.create({"name": "gastown-backups", "jurisdiction": "default"})
    assert err.value.status == 403 and "wrong" not in str(err.value)


# -- lifecycle --------------------------------------------------------------------------------------
# A delete rule of the shape Cloudflare accepts, for the schema checks (the backup bucket has none).
OLD_OBJECTS_RULE = {
    "id": "old-objects",
    "enabled": True,
    "conditions": {"prefix": "scratch/"},
    "deleteObjectsTransition": {"condition": {"type": "Age", "maxAge": 30 * DAY_S}},
}


def test_the_lifecycle_never_deletes_a_towns_snapshots_and_aborts_stale_uploads() -> None:
    # A town stopped for months keeps its last snapshots and latest.json (its only copy beside the
    # volume): no rule deletes anything under a town's prefix, whatever age the control stack passes.
    town = f"{TOWN_PREFIX_ROOT}town-7f3a/"
    keys = [
        f"{town}latest.json",
        f"{town}snapshots/20260101T000000Z/manifest.json",
        f"{town}snapshots/20260101T000000Z/town.tar",
        f"{town}staging/20260101T000000Z/town.tar",
    ]
    for rules in (backup_lifecycle_rules(), backup_lifecycle_rules(snapshot_max_age_days=90)):
        deleting = [r for r in rules if r.get("deleteObjectsTransition") and r.get("enabled")]
        assert [k for k in keys for r in deleting if k.startswith(r["conditions"].get("prefix", ""))] == []
        [abort] = [r for r in rules if r.get("abortMultipartUploadsTransition")]
        assert abort["conditions"] == {"prefix": ""} and abort["enabled"] is True


def test_lifecycle_rules_replace_the_default_and_diff_is_stable_over_floats(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    configured(R2BucketProvider(), cloudflare_config).create({"name": "gastown-backups"})
    provider = configured(R2LifecycleProvider(), cloudflare_config)
    rules = backup_lifecycle_rules(abort_multipart_days=1)
    checked = provider.check({}, {"bucket": "gastown-backups", "rules": rules})
    assert checked.failures == []
    created = provider.create(checked.inputs)

    [bucket] = cloudflare_emulator.snapshot()["buckets"].values()
    by_id = {r["id"]: r for r in bucket["lifecycle"]["rules"]}
    assert set(by_id) == {ABORT_MULTIPART_RULE_ID}
    assert by_id[ABORT_MULTIPART_RULE_ID]["abortMultipartUploadsTransition"]["condition"]["maxAge"] == DAY_S

    olds = over_the_wire(created.outs)
    assert isinstance(olds["rules"][0]["abortMultipartUploadsTransition"]["condition"]["maxAge"], float)
    news = over_the_wire(provider.check(olds, {"bucket": "gastown-backups", "rules": rules}).inputs)
    assert provider.diff("gastown-backups", olds, news).changes is False
    # Same rules in another order: same set.
    assert provider.diff("gastown-backups", olds, {**news, "rules": list(reversed(news["rules"]))}).changes is False

    longer = backup_lifecycle_rules(abort_multipart_days=3)
    diff = provider.diff("gastown-backups", olds, {**news, "rules": longer})
    assert diff.changes is True and not diff.replaces
    provider.update(
        "gastown-backups", olds, provider.check(olds, {"bucket": "gastown-backups", "rules": longer}).inputs
    )
    read = provider.read("gastown-backups", olds)
    assert provider.diff("gastown-backups", read.outs, {**news, "rules": longer}).changes is False


def test_lifecycle_refresh_of_r2s_empty_conditions_is_no_change(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    configured(R2BucketProvider(), cloudflare_config).create({"name": "gastown-backups"})
    provider = configured(R2LifecycleProvider(), cloudflare_config)
    rules = backup_lifecycle_rules()
    inputs = provider.check({}, {"bucket": "gastown-backups", "rules": rules}).inputs
    created = provider.create(inputs)

    read = provider.read("gastown-backups", over_the_wire(created.outs))

    # The emulator answers the whole-bucket abort rule with `conditions: {}`, as R2 does.
    [bucket] = cloudflare_emulator.snapshot()["buckets"].values()
    assert {r["id"]: r["conditions"] for r in bucket["lifecycle"]["rules"]}[ABORT_MULTIPART_RULE_ID] == {}
    assert provider.diff("gastown-backups", read.outs, over_the_wire(inputs)).changes is False
    assert read.inputs["rules"] == created.outs["rules"]


def test_lifecycle_check_names_rules_and_bucket() -> None:
    bad = [{"id": "x", "enabled": True, "conditions": {"prefix": "gastown/"}}]
    result = R2LifecycleProvider().check({}, {"bucket": "B", "rules": bad})
    assert set(failures(result)) == {"bucket", "rules"}
    assert "rules[0]" in failures(result)["rules"]
    half_second = backup_lifecycle_rules()
    half_second[0]["abortMultipartUploadsTransition"]["condition"]["maxAge"] = 0.5
    assert "maxAge" in failures(R2LifecycleProvider().check({}, {"bucket": "ok-bucket", "rules": half_second}))["rules"]
    with pytest.raises(ValueError, match="snapshot_max_age_days"):
        backup_lifecycle_rules(snapshot_max_age_days=0)


def test_lifecycle_check_refuses_what_cloudflares_schema_refuses() -> None:
    # Cloudflare's request schema (cloudflare-python, lifecycle_update_params): an abort-multipart
    # transition takes an Age only, every rule says whether it is enabled; a delete may take a Date.
    by_date = {"type": "Date", "date": "2030-01-01T00:00:00Z"}
    abort_by_date = backup_lifecycle_rules()
    abort_by_date[0]["abortMultipartUploadsTransition"]["condition"] = by_date
    refused = failures(R2LifecycleProvider().check({}, {"bucket": "ok-bucket", "rules": abort_by_date}))["rules"]
    assert refused == "rules[0].abortMultipartUploadsTransition.condition.type must be Age"
    no_enabled = [{k: v for k, v in OLD_OBJECTS_RULE.items() if k != "enabled"}]
    refused = failures(R2LifecycleProvider().check({}, {"bucket": "ok-bucket", "rules": no_enabled}))["rules"]
    assert refused == "rules[0].enabled must be true or false"
    wrong_class = [{**OLD_OBJECTS_RULE, "storageClassTransitions": [{"condition": by_date}]}]
    refused = failures(R2LifecycleProvider().check({}, {"bucket": "ok-bucket", "rules": wrong_class}))["rules"]
    assert refused == "rules[0].storageClassTransitions[0].storageClass must be InfrequentAccess"
    delete_by_date = [
        *backup_lifecycle_rules(),
        {**OLD_OBJECTS_RULE, "deleteObjectsTransition": {"condition": by_date}},
    ]
    assert R2LifecycleProvider().check({}, {"bucket": "ok-bucket", "rules": delete_by_date}).failures == []


def test_lifecycle_date_rule_round_trips_without_a_diff(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    configured(R2BucketProvider(), cloudflare_config).create({"name": "gastown-backups"})
    provider = configured(R2LifecycleProvider(), cloudflare_config)
    by_date = {"type": "Date", "date": "2030-01-01T00:00:00Z"}
    rules = [*backup_lifecycle_rules(), {**OLD_OBJECTS_RULE, "deleteObjectsTransition": {"condition": by_date}}]
    inputs = provider.check({}, {"bucket": "gastown-backups", "rules": rules}).inputs
    created = provider.create(inputs)
    read = provider.read("gastown-backups", over_the_wire(created.outs))
    assert provider.diff("gastown-backups", read.outs, over_the_wire(inputs)).changes is False


def test_lifecycle_delete_restores_r2_default_and_tolerates_missing_bucket(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    configured(R2BucketProvider(), cloudflare_config).create({"name": "gastown-backups"})
    provider = configured(R2LifecycleProvider(), cloudflare_config)
    props = provider.check({}, {"bucket": "gastown-backups", "rules": backup_lifecycle_rules()}).inputs
    outs = provider.create(props).outs
    provider.delete("gastown-backups", outs)
    # Sent with `conditions: {"prefix": ""}` (the request schema requires a prefix; the emulator refuses
    # a rule without one), read back as R2 writes a whole-bucket rule.
    [bucket] = cloudflare_emulator.snapshot()["buckets"].values()
    assert bucket["lifecycle"]["rules"] == [DEFAULT_LIFECYCLE_RULE]
    assert normalise_rules(bucket["lifecycle"]["rules"]) == R2_DEFAULT_LIFECYCLE
    assert [c["status"] for c in cloudflare_emulator.calls() if c["method"] == "PUT"] == [200, 200]
    provider.delete("no-such-bucket", {**outs, "bucket": "no-such-bucket"})
    assert provider.read("no-such-bucket", {**outs, "bucket": "no-such-bucket"}).id == ""


# -- per-town credentials ---------------------------------------------------------------------------
def test_town_credentials_are_scoped_to_the_town_prefix(
    cloudflare_emulator: CloudflareEmulator, cloudflare_config: dict[str, str]
) -> None:
    configured(R2BucketProvider(), cloudflare_config).create({"name": "gastown-backups"})
    provider = configured(R2TownCredentialsProvider(), cloudflare_config)
    town = "gt-alpha-0123456789abcdef0123456789abcdef"
    checked = provider.check({}, {"town_id": town, "bucket": "gastown-backups"})
    assert checked.failures == []
    created = provider.create(checked.inputs)

    [issued] = cloudflare_emulator.snapshot()["temp_credentials"]
    assert issued["prefixes"] == [f"gastown/{town}/"]
    assert issued["permission"] == "object-read-write"
    assert issued["parentAccessKeyId"] == CF_PARENT_ACCESS_KEY_ID
    assert issued["bucket"] == "gastown-backups" and issued["objects"] == []
    assert created.outs["access_key_id"] == issued["accessKeyId"]
    assert created.outs["secret_access_key"] and created.outs["session_token"]
    assert created.outs["prefix"] == f"gastown/{town}/"
    assert created.outs["endpoint"] == f"https://{CF_ACCOUNT_ID}.r2.cloudflarestorage.com"


def test_town_credentials_refresh_only_near_expiry(cloudflare_config: dict[str, str]) -> None:
    configured(R2BucketProvider(), cloudflare_config).create({"name": "gastown-backups"})
    provider = configured(R2TownCredentialsProvider(), cloudflare_config)
    inputs = provider.check({}, {"town_id": "t1", "bucket": "gastown-backups"}).inputs
    olds = over_the_wire(provider.create(inputs).outs)
    news = over_the_wire(provider.check(olds, {"town_id": "t1", "bucket": "gastown-backups"}).inputs)
    assert provider.diff("gastown-backups/gastown/t1/", olds, news).changes is False

    # As stored after five and a half days: inside the two-day margin, so `pulumi up` re-mints.
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(timespec="seconds")
    aging = {**olds, "expires_at": soon}
    diff = provider.diff("gastown-backups/gastown/t1/", aging, news)
    assert diff.changes is True and not diff.replaces
    fresh = provider.update("gastown-backups/gastown/t1/", aging, news).outs
    assert fresh["access_key_id"] != olds["access_key_id"]
    assert provider.diff("gastown-backups/gastown/t1/", fresh, news).changes is False

    other_town = provider.diff("gastown-backups/gastown/t1/", olds, {**news, "town_id": "t2"})
    assert other_town.replaces == ["town_id"]
    rotated_parent = configured(
        R2TownCredentialsProvider(), {**cloudflare_config, "cloudflare:r2ParentAccessKeyId": "new"}
    )
    assert rotated_parent.diff("gastown-backups/gastown/t1/", olds, news).changes is True


def test_town_credentials_check_and_missing_parent_key(cloudflare_config: dict[str, str]) -> None:
    provider = R2TownCredentialsProvider()
    bad = provider.check({}, {"town_id": "../other", "bucket": "gastown-backups", "ttl_seconds": -5})
    assert set(failures(bad)) == {"town_id", "ttl_seconds"}
    # R2 issues temporary credentials for at most a week (ttlSeconds maximum 604800).
    week = provider.check({}, {"town_id": "t1", "bucket": "gastown-backups", "ttl_seconds": 604801})
    assert set(failures(week)) == {"ttl_seconds"} and "604800" in failures(week)["ttl_seconds"]
    assert provider.check({}, {"town_id": "t1", "bucket": "gastown-backups", "ttl_seconds": 604800}).failures == []
    # The temp-credentials call has no jurisdiction: a town could not be handed credentials for an EU bucket.
    eu = provider.check({}, {"town_id": "t1", "bucket": "gastown-backups", "jurisdiction": "eu"})
    assert set(failures(eu)) == {"jurisdiction"}
    margin = provider.check(
        {}, {"town_id": "t1", "bucket": "gastown-backups", "ttl_seconds": 3600, "refresh_margin_seconds": 7200}
    )
    assert set(failures(margin)) == {"refresh_margin_seconds"}

    configured(R2BucketProvider(), cloudflare_config).create({"name": "gastown-backups"})
    no_parent = {k: v for k, v in cloudflare_config.items() if k != "cloudflare:r2ParentAccessKeyId"}
    provider = configured(R2TownCredentialsProvider(), no_parent)
    inputs = provider.check({}, {"town_id": "t1", "bucket": "gastown-backups"}).inputs
    with pytest.raises(ValueError, match=r"^cloudflare:r2ParentAccessKeyId"):
        provider.create(inputs)


# -- component wiring under Pulumi mocks ------------------------------------------------------------
class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        outs = dict(args.inputs)
        if args.typ.endswith(":R2Bucket") and args.custom:
            outs["s3_endpoint"] = f"https://{CF_ACCOUNT_ID}.r2.cloudflarestorage.com"
        return (f"{args.name}-id" if args.custom else None), outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        return {}


class _RecordingMonitor(MockMonitor):
    def __init__(self) -> None:
        super().__init__(_Mocks())
        self.requests: dict[tuple[str, str], Any] = {}

    def RegisterResource(self, request: Any) -> Any:
        if request.type != "pulumi:pulumi:Stack":
            self.requests[(request.type, request.name)] = request
        return super().RegisterResource(request)


@pytest.fixture
def recording_monitor(mock_event_loop: object) -> Iterator[_RecordingMonitor]:
    monitor = _RecordingMonitor()
    pulumi.runtime.set_mocks(_Mocks(), monitor=monitor, project="silo-infra", stack="control")
    yield monitor


def test_component_wires_bucket_and_lifecycle_town_credentials_secret(
    recording_monitor: _RecordingMonitor,
) -> None:
    @pulumi.runtime.test
    def program() -> pulumi.Output:
        storage = R2Bucket("gastown-backups", bucket_name="gastown-backups", location_hint="enam")
        # What a TownSandbox declares for its town (components/stacks/town.py).
        creds = R2TownCredentials("gastown-backups-town-t1", town_id="t1", bucket=storage.name)
        eu_storage = R2Bucket("eu-backups", bucket_name="eu-backups", jurisdiction="eu")

        def check(values: list[Any]) -> None:
            name, endpoint, prefix_town = values[:3]
            assert name == "gastown-backups"
            assert endpoint == f"https://{CF_ACCOUNT_ID}.r2.cloudflarestorage.com"
            assert prefix_town == "t1"
            reqs = recording_monitor.requests
            assert sorted(reqs) == [
                ("pulumi-python:dynamic/cloudflare:R2Bucket", "eu-backups"),
                ("pulumi-python:dynamic/cloudflare:R2Bucket", "gastown-backups"),
                ("pulumi-python:dynamic/cloudflare:R2BucketLifecycle", "eu-backups-lifecycle"),
                ("pulumi-python:dynamic/cloudflare:R2BucketLifecycle", "gastown-backups-lifecycle"),
                ("pulumi-python:dynamic/cloudflare:R2TownCredentials", "gastown-backups-town-t1"),
                ("silo:storage:R2Bucket", "eu-backups"),
                ("silo:storage:R2Bucket", "gastown-backups"),
            ]
            creds_req = reqs[("pulumi-python:dynamic/cloudflare:R2TownCredentials", "gastown-backups-town-t1")]
            assert set(creds_req.additionalSecretOutputs) == {"access_key_id", "secret_access_key", "session_token"}
            for child in [k for k in reqs if k[0] != "silo:storage:R2Bucket" and "-town-" not in k[1]]:
                owner = "eu-backups" if child[1].startswith("eu-") else "gastown-backups"
                assert reqs[child].parent.endswith(f"silo:storage:R2Bucket::{owner}"), child

        # Every resource is registered once its URN resolves.
        urns = [r.urn for r in (storage, storage.lifecycle, eu_storage, eu_storage.lifecycle, creds)]
        return pulumi.Output.all(storage.name, storage.s3_endpoint, creds.town_id, *urns).apply(check)

    program()


# -- the real provider host over gRPC ---------------------------------------------------------------
def _struct(props: dict[str, Any]) -> struct_pb2.Struct:
    return asyncio.run(rpc.serialize_properties(props, {}))


@pytest.fixture
def provider_host(tmp_path: Path) -> Iterator[provider_pb2_grpc.ResourceProviderStub]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDFLARE_")}
    env["PYTHONPATH"] = str(REPO)
    stderr = (tmp_path / "provider-host.stderr").open("w")  # a file: a full pipe would stall the host
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.dynamic"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            yield provider_pb2_grpc.ResourceProviderStub(channel)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        stderr.close()


def test_round_trip_through_the_provider_host(
    provider_host: provider_pb2_grpc.ResourceProviderStub,
    cloudflare_emulator: CloudflareEmulator,
    cloudflare_config: dict[str, str],
) -> None:
    # Credentials reach the host only as namespaced stack config (its environment has none).
    provider_host.Configure(provider_pb2.ConfigureRequest(args=_struct(cloudflare_config)))
    blob = serialize_provider(R2BucketProvider())
    assert CF_TOKEN.encode() not in base64.b64decode(blob)  # pickled before configure(): no credentials
    urn = "urn:pulumi:control::silo-infra::pulumi-python:dynamic/cloudflare:R2Bucket::gastown-backups"

    bad = provider_host.Check(provider_pb2.CheckRequest(urn=urn, news=_struct({"__provider": blob, "name": "No"})))
    assert [f.property for f in bad.failures] == ["name"]
    checked = provider_host.Check(
        provider_pb2.CheckRequest(
            urn=urn, news=_struct({"__provider": blob, "name": "gastown-backups", "location_hint": "WEUR"})
        )
    )
    assert list(checked.failures) == []
    created = provider_host.Create(provider_pb2.CreateRequest(urn=urn, properties=checked.inputs))
    outs = rpc.deserialize_properties(created.properties)
    assert created.id == "gastown-backups"
    assert outs["s3_endpoint"] == f"https://{CF_ACCOUNT_ID}.r2.cloudflarestorage.com"
    assert outs["location"] == "weur"
    assert [b["name"] for b in cloudflare_emulator.snapshot()["buckets"].values()] == ["gastown-backups"]

    # Lifecycle: created over gRPC, then diffed against its own stored outputs (numbers now doubles).
    lc_blob = serialize_provider(R2LifecycleProvider())
    lc_urn = urn.replace(":R2Bucket::gastown-backups", ":R2BucketLifecycle::gastown-backups-lifecycle")
    news = {"__provider": lc_blob, "bucket": "gastown-backups", "rules": backup_lifecycle_rules()}
    lc_checked = provider_host.Check(provider_pb2.CheckRequest(urn=lc_urn, news=_struct(news)))
    lc_created = provider_host.Create(provider_pb2.CreateRequest(urn=lc_urn, properties=lc_checked.inputs))
    diff = provider_host.Diff(
        provider_pb2.DiffRequest(id=lc_created.id, urn=lc_urn, olds=lc_created.properties, news=lc_checked.inputs)
    )
    assert diff.changes == provider_pb2.DiffResponse.DIFF_NONE
    [bucket] = cloudflare_emulator.snapshot()["buckets"].values()
    assert {r["id"] for r in bucket["lifecycle"]["rules"]} == {ABORT_MULTIPART_RULE_ID}
