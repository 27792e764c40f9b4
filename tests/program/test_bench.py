"""Smoke test of `python bench/run.py --json`: it runs end to end on the real CLI with a tiny latency
model and a few towns, and reports what the performance issue asks for. No timing assertions: only
the keys, counts, the model's own arithmetic and the no-change guarantees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.run import GOALS, _failed_on_429, latency_model, necessary_chain_s, render_human, town_chain_s

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_SCALE = 0.01  # boots of 80 ms, checks passing 100 ms later
TOWNS = 3
FLEET = 2  # silos in the fleet preview (20 in a real run)
API_CREATES = 2  # creates at once through the provisioning API (20 in a real run)
FLEET_ARGS = ("--fleet", str(FLEET), "--parallel-stacks", "2", "--api-creates", str(API_CREATES))
REQUIRED = (
    "engine",
    "silo_up_wall_s",
    "necessary_chain_s",
    "towns100_up_wall_s",
    "town_chain_s",
    "noop_preview_1_s",
    "noop_preview_100_s",
    "fleet_preview_20_s",
    "fleet_parallel_stacks",
    "api_create_1_s",
    "api_create_20_s",
    "api_status_p99_ms",
    "api_lost_requests",
    "api_duplicates",
    "mutating_calls_noop_up",
    "failed_calls_429",
    "ratios",
    "goals_met",
    "model",
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--json", "--scale", str(TINY_SCALE), "--towns", str(TOWNS), *FLEET_ARGS],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one JSON object, got:\n{proc.stdout[-2000:]}"
    return json.loads(lines[0])


def test_json_has_the_required_keys_from_the_real_cli(report: dict[str, Any]) -> None:
    assert set(REQUIRED) <= set(report)
    assert report["engine"] == "pulumi"
    assert report["towns"] == TOWNS
    assert report["model"]["scale"] == TINY_SCALE


def test_lower_bounds_come_from_the_latency_model_alone(report: dict[str, Any]) -> None:
    model = latency_model(TINY_SCALE)
    assert report["necessary_chain_s"] == pytest.approx(necessary_chain_s(model), abs=1e-3)
    assert report["town_chain_s"] == pytest.approx(town_chain_s(model), abs=1e-3)
    # app + its two hidden answers, one call for IPs/secrets/volume, then two machines each booting
    # and passing their checks: pg, then the longest of the services that need it at boot.
    machine = model.call_s + model.boot_s + model.check_pass_s
    assert necessary_chain_s(model) == pytest.approx(3 * model.call_s + model.call_s + 2 * machine)


def test_ratios_and_goals_follow_the_measured_numbers(report: dict[str, Any]) -> None:
    ratios, goals = report["ratios"], report["goals_met"]
    assert ratios["silo_up"] == pytest.approx(report["silo_up_wall_s"] / report["necessary_chain_s"], rel=1e-2)
    assert ratios["towns_up"] == pytest.approx(report["towns100_up_wall_s"] / report["town_chain_s"], rel=1e-2)
    assert ratios["noop_preview"] == pytest.approx(report["noop_preview_100_s"] / report["noop_preview_1_s"], rel=1e-2)
    assert goals["silo_up_within_1_3x_necessary_chain"] == (ratios["silo_up"] <= GOALS["silo_up"])
    assert goals["towns_up_within_3x_town_chain"] == (ratios["towns_up"] <= GOALS["towns_up"])
    assert goals["noop_preview_100_within_5x_of_1"] == (ratios["noop_preview"] <= GOALS["noop_preview"])
    # The fleet's goal: <= 4 x one silo's preview x the silos / the stacks run at once.
    assert (report["fleet_stacks"], report["fleet_parallel_stacks"]) == (FLEET, 2)
    per_wave = report["noop_preview_1_s"] * FLEET / 2
    assert ratios["fleet_preview"] == pytest.approx(report["fleet_preview_20_s"] / per_wave, rel=1e-2)
    assert goals["fleet_preview_20_within_4x_noop_1_x_fleet_per_parallel"] == (
        ratios["fleet_preview"] <= GOALS["fleet_preview"]
    )


def test_the_api_benchmark_runs_every_create_once_while_status_calls_are_answered(report: dict[str, Any]) -> None:
    # Every accepted create ran to a running town, exactly once, while the existing towns (the bench silo's)
    # were asked for their status throughout.
    assert report["api_creates"] == API_CREATES
    assert report["api_lost_requests"] == 0 and report["goals_met"]["zero_api_lost_requests"] is True
    assert report["api_duplicates"] == 0 and report["goals_met"]["zero_api_duplicates"] is True
    assert report["api_existing_towns"] >= TOWNS and report["api_status_calls"] > 0
    ratios, goals = report["ratios"], report["goals_met"]
    assert ratios["api_create_1"] == pytest.approx(report["api_create_1_s"] / report["town_chain_s"], rel=1e-2)
    assert ratios["api_create_20"] == pytest.approx(report["api_create_20_s"] / report["town_chain_s"], rel=1e-2)
    assert goals["api_create_20_within_3x_town_chain"] == (ratios["api_create_20"] <= GOALS["api_create_20"])
    assert goals["api_status_p99_within_50ms"] == (report["api_status_p99_ms"] <= GOALS["api_status_p99_ms"])
    assert "API create:" in render_human(report)


def test_the_towns_up_creates_every_town_and_the_no_change_runs_touch_nothing(report: dict[str, Any]) -> None:
    by_route = report["api_calls_towns_up_by_route"]
    assert by_route["POST /v1/apps"] == TOWNS
    assert by_route["POST /v1/apps/{app}/machines"] == TOWNS
    assert by_route["POST /v1/apps/{app}/volumes"] == TOWNS
    assert report["mutating_calls_noop_up"] == 0
    assert report["goals_met"]["zero_mutating_calls_noop_up"] is True
    assert set(report["steps_noop_up_100"]) == {"same"}
    assert report["failed_calls_429"] == 0


def test_human_output_names_the_headline_numbers(report: dict[str, Any]) -> None:
    text = render_human(report)
    assert f"{report['towns']} towns up:" in text
    assert "necessary chain" in text and "no-op preview" in text and "429s:" in text


def _call(method: str, path: str, status: int) -> dict[str, Any]:
    return {"method": method, "path": path, "status": status}


def test_a_429_counts_as_failed_only_when_the_request_was_never_sent_again() -> None:
    retried = [_call("POST", "/v1/apps/a/machines", 429), _call("POST", "/v1/apps/a/machines", 201)]
    gave_up = [_call("POST", "/v1/apps/b/machines", 429), _call("GET", "/v1/apps/b/machines", 200)]
    assert _failed_on_429(retried) == 0
    assert _failed_on_429(gave_up) == 1
    assert _failed_on_429([*retried, *gave_up]) == 1
