#!/usr/bin/env python
"""Benchmark: bring up `Pulumi.dev.yaml` on the Fly emulator with the real Pulumi CLI, then compare the
measured wall time with the lower bound the latency model allows.

    python bench/run.py [--json] [--scale 0.5] [--stack-file Pulumi.dev.yaml]

What runs (each operation is the real `pulumi` CLI through the Automation API; the engine starts a
`python -m pulumi.dynamic` provider host, which serves at most 4 provider calls at once):
  1. `up` on an empty emulator                -> up_wall_s, api_calls_up, the recorded call log
  2. `up` again with no change                 -> mutating_calls_noop_up
  3. `preview` with no change                  -> api_calls_noop_preview

Latency model (full scale, `--scale 1`; every value is multiplied by --scale):
  call_s       0.15 s  one Machines API round trip (request + server work + response). Assumption:
                       100-200 ms from a developer machine or CI to api.machines.dev; the reference
                       sheets give no latency figure.
  boot_s       8 s     create/start -> `started`: a new machine pulls its image (the Supabase images are
                       hundreds of MB) and boots. Assumption: "a few seconds" for cached/small images,
                       longer on a cold pull.
  check_pass_s 10 s    `started` -> every health check passing. Our checks run every 15 s
                       (components/services.py HealthCheck.interval) and the services need a few
                       seconds to listen, so the first passing result comes some seconds after start.
  stop_s 3 s, destroy_s 2 s (not exercised by an up from empty; kept for completeness).
  Calibration: the seed (seeds/004, "Provisioning") deploys the services one after another and says
  health checks pass in "typically 2-3 minutes"; the sequential baseline under this model is ~2.5 min.
The default --scale 0.5 keeps the whole benchmark under a minute (about 45 s on 2 cores). Fixed
client-side costs (process start-up ~0.9 s, gRPC, the client's health-check poll cadence) do not
scale, so small scales inflate the ratio.

critical_path_s (the lower bound for this model) = max(longest_chain_s, provider_busy_s / 4):
  * Every recorded API call of the `up` is attributed to the resource that made it, from its path
    (`/v1/apps/{app}/<kind>/...`) and the checkpoint (app name and id per resource). `POST /v1/apps`
    carries no app name in its path: the k-th one (by start time) goes to the app whose first
    `GET /v1/apps/{app}` is the k-th. An exec call and the `GET machine` right before it belong to the
    FlyExec resource. Calls on a route shared by several resources of one app (Kong's two IP
    assignments) are split evenly between them.
  * The cost of one resource's operation is what the model charges for its calls, replayed in order
    with ideal polling: each call costs call_s; a create/start/update of a machine makes it `started`
    boot_s after that call reaches the server (later calls overlap the boot); a `wait` returns no earlier
    than that; the health-check `GET` returns no earlier than check_pass_s after `started`. Repeated
    identical polls (`GET` machine, `wait`, `GET` app) count once: extra polls are client overhead,
    not work the model requires.
  * longest_chain_s: the longest path through the dependency graph in the checkpoint
    (`dependencies` per resource), weighting each resource by its cost. Resources without API calls
    (random passwords, components) cost 0.
  * provider_busy_s: the sum of all costs. A provider call holds one of the host's 4 slots for its
    whole duration (boots and check waits included), so no schedule beats provider_busy_s / 4.

sequential_baseline_s: the seed's order, postgres -> postgrest -> gotrue -> kong -> storage -> studio
(meta, which the seed does not list, goes before studio, its dependent), one operation at a time, each
service fully created and healthy before the next: the sum of every resource's cost above, grouped by
service (the pg service includes the RLS exec). It is computed from the model and the per-service calls
measured in this run, not measured (forcing the engine to serialise would need a product change).

up_wall_s is the whole `pulumi up` as the caller sees it: CLI start, program,
provider host start, every provider call and the final checkpoint. startup_s (launch -> first API
call) is reported separately, with ratio_excluding_startup next to the honest ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from components.config import ConfigError, SiloConfig, load_stack_file  # noqa: E402
from emulators.fly import FlyEmulator, LatencyModel  # noqa: E402
from engine.runner import RunResult, export_state  # noqa: E402
from engine.runner import run as run_op  # noqa: E402
from engine.state import StackState  # noqa: E402
from engine.workspace import make_project, select_stack, workspace  # noqa: E402

STACK = "dev"
FLY_TYPE = "pulumi-python:dynamic/fly:"
PROVIDER_SLOTS = 4  # the dynamic provider host's gRPC worker count (pulumi.dynamic's server)
GOAL_RATIO = 1.2
DEFAULT_SCALE = 0.5
RUN_TIMEOUT_S = 600

FULL_SCALE_MODEL = LatencyModel(call_s=0.15, boot_s=8.0, stop_s=3.0, destroy_s=2.0, check_pass_s=10.0)
MODEL_SOURCES = {
    "call_s": "assumption: 100-200 ms per Machines API round trip to api.machines.dev",
    "boot_s": "assumption: image pull + boot of a new machine, a few seconds",
    "check_pass_s": "checks every 15 s (components/services.py); first pass a few seconds after start",
    "stop_s": "assumption (unused by an up from empty)",
    "destroy_s": "assumption (unused by an up from empty)",
    "calibration": "seeds/004: sequential provisioning, health checks 'typically 2-3 minutes'",
}
# The seed's deploy order (seeds/004 "Provisioning"), as service names; meta is not in the seed and
# goes before studio, which needs it.
SEED_ORDER = ("pg", "rest", "auth", "kong", "storage", "meta", "studio")

MACHINE_ROUTE = "/v1/apps/{app}/machines/{machine_id}"
CREATE_MACHINE = ("POST", "/v1/apps/{app}/machines")
BOOTS = {CREATE_MACHINE, ("POST", MACHINE_ROUTE), ("POST", MACHINE_ROUTE + "/start"),
         ("POST", MACHINE_ROUTE + "/restart")}  # fmt: skip
POLLS = {("GET", MACHINE_ROUTE), ("GET", MACHINE_ROUTE + "/wait"), ("GET", "/v1/apps/{app}")}
KIND_BY_SEGMENT = {None: "App", "ip_assignments": "IpAssignment", "secrets": "Secrets",
                   "volumes": "Volume", "machines": "Machine"}  # fmt: skip


def latency_model(scale: float) -> LatencyModel:
    if scale <= 0:
        raise ValueError(f"--scale must be > 0 (got {scale})")
    return LatencyModel(**{k: v * scale for k, v in asdict(FULL_SCALE_MODEL).items()})


# -- attributing calls to resources ----------------------------------------------------------------
@dataclass(frozen=True)
class FlyResource:
    urn: str
    name: str
    kind: str  # App, IpAssignment, Secrets, Volume, Machine, Exec
    app: str
    id: str
    machine_id: str = ""  # Exec: the machine it runs on


def fly_resources(state: StackState) -> list[FlyResource]:
    out = []
    for res in state.resources.values():
        if not res.type.startswith(FLY_TYPE):
            continue
        kind = res.type.removeprefix(FLY_TYPE)
        app = str(res.inputs.get("name") if kind == "App" else res.inputs.get("app"))
        out.append(FlyResource(res.urn, res.name, kind, app, res.id, str(res.outputs.get("machine_id") or "")))
    return out


def _path_parts(path: str) -> tuple[str | None, str | None, str | None]:
    """(app, kind segment, object id) of `/v1/apps/{app}/{kind}/{id}/...`."""
    segs = path.strip("/").split("/")[2:]  # drop "v1", "apps"
    return (segs[0] if segs else None, segs[1] if len(segs) > 1 else None, segs[2] if len(segs) > 2 else None)


def attribute_calls(
    calls: Sequence[Mapping[str, Any]], resources: Sequence[FlyResource]
) -> tuple[dict[tuple[str, str], list[dict]], list[dict]]:
    """Calls grouped by (kind, app) - or ("Exec", machine_id) - plus the calls nothing claims."""
    ordered = sorted((dict(c) for c in calls), key=lambda c: c["t"])
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    unattributed: list[dict] = []
    known = {(r.kind, r.app) for r in resources}
    exec_machines = {r.machine_id for r in resources if r.kind == "Exec"}

    creates = [c for c in ordered if (c["method"], c["route"]) == ("POST", "/v1/apps")]
    first_get: dict[str, float] = {}
    for c in ordered:
        if (c["method"], c["route"]) == ("GET", "/v1/apps/{app}"):
            first_get.setdefault(_path_parts(c["path"])[0] or "", c["t"])
    apps_by_first_get = sorted(first_get, key=first_get.__getitem__)
    for i, c in enumerate(creates):
        if i < len(apps_by_first_get) and ("App", apps_by_first_get[i]) in known:
            groups[("App", apps_by_first_get[i])].append(c)
        else:
            unattributed.append(c)

    for c in ordered:
        if c["route"] == "/v1/apps" or c["route"] is None:
            if c["route"] is None:
                unattributed.append(c)
            continue
        app, segment, object_id = _path_parts(c["path"])
        kind = KIND_BY_SEGMENT.get(segment)
        if c["route"].endswith("/exec") and object_id in exec_machines:
            # The exec's precondition read is the last GET of that machine before it.
            machine_group = groups[("Machine", app or "")]
            for prior in reversed(machine_group):
                if (prior["method"], prior["route"]) == ("GET", MACHINE_ROUTE) and prior["path"].endswith(
                    f"/{object_id}"
                ):
                    machine_group.remove(prior)
                    groups[("Exec", object_id)].append(prior)
                    break
            groups[("Exec", object_id)].append(c)
        elif kind is not None and (kind, app) in known:
            groups[(kind, app or "")].append(c)
        else:
            unattributed.append(c)
    for calls_of in groups.values():
        calls_of.sort(key=lambda c: c["t"])
    return dict(groups), unattributed


# -- the model's cost of one operation --------------------------------------------------------------
def essential_calls(calls: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Drop repeats of the same poll (same method and path back to back): ideal polling asks once."""
    out: list[Mapping[str, Any]] = []
    for c in calls:
        key = (c["method"], c["route"])
        if out and key in POLLS and (out[-1]["method"], out[-1]["path"]) == (c["method"], c["path"]):
            continue
        out.append(c)
    return out


