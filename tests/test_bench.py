"""Smoke test of `python bench/run.py`: it runs end to end with a tiny latency model and reports what
the issue asks for. No timing assertions: only counts, structure and the model's own arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.run import latency_model, op_cost, render_human

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_SCALE = 0.01  # boots of 80 ms, checks passing 100 ms later: the whole script takes a few seconds
REQUIRED = (
    "up_wall_s",
    "critical_path_s",
    "sequential_baseline_s",
    "api_calls_up",
    "mutating_calls_noop_up",
    "api_calls_noop_preview",
    "ratio",
    "goal_met",
    "model",
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--json", "--scale", str(TINY_SCALE)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one JSON object, got:\n{proc.stdout[-2000:]}"
    return json.loads(lines[0])


def test_json_has_the_required_keys_and_the_model_it_used(report: dict[str, Any]) -> None:
    assert set(REQUIRED) <= set(report)
    model = report["model"]
    assert model["scale"] == TINY_SCALE
    assert model["boot_s"] == pytest.approx(model["full_scale"]["boot_s"] * TINY_SCALE)
    assert set(report["goal_met"]) == {
        "up_within_1_2x_critical_path",
        "zero_mutating_calls_noop_up",
        "zero_api_calls_noop_preview",
    }
    assert report["ratio"] == pytest.approx(report["up_wall_s"] / report["critical_path_s"], rel=1e-2)


def test_up_creates_the_silo_and_every_call_is_attributed(report: dict[str, Any]) -> None:
    by_kind = report["api_calls_up_by_kind"]
    assert report["unattributed_calls_up"] == 0
    assert sum(by_kind.values()) == report["api_calls_up"]
    assert {"App", "IpAssignment", "Secrets", "Volume", "Machine", "Exec"} == set(by_kind)
    assert report["steps_up"].get("create", 0) > 0 and "update" not in report["steps_up"]


def test_no_change_up_and_preview_touch_nothing(report: dict[str, Any]) -> None:
    assert report["mutating_calls_noop_up"] == 0
    assert report["api_calls_noop_preview"] == 0
    assert report["goal_met"]["zero_mutating_calls_noop_up"] is True
    assert report["goal_met"]["zero_api_calls_noop_preview"] is True
    assert set(report["steps_noop_up"]) == {"same"} == set(report["steps_noop_preview"])


def test_critical_path_is_the_machine_chain_and_bounds_the_baseline(report: dict[str, Any]) -> None:
    cp = report["critical_path"]
    assert report["critical_path_s"] == pytest.approx(max(cp["longest_chain_s"], cp["busy_bound_s"]), abs=1e-3)
    # The seed's one-at-a-time order pays for every operation; the graph only for its longest chain.
    assert report["sequential_baseline_s"] == pytest.approx(cp["provider_busy_s"], abs=1e-2)
    assert report["sequential_baseline_s"] > report["critical_path_s"]
    assert list(report["sequential_by_service_s"]) == ["pg", "rest", "auth", "kong", "storage", "meta", "studio"]
    machines = [s["resource"] for s in cp["chain"] if s["resource"].endswith("-machine")]
    # pg -> meta -> studio -> kong: each machine waits for its upstreams to be healthy.
    assert machines == [f"devenv-acme-erp-{s}-machine" for s in ("pg", "meta", "studio", "kong")]


def test_human_output_names_the_headline_numbers(report: dict[str, Any]) -> None:
    text = render_human(report)
    assert f"{report['api_calls_up']} API calls" in text
    assert "critical path:" in text and "sequential baseline:" in text
    assert "devenv-acme-erp-kong-machine" in text


def _call(method: str, route: str, path: str) -> dict[str, Any]:
    return {"method": method, "route": route, "path": path, "t": 0.0}


def test_op_cost_overlaps_boot_with_calls_and_counts_a_repeated_poll_once() -> None:
    model = latency_model(1.0)  # call 0.15, boot 8, checks pass 10 s after start
    m = "/v1/apps/a/machines/m1"
    route = "/v1/apps/{app}/machines/{machine_id}"
    calls = [
        _call("GET", "/v1/apps/{app}/machines", "/v1/apps/a/machines"),
        _call("POST", "/v1/apps/{app}/machines", "/v1/apps/a/machines"),
        _call("GET", route, m),
        _call("GET", route + "/wait", m + "/wait"),
        *[_call("GET", route, m) for _ in range(5)],  # health-check polls: one counts
    ]
    # list + create reach the server at 0.30 s; started at 8.30; checks pass at 18.30.
    assert op_cost(calls, model) == pytest.approx(0.30 + 8.0 + 10.0)
    # Without the machine: plain calls cost call_s each.
    assert op_cost(calls[:1] * 3, model) == pytest.approx(0.45)
