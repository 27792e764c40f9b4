"""The provisioning API (issue 24) as a caller sees it: a uvicorn server on loopback reached with httpx,
running towns through the real CLI on the emulators and a real PostgreSQL (tests/fixtures/service.py).

One service is shared by the module; each test works with users of its own.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from components.domain.naming import sandbox_id
from service.auth import ROUTES, Role
from tests.fixtures.service import ServiceWorld

pytestmark = [pytest.mark.db, pytest.mark.engine]
NOBODY = "00000000-0000-0000-0000-000000000000"

# Every route, with a target that exists for no one: an allowed role gets past auth to a 404 or 422,
# never running anything; a role that is not allowed gets 403 first.
ROUTE_CALLS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("towns.create", "POST", "/v1/towns", {"user_id": "", "name": "x"}),
    ("towns.list", "GET", "/v1/towns?user_id=nobody", None),
    ("towns.get", "GET", f"/v1/towns/{NOBODY}", None),
    ("towns.stop", "POST", f"/v1/towns/{NOBODY}/stop", None),
    ("towns.start", "POST", f"/v1/towns/{NOBODY}/start", None),
    ("towns.delete", "DELETE", f"/v1/towns/{NOBODY}", None),
    ("towns.rigs.add", "POST", f"/v1/towns/{NOBODY}/rigs", {"name": "web", "url": "https://github.com/a/b.git"}),
    ("towns.rigs.remove", "DELETE", f"/v1/towns/{NOBODY}/rigs/web", None),
    ("operations.get", "GET", f"/v1/operations/{NOBODY}", None),
    ("silos.get", "GET", "/v1/silos/nope", None),
    ("silos.start", "POST", "/v1/silos/nope/start", None),
    ("silos.stop", "POST", "/v1/silos/nope/stop", None),
    ("silos.connection_info", "GET", "/v1/silos/nope/connection-info", None),
]


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def test_every_route_answers_every_role_as_the_matrix_says(api_world: ServiceWorld) -> None:
    assert {name for name, *_ in ROUTE_CALLS} == set(ROUTES)  # the matrix and this walk name the same routes
    for name, method, path, body in ROUTE_CALLS:
        with api_world.client(None) as anonymous, api_world.client(None, Authorization="Bearer forged") as forged:
            assert anonymous.request(method, path, json=body).status_code == 401, name
            assert forged.request(method, path, json=body).status_code == 401, name
        for role in Role:
            with api_world.client(role, **{"X-User-Id": "nobody"}) as client:
                status = client.request(method, path, json=body).status_code
            if role in ROUTES[name]:
                assert status in (200, 404, 422), (name, role, status)
            else:
                assert status == 403, (name, role, status)
    # The heartbeat takes a town's token, and no caller's.
    with api_world.client(Role.BACKEND) as backend:
        report = {"event": "r2_sync", "status": "ok"}
        assert backend.post("/api/gastown/heartbeat", json=report).status_code == 401


def test_the_openapi_schema_is_served_for_the_backends_client(api_world: ServiceWorld) -> None:
    spec = httpx.get(f"{api_world.url}/openapi.json").json()
    assert {"/v1/towns", "/v1/towns/{town_id}", "/api/gastown/heartbeat", "/v1/silos/{silo}/start"} <= set(
        spec["paths"]
    )
    assert "TownCreate" in spec["components"]["schemas"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u", "name": ""}, "name"),
        ({"user_id": "", "name": "alpha"}, "user_id"),
        ({"user_id": "u", "name": "alpha", "rigs": [{"name": "web", "url": "https://tok@github.com/a/b.git"}]}, "url"),
        ({"user_id": "u", "name": "alpha", "rigs": [{"name": "web", "url": "https://github.com/a/b.git?x=1"}]}, "url"),
        ({"user_id": "u", "name": "alpha", "rigs": [{"name": "Web!", "url": "https://github.com/a/b.git"}]}, "name"),
        ({"user_id": "u", "name": "x" * 101}, "name"),
        (
            {"user_id": "u", "name": "a", "rigs": [{"name": f"r{i}", "url": "https://h/x.git"} for i in range(21)]},
            "rigs",
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api_world: ServiceWorld, body: dict[str, Any], field: str) -> None:
    with api_world.client(Role.BACKEND) as backend:
        answer = backend.post("/v1/towns", json=body)
    assert answer.status_code == 422, answer.text
    assert any(field in [str(part) for part in d["loc"]] for d in answer.json()["detail"]), answer.json()
    assert "tok@" not in answer.text  # a credential in a URL is never echoed back


def test_a_town_made_through_the_api_runs_reports_heartbeats_and_previews_clean(api_world: ServiceWorld) -> None:
    owner = user()
    with api_world.client(Role.BACKEND, **{"X-User-Id": owner}) as backend:
        created = backend.post(
            "/v1/towns?wait=true",
            json={
                "user_id": owner,
                "name": "alpha",
                "rigs": [{"name": "web", "url": "https://github.com/acme/web.git"}],
            },
        )
        assert created.status_code == 200, created.text
        town = created.json()
        assert town["operation"]["status"] == "succeeded", town["operation"]
        sid = town["sandbox_id"]
        assert sid == sandbox_id(owner, "alpha")

        shown = backend.get(f"/v1/towns/{town['id']}").json()
        assert shown["status"] == "running" and shown["fly_app"] == sid and shown["fly_machine_id"]
        assert shown["region"] == "yul" and [r["name"] for r in shown["rigs"]] == ["web"]
        assert [t["id"] for t in backend.get("/v1/towns", params={"user_id": owner}).json()] == [town["id"]]

        # Another user sees nothing of it: a 404, not a 403.
        with api_world.client(Role.BACKEND, **{"X-User-Id": user()}) as stranger:
            assert stranger.get(f"/v1/towns/{town['id']}").status_code == 404

        # The same create again is the same town; with other rigs it is a conflict.
        again = backend.post("/v1/towns", json={"user_id": owner, "name": "alpha", "rigs": [
            {"name": "web", "url": "https://github.com/acme/web.git"}]})  # fmt: skip
        assert again.status_code == 200 and again.json()["id"] == town["id"]
        other = backend.post("/v1/towns", json={"user_id": owner, "name": "alpha", "rigs": []})
        assert other.status_code == 409

    # The town's own heartbeat token (its Fly secret KILO_JWT) moves its row, and only its row.
    token = town_token(api_world, sid)
    report = {"town_id": town["id"], "event": "r2_sync", "status": "ok", "reported_at": "2026-12-07T10:00:00Z"}
    assert httpx.post(f"{api_world.url}/api/gastown/heartbeat", json=report, headers=bearer(token)).status_code == 204
    with api_world.client(Role.BACKEND, **{"X-User-Id": owner}) as backend:
        shown = backend.get(f"/v1/towns/{town['id']}").json()
    assert shown["last_heartbeat_at"] and shown["last_r2_sync_at"].startswith("2026-12-07T10:00:00")
    assert shown["boot_phase"] == "r2_sync: ok"

    # `pulumi preview` of the town's stack shows no change: the API and a person manage the same resources.
    preview = api_world.town_stack(sid).run_config("preview", stack_config(api_world, sid))
    assert preview.ok and preview.changed() == {}, preview.steps


def test_a_town_cannot_report_for_another_town(api_world: ServiceWorld) -> None:
    first, second = user(), user()
    towns = {}
    with api_world.client(Role.BACKEND) as backend:
        for owner in (first, second):
            answer = backend.post("/v1/towns?wait=true", json={"user_id": owner, "name": "beta", "rigs": []})
            assert answer.status_code == 200 and answer.json()["operation"]["status"] == "succeeded", answer.text
            towns[owner] = answer.json()
    token = town_token(api_world, towns[first]["sandbox_id"])
    forged = {"town_id": towns[second]["id"], "event": "r2_sync", "status": "ok"}
    assert httpx.post(f"{api_world.url}/api/gastown/heartbeat", json=forged, headers=bearer(token)).status_code == 403
    assert (
        httpx.post(f"{api_world.url}/api/gastown/heartbeat", json=forged, headers=bearer("x" * 43)).status_code == 401
    )
    with psycopg.connect(api_world.dsn) as conn:
        beats = conn.execute(
            "SELECT last_heartbeat_at FROM gastown_towns WHERE id = %s", (towns[second]["id"],)
        ).fetchone()
    assert beats == (None,)
    # The registry keeps the token's digest only.
    with psycopg.connect(api_world.dsn) as conn:
        stored = conn.execute(
            "SELECT heartbeat_token_sha256 FROM gastown_towns WHERE id = %s", (towns[first]["id"],)
        ).fetchone()
    assert stored == (hashlib.sha256(token.encode()).hexdigest(),)


def test_concurrent_creates_lose_nothing_and_a_duplicate_racing_itself_makes_one_town(api_world: ServiceWorld) -> None:
    owners = [user() for _ in range(6)]
    twin = user()
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def create(owner: str) -> None:
        with api_world.client(Role.BACKEND) as backend:
            answer = backend.post("/v1/towns", json={"user_id": owner, "name": "gamma", "rigs": []})
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=create, args=(o,)) for o in [*owners, *[twin] * 5]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(a.status_code in (200, 202, 409) for a in answers), [a.text for a in answers]
    by_owner: dict[str, set[str]] = {}
    for answer in answers:
        if answer.status_code in (200, 202):
            body = answer.json()
            by_owner.setdefault(body["sandbox_id"], set()).add(body["id"])
    assert all(len(ids) == 1 for ids in by_owner.values())  # one town id per user, however many asked
    operations = [a.json()["operation_id"] for a in answers if a.status_code == 202]
    with api_world.client(Role.BACKEND) as backend:
        ended = [api_world.wait(backend, op) for op in operations]
    assert [op["status"] for op in ended] == ["succeeded"] * len(ended), ended
    with psycopg.connect(api_world.dsn) as conn:
        rows = conn.execute(
            "SELECT user_id, status FROM gastown_towns WHERE town_name = 'gamma' AND destroyed_at IS NULL "
            "AND user_id = ANY(%s)",
            ([*owners, twin],),
        ).fetchall()
    assert sorted(rows) == sorted((o, "running") for o in [*owners, twin])
    snap = api_world.fly.snapshot()
    for owner in [*owners, twin]:
        sid = sandbox_id(owner, "gamma")
        assert [m["app"] for m in snap["machines"].values()].count(sid) == 1, owner


def test_an_idempotency_key_replays_the_first_answer(api_world: ServiceWorld) -> None:
    owner = user()
    with api_world.client(Role.BACKEND, **{"Idempotency-Key": f"key-{owner}"}) as backend:
        body = {"user_id": owner, "name": "delta", "rigs": []}
        first = backend.post("/v1/towns", json=body)
        second = backend.post("/v1/towns", json=body)
        assert first.status_code == second.status_code == 202
        assert first.json() == second.json()
        other = backend.post("/v1/towns", json={**body, "name": "epsilon"})
        assert other.status_code == 422 and "Idempotency-Key" in str(other.json()["detail"])
        api_world.wait(backend, first.json()["operation_id"])


def test_stop_start_rigs_and_delete(api_world: ServiceWorld) -> None:
    owner = user()
    with api_world.client(Role.BACKEND, **{"X-User-Id": owner}) as backend:
        town = backend.post("/v1/towns?wait=true", json={"user_id": owner, "name": "zeta", "rigs": []}).json()
        town_id, sid = town["id"], town["sandbox_id"]

        def machine_state() -> str:
            [machine] = [m for m in api_world.fly.snapshot()["machines"].values() if m["app"] == sid]
            return machine["state"]

        stopped = backend.post(f"/v1/towns/{town_id}/stop?wait=true").json()
        assert stopped["operation"]["status"] == "succeeded", stopped
        assert backend.get(f"/v1/towns/{town_id}").json()["status"] == "stopped" and machine_state() == "stopped"
        started = backend.post(f"/v1/towns/{town_id}/start?wait=true").json()
        assert started["operation"]["status"] == "succeeded"
        assert backend.get(f"/v1/towns/{town_id}").json()["status"] == "running"

        rig = {"name": "api", "url": "https://github.com/acme/api.git", "branch": "main"}
        added = backend.post(f"/v1/towns/{town_id}/rigs?wait=true", json=rig).json()
        assert added["operation"]["status"] == "succeeded"
        assert backend.post(f"/v1/towns/{town_id}/rigs", json=rig).status_code == 409
        with psycopg.connect(api_world.dsn) as conn:
            rigs = conn.execute(
                "SELECT rig_name, status FROM gastown_rigs WHERE town_id = %s ORDER BY rig_name", (town_id,)
            ).fetchall()
        assert rigs == [("api", "active")]
        removed = backend.delete(f"/v1/towns/{town_id}/rigs/api?wait=true").json()
        assert removed["operation"]["status"] == "succeeded"

        deleted = backend.delete(f"/v1/towns/{town_id}?wait=true").json()
        assert deleted["operation"]["status"] == "succeeded", deleted
        assert backend.get(f"/v1/towns/{town_id}").status_code == 404
    assert sid not in api_world.fly.snapshot()["apps"]  # the service allows data deletion here
    with psycopg.connect(api_world.dsn) as conn:
        assert conn.execute("SELECT status FROM gastown_towns WHERE id = %s", (town_id,)).fetchone() == ("destroyed",)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def town_token(world: ServiceWorld, sid: str) -> str:
    """The heartbeat token the town's machine got (its FlySecrets' generated KILO_JWT), from its state."""
    state = world.town_stack(sid).state()
    [secrets] = [r for r in state.resources.values() if r.type.endswith("fly:Secrets")]
    return secrets.outputs["generated"]["KILO_JWT"]


def stack_config(world: ServiceWorld, sid: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((world.towns_dir / f"Pulumi.town-{sid}.yaml").read_text())["config"]