def op_cost(calls: Sequence[Mapping[str, Any]], model: LatencyModel) -> float:
    """What the latency model charges for these calls made one after another (see the module doc)."""
    now = 0.0
    ready_at: float | None = None  # when the machine's pending transition completes
    started_at: float | None = None
    for c in essential_calls(calls):
        key = (c["method"], c["route"])
        arrive = now + model.call_s  # the emulator sleeps call_s, then acts and answers
        if key == ("GET", MACHINE_ROUTE + "/wait") and ready_at is not None:
            arrive = max(arrive, ready_at)
            started_at = ready_at
            ready_at = None
        elif key == ("GET", MACHINE_ROUTE) and started_at is not None:
            arrive = max(arrive, started_at + model.check_pass_s)  # the health-check poll
        if key in BOOTS:
            ready_at, started_at = arrive + model.boot_s, None
        elif key == ("POST", MACHINE_ROUTE + "/stop"):
            ready_at, started_at = arrive + model.stop_s, None
        elif key == ("DELETE", MACHINE_ROUTE):
            ready_at, started_at = arrive + model.destroy_s, None
        now = arrive
    return now


def resource_costs(
    groups: Mapping[tuple[str, str], list[dict]], resources: Sequence[FlyResource], model: LatencyModel
) -> dict[str, float]:
    """Cost per resource URN; a group shared by several resources is split evenly between them."""
    sharing: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in resources:
        sharing[("Exec", r.machine_id) if r.kind == "Exec" else (r.kind, r.app)].append(r.urn)
    costs: dict[str, float] = {}
    for key, urns in sharing.items():
        total = op_cost(groups.get(key, []), model)
        for urn in urns:
            costs[urn] = total / len(urns)
    return costs


