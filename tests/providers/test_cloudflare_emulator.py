"""The Cloudflare R2 control-plane emulator over real HTTP: the rules the R2 providers rely on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cloudflare
import httpx
import pytest

from emulators.cloudflare import CloudflareEmulator
from tests.fixtures.cloudflare import CF_ACCOUNT_ID, CF_TOKEN

REPO = Path(__file__).resolve().parents[2]
BUCKETS_ROUTE = "/client/v4/accounts/{account_id}/r2/buckets"


def _error_code(response: httpx.Response) -> int:
    body = response.json()
    assert body["success"] is False and body["result"] is None
    return body["errors"][0]["code"]


# R2 bucket names are 3-63 characters (developers.cloudflare.com/r2/api/error-codes, 10005 InvalidBucketName).
@pytest.mark.parametrize("name", ["ab", "a" * 64, "-abc", "abc-", "Abc", "a_bc", "a.bc", ""])
def test_invalid_bucket_names_are_refused(cloudflare_api: httpx.Client, name: str) -> None:
    response = cloudflare_api.post("/r2/buckets", json={"name": name})
    assert response.status_code == 400
    assert _error_code(response) == 10005
    assert cloudflare_api.get("/r2/buckets").json()["result"]["buckets"] == []


def test_bucket_create_get_list_delete(cloudflare_api: httpx.Client) -> None:
    for name in ("abc", "b" * 63, "gastown-backups"):
        created = cloudflare_api.post("/r2/buckets", json={"name": name, "locationHint": "wnam"})
        assert created.status_code == 200, created.text
        assert created.json()["success"] is True
    got = cloudflare_api.get("/r2/buckets/gastown-backups").json()["result"]
    assert got["name"] == "gastown-backups"
    assert got["location"] == "WNAM"  # the API answers upper case; the provider normalises
    assert got["jurisdiction"] == "default" and got["storage_class"] == "Standard"

    first = cloudflare_api.get("/r2/buckets", params={"per_page": 2}).json()
    assert [b["name"] for b in first["result"]["buckets"]] == ["abc", "b" * 63]
    cursor = first["result_info"]["cursor"]
    second = cloudflare_api.get("/r2/buckets", params={"per_page": 2, "cursor": cursor}).json()
    assert [b["name"] for b in second["result"]["buckets"]] == ["gastown-backups"]
    assert second["result_info"]["cursor"] == ""

    assert cloudflare_api.delete("/r2/buckets/abc").status_code == 200
    missing = cloudflare_api.get("/r2/buckets/abc")
    assert missing.status_code == 404 and _error_code(missing) == 10006
    assert cloudflare_api.delete("/r2/buckets/abc").status_code == 404


def test_existing_name_conflicts_only_within_account_and_jurisdiction(
    cloudflare_emulator: CloudflareEmulator, cloudflare_api: httpx.Client
) -> None:
    assert cloudflare_api.post("/r2/buckets", json={"name": "backups"}).status_code == 200
    again = cloudflare_api.post("/r2/buckets", json={"name": "backups", "locationHint": "weur"})
    assert again.status_code == 409 and _error_code(again) == 10004
    eu = cloudflare_api.post("/r2/buckets", json={"name": "backups"}, headers={"cf-r2-jurisdiction": "eu"})
    assert eu.status_code == 200 and eu.json()["result"]["jurisdiction"] == "eu"
    other_account = httpx.post(
        f"{cloudflare_emulator.url}/client/v4/accounts/{'f' * 32}/r2/buckets",
        json={"name": "backups"},
        headers={"Authorization": f"Bearer {CF_TOKEN}"},
    )
    assert other_account.status_code == 200
    # The first creation's (default) placement stands: the second hint was not applied.
    assert cloudflare_api.get("/r2/buckets/backups").json()["result"]["location"] == "ENAM"


def test_a_bucket_holding_objects_cannot_be_deleted(
    cloudflare_emulator: CloudflareEmulator, cloudflare_api: httpx.Client
) -> None:
    cloudflare_api.post("/r2/buckets", json={"name": "backups"})
    cloudflare_emulator.put_object("backups", "gastown/t1/latest.json")

    refused = cloudflare_api.delete("/r2/buckets/backups")

    assert refused.status_code == 409 and _error_code(refused) == 10008
    assert cloudflare_api.get("/r2/buckets/backups").status_code == 200
    cloudflare_emulator.delete_object("backups", "gastown/t1/latest.json")
    assert cloudflare_api.delete("/r2/buckets/backups").status_code == 200


def test_already_exists_is_code_10004_with_the_configured_status(cloudflare_emulator: CloudflareEmulator) -> None:
    # Cloudflare documents the code, not one status for it: tests drive the provider with both.
    cloudflare_emulator.bucket_exists_status = 400
    with httpx.Client(
        base_url=f"{cloudflare_emulator.url}/client/v4/accounts/{CF_ACCOUNT_ID}",
        headers={"Authorization": f"Bearer {CF_TOKEN}"},
    ) as api:
        assert api.post("/r2/buckets", json={"name": "backups"}).status_code == 200
        again = api.post("/r2/buckets", json={"name": "backups"})
    assert again.status_code == 400 and _error_code(again) == 10004


def test_location_hint_and_jurisdiction_are_exclusive(cloudflare_api: httpx.Client) -> None:
    eu = {"cf-r2-jurisdiction": "eu"}
    both = cloudflare_api.post("/r2/buckets", json={"name": "backups", "locationHint": "weur"}, headers=eu)
    assert both.status_code == 400 and "jurisdiction" in both.json()["errors"][0]["message"]
    assert cloudflare_api.get("/r2/buckets", headers=eu).json()["result"]["buckets"] == []


def test_a_recreated_bucket_keeps_its_first_location(cloudflare_api: httpx.Client) -> None:
    assert cloudflare_api.post("/r2/buckets", json={"name": "backups", "locationHint": "weur"}).status_code == 200
    assert cloudflare_api.delete("/r2/buckets/backups").status_code == 200
    again = cloudflare_api.post("/r2/buckets", json={"name": "backups", "locationHint": "apac"})
    assert again.status_code == 200
    assert again.json()["result"]["location"] == "WEUR"


def test_bad_location_hint_and_storage_class(cloudflare_api: httpx.Client) -> None:
    assert cloudflare_api.post("/r2/buckets", json={"name": "abc", "locationHint": "mars"}).status_code == 400
    assert cloudflare_api.post("/r2/buckets", json={"name": "abc", "storageClass": "Glacier"}).status_code == 400
    hdr = {"cf-r2-jurisdiction": "moon"}
    assert cloudflare_api.post("/r2/buckets", json={"name": "abc"}, headers=hdr).status_code == 400


def test_lifecycle_default_rule_and_put_replaces_the_set(cloudflare_api: httpx.Client) -> None:
    cloudflare_api.post("/r2/buckets", json={"name": "backups"})
    rules = cloudflare_api.get("/r2/buckets/backups/lifecycle").json()["result"]["rules"]
    assert len(rules) == 1
    assert rules[0]["abortMultipartUploadsTransition"]["condition"] == {"type": "Age", "maxAge": 604800}
    # R2 answers a whole-bucket rule with empty conditions (issue 15, "R2 as it really behaves" 6).
    assert rules[0]["conditions"] == {}

    mine = [
        {
            "id": "backstop",
            "enabled": True,
            "conditions": {"prefix": "gastown/"},
            "deleteObjectsTransition": {"condition": {"type": "Age", "maxAge": 86400 * 30}},
        }
    ]
    assert cloudflare_api.put("/r2/buckets/backups/lifecycle", json={"rules": mine}).status_code == 200
    assert cloudflare_api.get("/r2/buckets/backups/lifecycle").json()["result"]["rules"] == mine

    bad = [{**mine[0], "deleteObjectsTransition": {"condition": {"type": "Age", "maxAge": -1}}}]
    refused = cloudflare_api.put("/r2/buckets/backups/lifecycle", json={"rules": bad})
    assert refused.status_code == 400 and "maxAge" in refused.json()["errors"][0]["message"]
    duplicate = cloudflare_api.put("/r2/buckets/backups/lifecycle", json={"rules": mine + mine})
    assert duplicate.status_code == 400
    assert cloudflare_api.get("/r2/buckets/backups/lifecycle").json()["result"]["rules"] == mine
    assert cloudflare_api.get("/r2/buckets/nope/lifecycle").status_code == 404


def test_lifecycle_put_is_refused_where_cloudflares_schema_refuses_it(cloudflare_api: httpx.Client) -> None:
    # The request schema (cloudflare-python, types/r2/buckets/lifecycle_update_params.py): conditions.prefix
    # is required ('' for the whole bucket) and an abort-multipart transition takes `type: "Age"` only.
    cloudflare_api.post("/r2/buckets", json={"name": "backups"})
    abort = {
        "id": "abort",
        "enabled": True,
        "conditions": {"prefix": ""},
        "abortMultipartUploadsTransition": {"condition": {"type": "Age", "maxAge": 86400}},
    }
    by_date = {"type": "Date", "date": "2030-01-01T00:00:00Z"}
    refused = {
        "abort by date": {**abort, "abortMultipartUploadsTransition": {"condition": by_date}},
        "empty conditions": {**abort, "conditions": {}},
        "no conditions": {k: v for k, v in abort.items() if k != "conditions"},
    }
    for case, rule in refused.items():
        answer = cloudflare_api.put("/r2/buckets/backups/lifecycle", json={"rules": [rule]})
        assert (answer.status_code, _error_code(answer)) == (400, 10001), case
    message = cloudflare_api.put("/r2/buckets/backups/lifecycle", json={"rules": [refused["abort by date"]]})
    assert (
        message.json()["errors"][0]["message"] == "rules[0].abortMultipartUploadsTransition.condition.type must be Age"
    )
    default = cloudflare_api.get("/r2/buckets/backups/lifecycle").json()["result"]["rules"]
    assert [r["id"] for r in default] == ["Default Multipart Abort Rule"]  # nothing refused was applied

    delete_by_date = {
        "id": "expire",
        "enabled": True,
        "conditions": {"prefix": "gastown/"},
        "deleteObjectsTransition": {"condition": by_date},
    }
    assert (
        cloudflare_api.put("/r2/buckets/backups/lifecycle", json={"rules": [abort, delete_by_date]}).status_code == 200
    )
    stored = cloudflare_api.get("/r2/buckets/backups/lifecycle").json()["result"]["rules"]
    assert stored == [{**abort, "conditions": {}}, delete_by_date]  # a whole-bucket rule reads back without a prefix


def test_every_answer_carries_a_cf_ray(cloudflare_emulator: CloudflareEmulator, cloudflare_api: httpx.Client) -> None:
    answers = [
        cloudflare_api.post("/r2/buckets", json={"name": "backups"}),
        cloudflare_api.get("/r2/buckets/missing"),
        httpx.get(f"{cloudflare_emulator.url}/client/v4/accounts/{CF_ACCOUNT_ID}/r2/buckets"),  # no token
    ]
    rays = [a.headers["cf-ray"] for a in answers]
    assert [c["cf_ray"] for c in cloudflare_emulator.calls()] == rays
    assert len(set(rays)) == 3 and all(re.fullmatch(r"[0-9a-f]{16}-[A-Z]{3}", r) for r in rays)


def test_cloudflares_own_library_drives_the_emulator(cloudflare_emulator: CloudflareEmulator) -> None:
    # What the providers send, sent by cloudflare-python itself: its paths, jurisdiction header and bodies.
    cf = cloudflare.Cloudflare(api_token=CF_TOKEN, base_url=cloudflare_emulator.api_url, max_retries=0)
    with cf:
        made = cf.r2.buckets.create(account_id=CF_ACCOUNT_ID, name="backups", location_hint="weur")
        eu = cf.r2.buckets.create(account_id=CF_ACCOUNT_ID, name="backups", cf_r2_jurisdiction="eu")
        assert (made.name, made.jurisdiction, eu.jurisdiction) == ("backups", "default", "eu")
        listed = cf.r2.buckets.list(account_id=CF_ACCOUNT_ID, cf_r2_jurisdiction="eu")
        assert [b.name for b in listed.buckets or []] == ["backups"]
        assert cf.r2.buckets.get("backups", account_id=CF_ACCOUNT_ID).location == "WEUR"

        cf.r2.buckets.lifecycle.update(
            "backups",
            account_id=CF_ACCOUNT_ID,
            rules=[
                {
                    "id": "expire",
                    "enabled": True,
                    "conditions": {"prefix": "gastown/"},
                    "delete_objects_transition": {"condition": {"type": "Age", "max_age": 86400}},
                    "abort_multipart_uploads_transition": {"condition": {"type": "Age", "max_age": 3600}},
                }
            ],
        )
        [rule] = cf.r2.buckets.lifecycle.get("backups", account_id=CF_ACCOUNT_ID).rules or []
        assert rule.delete_objects_transition and rule.delete_objects_transition.condition
        assert (rule.conditions.prefix, rule.delete_objects_transition.condition.max_age) == ("gastown/", 86400)
        with pytest.raises(cloudflare.BadRequestError):
            cf.r2.buckets.lifecycle.update(
                "backups",
                account_id=CF_ACCOUNT_ID,
                rules=[
                    {
                        "id": "abort",
                        "enabled": True,
                        "conditions": {"prefix": ""},
                        # Not what the type allows, and not what the API takes.
                        "abort_multipart_uploads_transition": {"condition": {"type": "Date", "date": "2030-01-01"}},
                    }
                ],
            )

        creds = cf.r2.temporary_credentials.create(
            account_id=CF_ACCOUNT_ID,
            bucket="backups",
            parent_access_key_id="parent-key",
            permission="object-read-only",
            ttl_seconds=3600,
            prefixes=["gastown/t1/"],
        )
        assert creds.access_key_id and creds.secret_access_key and creds.session_token
        cf.r2.buckets.delete("backups", account_id=CF_ACCOUNT_ID, cf_r2_jurisdiction="eu")
        with pytest.raises(cloudflare.NotFoundError):
            cf.r2.buckets.get("backups", account_id=CF_ACCOUNT_ID, cf_r2_jurisdiction="eu")
    [issued] = cloudflare_emulator.snapshot()["temp_credentials"]
    assert (issued["prefixes"], issued["permission"], issued["ttlSeconds"]) == (
        ["gastown/t1/"],
        "object-read-only",
        3600,
    )
    assert [c["status"] for c in cloudflare_emulator.calls()] == [200, 200, 200, 200, 200, 200, 400, 200, 200, 404]


def test_temp_credentials_record_their_scope(
    cloudflare_emulator: CloudflareEmulator, cloudflare_api: httpx.Client
) -> None:
    cloudflare_api.post("/r2/buckets", json={"name": "backups"})
    body = {
        "bucket": "backups",
        "parentAccessKeyId": "parent-key",
        "permission": "object-read-write",
        "ttlSeconds": 3600,
        "prefixes": ["gastown/t1/"],
    }
    issued = cloudflare_api.post("/r2/temp-access-credentials", json=body).json()["result"]
    assert set(issued) == {"accessKeyId", "secretAccessKey", "sessionToken"}
    assert all(issued.values())
    [record] = cloudflare_emulator.snapshot()["temp_credentials"]
    assert record["prefixes"] == ["gastown/t1/"] and record["permission"] == "object-read-write"
    assert record["accessKeyId"] == issued["accessKeyId"]
    assert "secretAccessKey" not in record and "sessionToken" not in record

    assert cloudflare_api.post("/r2/temp-access-credentials", json={**body, "bucket": "nope"}).status_code == 404
    # ttlSeconds is at most 604800, a week (Cloudflare API reference, R2 > Temporary Credentials).
    for bad in (
        {"permission": "root"},
        {"ttlSeconds": 0},
        {"ttlSeconds": 604801},
        {"parentAccessKeyId": ""},
        {"prefixes": "gastown/"},
    ):
        assert cloudflare_api.post("/r2/temp-access-credentials", json={**body, **bad}).status_code == 400
    assert cloudflare_api.post("/r2/temp-access-credentials", json={**body, "ttlSeconds": 604800}).status_code == 200


def test_temp_credentials_take_no_jurisdiction(cloudflare_api: httpx.Client) -> None:
    # The API defines no cf-r2-jurisdiction header for this call (Cloudflare's SDKs send none), so a
    # bucket that exists only in the EU jurisdiction is not found, header or not.
    eu = {"cf-r2-jurisdiction": "eu"}
    cloudflare_api.post("/r2/buckets", json={"name": "eu-backups"}, headers=eu)
    body = {
        "bucket": "eu-backups",
        "parentAccessKeyId": "parent-key",
        "permission": "object-read-write",
        "ttlSeconds": 3600,
    }
    missing = cloudflare_api.post("/r2/temp-access-credentials", json=body, headers=eu)
    assert missing.status_code == 404 and _error_code(missing) == 10006


def test_account_tokens_value_only_on_create(
    cloudflare_emulator: CloudflareEmulator, cloudflare_api: httpx.Client
) -> None:
    groups = cloudflare_api.get("/tokens/permission_groups").json()["result"]
    write = next(g["id"] for g in groups if g["name"] == "Workers R2 Storage Bucket Item Write")
    policy = {
        "effect": "allow",
        "permission_groups": [{"id": write}],
        "resources": {f"com.cloudflare.edge.r2.bucket.{CF_ACCOUNT_ID}_default_backups": "*"},
    }
    created = cloudflare_api.post("/tokens", json={"name": "town-sync", "policies": [policy]}).json()["result"]
    assert created["value"] and created["status"] == "active"
    fetched = cloudflare_api.get(f"/tokens/{created['id']}").json()["result"]
    assert fetched["name"] == "town-sync" and "value" not in fetched
    assert "value" not in cloudflare_emulator.snapshot()["tokens"][created["id"]]

    # A minted token authenticates until it is deleted.
    as_token = {"Authorization": f"Bearer {created['value']}"}
    assert cloudflare_api.get("/r2/buckets", headers=as_token).status_code == 200
    assert cloudflare_api.delete(f"/tokens/{created['id']}").json()["result"] == {"id": created["id"]}
    assert cloudflare_api.get(f"/tokens/{created['id']}").status_code == 404
    assert cloudflare_api.get("/r2/buckets", headers=as_token).status_code == 403

    unknown_group = {**policy, "permission_groups": [{"id": "nope"}]}
    assert cloudflare_api.post("/tokens", json={"name": "x", "policies": [unknown_group]}).status_code == 400


def test_missing_and_invalid_tokens(cloudflare_emulator: CloudflareEmulator) -> None:
    url = f"{cloudflare_emulator.url}/client/v4/accounts/{CF_ACCOUNT_ID}/r2/buckets"
    missing = httpx.get(url)
    assert missing.status_code == 401 and _error_code(missing) == 10000
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403 and _error_code(wrong) == 9109
    assert [c["status"] for c in cloudflare_emulator.calls()] == [401, 403]


def test_injected_failures_before_and_after_effect(
    cloudflare_emulator: CloudflareEmulator, cloudflare_api: httpx.Client
) -> None:
    cloudflare_emulator.fail("POST", BUCKETS_ROUTE, nth=2, status=503)
    assert cloudflare_api.post("/r2/buckets", json={"name": "one"}).status_code == 200
    assert cloudflare_api.post("/r2/buckets", json={"name": "two"}).status_code == 503
    assert cloudflare_api.get("/r2/buckets/two").status_code == 404  # failed before the effect

    cloudflare_emulator.fail("POST", BUCKETS_ROUTE, after_effect=True)
    lost = cloudflare_api.post("/r2/buckets", json={"name": "three"})
    assert lost.status_code == 500 and lost.json()["success"] is False
    assert cloudflare_api.get("/r2/buckets/three").status_code == 200  # the change happened anyway
    posts = [c for c in cloudflare_emulator.calls() if c["method"] == "POST"]
    assert [(c["route"], c["status"], c["mutating"]) for c in posts] == [
        (BUCKETS_ROUTE, 200, True),
        (BUCKETS_ROUTE, 503, True),
        (BUCKETS_ROUTE, 500, True),
    ]


def test_http_controls(cloudflare_emulator: CloudflareEmulator, cloudflare_api: httpx.Client) -> None:
    control = f"{cloudflare_emulator.url}/__emulator"
    assert (
        httpx.post(f"{control}/fail", json={"method": "GET", "route": BUCKETS_ROUTE, "status": 502}).status_code == 200
    )
    assert cloudflare_api.get("/r2/buckets").status_code == 502
    cloudflare_api.post("/r2/buckets", json={"name": "kept"})
    snapshot = httpx.get(f"{control}/snapshot").json()
    assert [b["name"] for b in snapshot["buckets"].values()] == ["kept"]
    assert httpx.post(f"{control}/reset").status_code == 200
    assert httpx.get(f"{control}/snapshot").json()["buckets"] == {}


def test_serve_keeps_state_in_its_file(tmp_path: Path) -> None:
    state = tmp_path / "cloudflare.json"

    def run_once(name: str) -> list[str]:
        code = (
            "import sys; from emulators.cloudflare import serve; "
            f"serve('127.0.0.1', 0, sys.argv[1], token={CF_TOKEN!r})"
        )
        proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code, str(state)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            api_url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
            assert api_url.endswith("/client/v4"), api_url
            headers = {"Authorization": f"Bearer {CF_TOKEN}"}
            base = f"{api_url}/accounts/{CF_ACCOUNT_ID}/r2/buckets"
            assert httpx.post(base, json={"name": name}, headers=headers).status_code == 200
            return [b["name"] for b in httpx.get(base, headers=headers).json()["result"]["buckets"]]
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    assert run_once("first") == ["first"]
    assert run_once("second") == ["first", "second"]