def longest_chain(state: StackState, costs: Mapping[str, float]) -> tuple[float, list[str]]:
    """Longest cost-weighted path through the state's dependency graph, and its URNs (first to last)."""
    finish: dict[str, tuple[float, str | None]] = {}

    def visit(urn: str, stack: tuple[str, ...] = ()) -> float:
        if urn in finish:
            return finish[urn][0]
        if urn in stack:
            raise ValueError(f"dependency cycle through {urn}")
        deps = [d for d in state.resources[urn].dependencies if d in state.resources]
        best, via = 0.0, None
        for dep in deps:
            t = visit(dep, (*stack, urn))
            if t > best:
                best, via = t, dep
        finish[urn] = (best + costs.get(urn, 0.0), via)
        return finish[urn][0]

    for urn in state.resources:
        visit(urn)
    if not finish:
        return 0.0, []
    end = max(finish, key=lambda u: finish[u][0])
    chain: list[str] = []
    cursor: str | None = end
    while cursor is not None:
        chain.append(cursor)
        cursor = finish[cursor][1]
    return finish[end][0], list(reversed(chain))


def service_of_app(cfg: SiloConfig) -> dict[str, str]:
    return {cfg.app_name(s): s for s in cfg.services}


def sequential_baseline(
    resources: Sequence[FlyResource], costs: Mapping[str, float], cfg: SiloConfig
) -> tuple[float, dict[str, float]]:
    services = service_of_app(cfg)
    per_service: dict[str, float] = dict.fromkeys((s for s in SEED_ORDER if s in cfg.services), 0.0)
    for r in resources:
        service = services.get(r.app)
        if service is None:
            raise ValueError(f"resource {r.name} belongs to app {r.app}, which is not a service of this silo")
        per_service[service] = per_service.get(service, 0.0) + costs.get(r.urn, 0.0)
    return sum(per_service.values()), {s: round(v, 3) for s, v in per_service.items()}


def poll_overshoot(
    groups: Mapping[tuple[str, str], list[dict]], resources: Sequence[FlyResource], model: LatencyModel
) -> dict[str, float]:
    """Per created machine: last health-check poll minus the moment its checks could first pass."""
    out: dict[str, float] = {}
    for r in resources:
        if r.kind != "Machine":
            continue
        calls = groups.get((r.kind, r.app), [])
        created = [c for c in calls if (c["method"], c["route"]) == CREATE_MACHINE]
        polls = [c for c in calls if (c["method"], c["route"]) == ("GET", MACHINE_ROUTE)]
        if created and polls:
            passing_at = created[0]["t"] + model.call_s + model.boot_s + model.check_pass_s
            out[r.name] = round(max(0.0, polls[-1]["t"] + model.call_s - passing_at), 3)
    return out


# -- running ---------------------------------------------------------------------------------------
def _stack(emulator: FlyEmulator, root: Path, stack_file: Path) -> Any:
    """The stack in a project of its own under `root` (file backend, passphrase), on the emulator."""
    work_dir = make_project(root / "project")
    shutil.copy(stack_file, work_dir / f"Pulumi.{STACK}.yaml")
    env = {
        "FLY_API_HOSTNAME": emulator.url,
        # No token: the providers talk to the (loopback) emulator, never to a real account.
        "FLY_API_TOKEN": "",
        "FLY_ACCESS_TOKEN": "",
        "FLY_FLAPS_BASE_URL": "",
    }
    return select_stack(workspace(work_dir, root / "state", env), STACK)


def _run(op: str, stack: Any) -> tuple[RunResult, float]:
    started = time.time()
    result = run_op(stack, op)
    if not result.ok:
        raise RuntimeError(f"pulumi {op} failed: {result.error}\n{result.text[-3000:]}")
    return result, started


def run_benchmark(scale: float = DEFAULT_SCALE, stack_file: Path = REPO_ROOT / f"Pulumi.{STACK}.yaml") -> dict:
    model = latency_model(scale)
    cfg = load_stack_file(stack_file)
    if not isinstance(cfg, SiloConfig):
        raise ValueError(f"{stack_file}: silo:kind must be silo; the benchmark brings up one silo")
    state_dir = Path(tempfile.mkdtemp(prefix="silo-bench-"))
    emulator = FlyEmulator(latency=model)
    emulator.start()
    try:
        stack = _stack(emulator, state_dir, stack_file)
        up, up_started = _run("up", stack)
        up_wall = time.time() - up_started
        up_calls = emulator.calls()
        state = export_state(stack)[0]

        emulator.clear_calls()
        noop_up, noop_started = _run("up", stack)
        noop_up_wall = time.time() - noop_started
        noop_up_calls = emulator.calls()

        emulator.clear_calls()
        preview, preview_started = _run("preview", stack)
        preview_wall = time.time() - preview_started
        preview_calls = emulator.calls()
    finally:
        emulator.stop()
        shutil.rmtree(state_dir, ignore_errors=True)

    resources = fly_resources(state)
    groups, unattributed = attribute_calls(up_calls, resources)
    costs = resource_costs(groups, resources, model)
    chain_s, chain = longest_chain(state, costs)
    busy_s = sum(costs.values())
    critical = max(chain_s, busy_s / PROVIDER_SLOTS)
    baseline_s, per_service = sequential_baseline(resources, costs, cfg)
    first_call = min((c["t"] for c in up_calls), default=up_started)
    startup = first_call - up_started
    names = {r.urn: r.name for r in state.resources.values()}
    ratio = up_wall / critical if critical else float("inf")
    return {
        "up_wall_s": round(up_wall, 3),
        "up_wall_includes": "the whole real `pulumi up` (Automation API): CLI and program start, provider "
        "host start, all provider calls, final checkpoint",
        "critical_path_s": round(critical, 3),
        "sequential_baseline_s": round(baseline_s, 3),
        "api_calls_up": len(up_calls),
        "mutating_calls_noop_up": sum(1 for c in noop_up_calls if c["mutating"]),
        "api_calls_noop_up": len(noop_up_calls),
        "api_calls_noop_preview": len(preview_calls),
        "ratio": round(ratio, 3),
        "goal_met": {
            "up_within_1_2x_critical_path": ratio <= GOAL_RATIO,
            "zero_mutating_calls_noop_up": not any(c["mutating"] for c in noop_up_calls),
            # Diff works on state alone (no refresh), so a no-change preview needs no API call at all.
            "zero_api_calls_noop_preview": not preview_calls,
        },
        "model": {**asdict(model), "scale": scale, "full_scale": asdict(FULL_SCALE_MODEL), "sources": MODEL_SOURCES},
        "critical_path": {
            "longest_chain_s": round(chain_s, 3),
            "provider_busy_s": round(busy_s, 3),
            "provider_slots": PROVIDER_SLOTS,
            "busy_bound_s": round(busy_s / PROVIDER_SLOTS, 3),
            "chain": [{"resource": names[u], "cost_s": round(costs.get(u, 0.0), 3)} for u in chain],
        },
        "sequential_by_service_s": per_service,
        "startup_s": round(startup, 3),
        "ratio_excluding_startup": round((up_wall - startup) / critical, 3) if critical else None,
        "check_poll_overshoot_s": poll_overshoot(groups, resources, model),
        "chain_profile": chain_profile(chain, costs, groups, resources, up_started),
        "after_last_call_s": round(up_started + up_wall - max((c["t"] for c in up_calls), default=up_started), 3),
        "api_calls_up_by_kind": _calls_by_kind(groups),
        "unattributed_calls_up": len(unattributed),
        "steps_up": up.changes,
        "steps_noop_up": noop_up.changes,
        "steps_noop_preview": preview.changes,
        "noop_up_wall_s": round(noop_up_wall, 3),
        "noop_preview_wall_s": round(preview_wall, 3),
    }


def chain_profile(
    chain: Sequence[str],
    costs: Mapping[str, float],
    groups: Mapping[tuple[str, str], list[dict]],
    resources: Sequence[FlyResource],
    up_started: float,
) -> list[dict[str, Any]]:
    """Per chain step: when its first API call started (from the launch) vs when it could have,
    had every earlier step taken exactly its model cost and start-up taken no time. The growth of
    `late_s` along the chain shows where the wall time goes."""
    by_urn = {r.urn: r for r in resources}
    out: list[dict[str, Any]] = []
    ideal = 0.0
    for urn in chain:
        r = by_urn.get(urn)
        calls = groups.get(("Exec", r.machine_id) if r and r.kind == "Exec" else (r.kind, r.app), []) if r else []
        if calls:
            observed = calls[0]["t"] - up_started
            out.append({"resource": r.name if r else urn, "first_call_s": round(observed, 3),
                        "ideal_start_s": round(ideal, 3), "late_s": round(observed - ideal, 3)})  # fmt: skip
        ideal += costs.get(urn, 0.0)
    return out


def _calls_by_kind(groups: Mapping[tuple[str, str], list[dict]]) -> dict[str, int]:
    by_kind: Counter[str] = Counter()
    for (kind, _), calls in groups.items():
        by_kind[kind] += len(calls)
    return dict(sorted(by_kind.items()))


def render_human(report: Mapping[str, Any]) -> str:
    model = report["model"]
    cp = report["critical_path"]
    goals = report["goal_met"]
    lines = [
        f"Latency model (scale {model['scale']}): call {model['call_s']:.3f}s, boot {model['boot_s']:.2f}s, "
        f"checks pass {model['check_pass_s']:.2f}s after start",
        f"up (empty emulator):   {report['up_wall_s']:.2f}s wall, {report['api_calls_up']} API calls "
        f"(start-up {report['startup_s']:.2f}s of it)",
        f"critical path:         {report['critical_path_s']:.2f}s  (longest chain {cp['longest_chain_s']:.2f}s, "
        f"provider busy {cp['provider_busy_s']:.2f}s / {cp['provider_slots']} = {cp['busy_bound_s']:.2f}s)",
        f"sequential baseline:   {report['sequential_baseline_s']:.2f}s (seed order, one step at a time)",
        f"ratio up/critical:     {report['ratio']:.3f}  (goal <= {GOAL_RATIO}: "
        f"{'met' if goals['up_within_1_2x_critical_path'] else 'NOT met'}; "
        f"{report['ratio_excluding_startup']:.3f} without start-up)",
        f"no-change up:          {report['mutating_calls_noop_up']} mutating calls "
        f"({report['api_calls_noop_up']} calls in all)",
        f"no-change preview:     {report['api_calls_noop_preview']} API calls",
        "critical chain:",
        *(f"  {step['cost_s']:7.3f}s  {step['resource']}" for step in cp["chain"] if step["cost_s"] > 0),
        "chain profile (first API call vs ideal start, from launch):",
        *(
            f"  {p['first_call_s']:7.3f}s vs {p['ideal_start_s']:7.3f}s (+{p['late_s']:.3f}s)  {p['resource']}"
            for p in report["chain_profile"]
        ),
        f"after the last API call: {report['after_last_call_s']:.2f}s",
        "check poll overshoot per machine (s): "
        + ", ".join(f"{k.removesuffix('-machine')}={v}" for k, v in report["check_poll_overshoot_s"].items()),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE, help=f"latency scale (default {DEFAULT_SCALE})")
    parser.add_argument("--stack-file", type=Path, default=REPO_ROOT / f"Pulumi.{STACK}.yaml")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be > 0 (got {args.scale})")
    try:
        report = run_benchmark(args.scale, args.stack_file)
    except (ConfigError, RuntimeError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=None if args.json else 2) if args.json else render_human(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
