#!/usr/bin/env python
"""Benchmark: the real Pulumi CLI bringing up a silo and 100 towns on the emulators, against the lower
bounds the emulator's latency model allows.

    python bench/run.py [--json] [--scale 0.5] [--towns 100] [--parallel N]

Everything runs for real: the Pulumi CLI `make engine` built (Automation API), the Fly emulator with its
latency model and its rate limits on (the strict defaults), the Cloudflare emulator, and a PostgreSQL for
the registry (started here, like the tests' server). One project, one file backend, four stacks:
  control   the registry schema and the backup bucket (set-up, not measured);
  one       a silo with 1 town                        -> noop_preview_1_s;
  bench     a silo with no towns, fresh               -> silo_up_wall_s, mutating_calls_noop_up;
            then the same silo with N towns added     -> towns100_up_wall_s, noop_preview_100_s.
Then a fleet on a PostgreSQL backend (a database of the same server): a control stack and --fleet silos shaped
like `one` (1 town each), made with the emulator's latency off, then `silo fleet preview --parallel-stacks P`
of the silos, as a user runs it (a subprocess; the guardrails on)    -> fleet_preview_20_s.

Latency model (full scale, `--scale 1`; every duration is multiplied by --scale):
  call_s       0.15 s  one Machines API round trip. Assumption: 100-200 ms from a developer machine or CI
                       to api.machines.dev; Fly's docs give no latency figure.
  boot_s       8 s     create/start -> `started`: a new machine pulls its image and boots. Assumption.
  check_pass_s 10 s    `started` -> every health check passing (checks every 15 s; services need a few
                       seconds to listen).
  app_hidden_requests  2  a new app answers 404, then 401, before it is visible (fly-go WaitForApp): two
                       more round trips before anything can be done with it.
  Rate limits: 1 request/s with bursts of 3 per action and object, Get Machine 5/s (Fly's documented
  limits, emulators/fly/server.py). The Cloudflare emulator and the registry add no latency.

The lower bounds come from the model alone, never from the program's dependency graph:
  necessary_chain_s  the app (create, then its two hidden answers), then its IPs, secrets and volume (one
                     call each, in parallel), then the pg machine (create, boot, checks passing), then the
                     longest of the services that need Postgres at boot (GoTrue and Storage run migrations,
                     PostgREST loads its schema cache): create, boot, checks passing.
  town_chain_s       one town: the app (create + hidden answers), then its IP, secrets and R2 credentials,
                     then its volume, then its machine (create, boot, checks passing).
Goals (ratios in one run): silo_up_wall_s <= 1.3 x necessary_chain_s, towns100_up_wall_s <= 3 x town_chain_s,
noop_preview_100_s <= 5 x noop_preview_1_s, 0 mutating calls on a no-change up, 0 calls failed on 429,
fleet_preview_20_s <= 4 x noop_preview_1_s x fleet / parallel_stacks (the stacks really run side by side),
and the provisioning API's (bench/api.py, `silo serve` on the same emulators, registry and state, beside the
`bench` silo's towns): api_create_1_s <= 1.5 x town_chain_s, api_create_20_s <= 3 x town_chain_s,
api_status_p99_ms <= 50 (status calls at a constant --status-rate while the 20 creates run), no lost
request, no duplicate.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from bench.api import DEFAULT_STATUS_RATE, Service, measure  # noqa: E402
from bench.api import GOALS as API_GOALS  # noqa: E402
from emulators.cloudflare import CloudflareEmulator  # noqa: E402
from emulators.fly import FlyEmulator, LatencyModel  # noqa: E402
from engine.runner import RunResult  # noqa: E402
from engine.runner import run as run_op  # noqa: E402
from engine.workspace import FILE_BACKEND_ORG, PARALLEL, PROJECT, make_project, select_stack, workspace  # noqa: E402
from tests.fixtures.postgres import PostgresServer, _os_user, find_bindir  # noqa: E402

DEFAULT_SCALE = 0.5
DEFAULT_TOWNS = 100
DEFAULT_FLEET = 20
DEFAULT_PARALLEL_STACKS = 4
DEFAULT_API_CREATES = 20
GOALS = {"silo_up": 1.3, "towns_up": 3.0, "noop_preview": 5.0, "fleet_preview": 4.0, **API_GOALS}
FULL_SCALE_MODEL = replace(LatencyModel(), call_s=0.15, boot_s=8.0, stop_s=3.0, destroy_s=2.0, check_pass_s=10.0)
CF_TOKEN = "bench-cloudflare-token"
CF_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
SILO = {
    "silo:client": "acme",
    "silo:flyOrg": "acme",
    "silo:region": "yul",
    "silo:siteUrl": "https://acme.example",
    "silo:studio": "true",
    "silo:controlStack": f"{FILE_BACKEND_ORG}/{PROJECT}/control",
}


def latency_model(scale: float) -> LatencyModel:
    if scale <= 0:
        raise ValueError(f"--scale must be > 0 (got {scale})")
    timed = ("call_s", "boot_s", "stop_s", "destroy_s", "check_pass_s")
    return replace(FULL_SCALE_MODEL, **{k: getattr(FULL_SCALE_MODEL, k) * scale for k in timed})


def _app_s(model: LatencyModel) -> float:
    """Create an app and see it: the create, then the answers a new app owes before it is visible."""
    return model.call_s * (1 + model.app_hidden_requests)


def _machine_s(model: LatencyModel) -> float:
    return model.call_s + model.boot_s + model.check_pass_s


def necessary_chain_s(model: LatencyModel) -> float:
    return _app_s(model) + model.call_s + _machine_s(model) + _machine_s(model)


def town_chain_s(model: LatencyModel) -> float:
    return _app_s(model) + model.call_s + model.call_s + _machine_s(model)


def towns(n: int, user: str = "user") -> list[dict[str, Any]]:
    """N towns of distinct users: a town's identity (its sandbox id, hence its Fly app) is its user and
    name, so two stacks must not share them."""
    return [{"name": f"town-{i:03d}", "user": f"{user}-{i:03d}", "rigs": []} for i in range(n)]


def _serve(factory: Any, urls: Any) -> None:
    """Child process: one emulator, serving until the parent ends it (as `make up` runs the Fly one)."""
    _quiet()
    urls.put(factory().start())
    threading.Event().wait()


class EmulatorProcess:
    """An emulator in a process of its own, as `make up` runs the Fly one: inside the benchmark's
    process its request handling would compete with the inline program for the GIL."""

    def __init__(self, factory: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._urls = ctx.Queue()
        self._process = ctx.Process(target=_serve, args=(factory, self._urls), daemon=True)
        self.url = ""

    def start(self) -> str:
        self._process.start()
        self.url = self._urls.get(timeout=120)
        return self.url

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(timeout=10)

    def calls(self) -> list[dict]:
        return httpx.get(f"{self.url}/__emulator/calls", timeout=60).json()

    def clear_calls(self) -> None:
        httpx.delete(f"{self.url}/__emulator/calls", timeout=60)

    def set_latency(self, model: LatencyModel | None, rate_limits: bool) -> None:
        """The latency model (None: every delay 0) and rate limits, over the emulator's control API."""
        timed = ("call_s", "boot_s", "stop_s", "destroy_s", "check_pass_s")
        body = asdict(model) if model is not None else dict.fromkeys(timed, 0)
        httpx.post(f"{self.url}/__emulator/latency", json=body, timeout=60).raise_for_status()
        httpx.post(f"{self.url}/__emulator/rate_limits", json={"enabled": rate_limits}, timeout=60).raise_for_status()


class Bench:
    """The emulators, the registry and the project; stacks share one file backend."""

    def __init__(self, root: Path, model: LatencyModel, parallel: int) -> None:
        self.root = root
        self.parallel = parallel
        self.fly = EmulatorProcess(functools.partial(FlyEmulator, latency=model))  # rate limits on by default
        self.cf = EmulatorProcess(functools.partial(CloudflareEmulator, token=CF_TOKEN))
        # Its own temporary directory: the server's OS user must reach it (see tests/fixtures/postgres.py).
        pg_root = Path(tempfile.mkdtemp(prefix="silo-bench-pg-"))
        self.pg = PostgresServer(bindir=find_bindir(), root=pg_root, user=_os_user())
        self.work_dir = make_project(root / "project")

    def __enter__(self) -> Bench:
        self.pg.start()
        self.fly.start()
        self.cf.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.fly.stop()
        self.cf.stop()
        self.pg.stop()
        shutil.rmtree(self.pg.root, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {
            "FLY_API_HOSTNAME": self.fly.url,
            "FLY_API_TOKEN": "",
            "FLY_ACCESS_TOKEN": "",
            "FLY_FLAPS_BASE_URL": "",
            "SILO_REGISTRY_DSN": self.pg.dsn(),
            "CLOUDFLARE_API_URL": self.cf.url,
            "CLOUDFLARE_API_TOKEN": CF_TOKEN,
            "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT_ID,
            "CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID": "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        }

    def run(self, op: str, stack: str, config: Mapping[str, Any]) -> tuple[RunResult, list[dict]]:
        """`op` of `stack` with `config`; the result and the Fly API calls it made."""
        (self.work_dir / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": dict(config)}))
        target = select_stack(workspace(self.work_dir, self.root / "state", self.env()), stack)
        self.fly.clear_calls()
        result = run_op(target, op, parallel=self.parallel)
        if not result.ok:
            raise RuntimeError(f"pulumi {op} {stack} failed: {result.error}\n{result.text[-3000:]}")
        return result, self.fly.calls()


def _silo(app: str, town_list: list[dict[str, Any]]) -> dict[str, Any]:
    return {**SILO, "silo:app": app, "silo:towns": json.dumps(town_list)}


def _mutating(calls: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 for c in calls if c["mutating"])


def _failed_on_429(calls: Sequence[Mapping[str, Any]]) -> int:
    """429 answers never followed by the same request again: calls that gave up on the rate limit (a
    retried one is sent again, to the same path, and its later answer decides)."""
    failed = 0
    for i, call in enumerate(calls):
        if call["status"] == 429 and not any(
            (c["method"], c["path"]) == (call["method"], call["path"]) for c in calls[i + 1 :]
        ):
            failed += 1
    return failed


def _by_route(calls: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(f"{c['method']} {c['route']}" for c in calls).items()))


def _quiet() -> None:
    # The emulators log every request (werkzeug): thousands of lines with 100 towns.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("emulators").setLevel(logging.WARNING)


def fleet_preview(bench: Bench, model: LatencyModel, size: int, parallel_stacks: int) -> float:
    """Seconds of a no-change `silo fleet preview` of `size` silos (1 town each) on a PostgreSQL backend."""
    url = f"postgres://postgres@127.0.0.1:{bench.pg.port}/{bench.pg.create_database()}?sslmode=disable"
    project = make_project(bench.root / "fleet")
    silos = {f"fleet-{i:02d}": _silo(f"fleet{i:02d}", towns(1, user=f"fleet-{i:02d}")) for i in range(size)}
    for name, config in {"control": {"silo:kind": "control", "silo:backupBucket": "fleet-backups"}, **silos}.items():
        (project / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump({"config": dict(config)}))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "FLY_", "SILO_"))},
        **bench.env(),
        "PULUMI_BACKEND_URL": url,
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(bench.root / "state" / "passphrase"),
    }
    silo = [sys.executable, "-m", "components.cli.main", "fleet", "--project-dir", str(project)]
    ws = workspace(
        project,
        bench.root / "fleet-state",
        {k: env[k] for k in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE_FILE")},
    )
    for name in ("control", *silos):
        ws.create_stack(name)
    bench.fly.set_latency(None, rate_limits=False)  # set-up is not measured
    try:
        made = subprocess.run(
            [*silo, "up", "--parallel-stacks", str(parallel_stacks)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"silo fleet up failed:\n{made.stdout[-3000:]}{made.stderr[-3000:]}")
    finally:
        bench.fly.set_latency(model, rate_limits=True)
    started = time.monotonic()
    preview = subprocess.run(
        [*silo, "preview", "--exclude", "control", "--parallel-stacks", str(parallel_stacks)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if preview.returncode != 0 or f"{size} stack(s): {size} ok" not in preview.stdout:
        said = preview.stdout[-3000:] + preview.stderr[-3000:]
        raise RuntimeError(f"silo fleet preview was not a clean no-change run:\n{said}")
    return seconds


def run_benchmark(
    scale: float = DEFAULT_SCALE,
    n_towns: int = DEFAULT_TOWNS,
    parallel: int = PARALLEL,
    fleet: int = DEFAULT_FLEET,
    parallel_stacks: int = DEFAULT_PARALLEL_STACKS,
    api_creates: int = DEFAULT_API_CREATES,
    status_rate: float = DEFAULT_STATUS_RATE,
) -> dict:
    _quiet()
    model = latency_model(scale)
    root = Path(tempfile.mkdtemp(prefix="silo-bench-"))
    try:
        with Bench(root, model, parallel) as bench:
            bench.run("up", "control", {"silo:kind": "control", "silo:backupBucket": "bench-backups"})
            bench.run("up", "one", _silo("one", towns(1, user="solo")))
            preview_1, _ = bench.run("preview", "one", _silo("one", towns(1, user="solo")))

            silo_up, silo_calls = bench.run("up", "bench", _silo("erp", []))
            _, noop_silo_calls = bench.run("up", "bench", _silo("erp", []))
            towns_up, towns_calls = bench.run("up", "bench", _silo("erp", towns(n_towns)))
            preview_n, preview_n_calls = bench.run("preview", "bench", _silo("erp", towns(n_towns)))
            noop_towns, noop_towns_calls = bench.run("up", "bench", _silo("erp", towns(n_towns)))
            every_call = [*silo_calls, *noop_silo_calls, *towns_calls, *preview_n_calls, *noop_towns_calls]
            fleet_s = fleet_preview(bench, model, fleet, parallel_stacks)
            # The API last: its towns would otherwise be in the registry the silos above check.
            service = Service(root / "api", bench.env(), bench.pg.dsn(), root / "state", workers=DEFAULT_API_CREATES)
            with service:
                api = measure(service, api_creates, status_rate)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    chain = necessary_chain_s(model)
    town_chain = town_chain_s(model)
    report = {
        "engine": "pulumi",
        "silo_up_wall_s": round(silo_up.seconds, 3),
        "necessary_chain_s": round(chain, 3),
        "towns": n_towns,
        "towns100_up_wall_s": round(towns_up.seconds, 3),
        "town_chain_s": round(town_chain, 3),
        "noop_preview_1_s": round(preview_1.seconds, 3),
        "noop_preview_100_s": round(preview_n.seconds, 3),
        "mutating_calls_noop_up": _mutating(noop_silo_calls) + _mutating(noop_towns_calls),
        "failed_calls_429": _failed_on_429(every_call),
        "calls_429_retried": sum(1 for c in every_call if c["status"] == 429),
        "api_calls_silo_up": len(silo_calls),
        "api_calls_towns_up": len(towns_calls),
        "api_calls_noop_preview_100": len(preview_n_calls),
        "api_calls_noop_up_100": len(noop_towns_calls),
        "resources_100": sum(towns_up.changes.values()),
        "steps_noop_up_100": noop_towns.changes,
        "fleet_preview_20_s": round(fleet_s, 3),
        "fleet_stacks": fleet,
        "fleet_parallel_stacks": parallel_stacks,
        **api,
        "ratios": {
            "silo_up": round(silo_up.seconds / chain, 3),
            "towns_up": round(towns_up.seconds / town_chain, 3),
            "noop_preview": round(preview_n.seconds / preview_1.seconds, 3),
            # The fleet's time against one stack's, times the stacks, divided by how many run at once.
            "fleet_preview": round(fleet_s / (preview_1.seconds * fleet / parallel_stacks), 3),
            "api_create_1": round(api["api_create_1_s"] / town_chain, 3),
            "api_create_20": round(api["api_create_20_s"] / town_chain, 3),
        },
        "parallel": parallel,
        "model": {**asdict(model), "scale": scale},
        "api_calls_silo_up_by_route": _by_route(silo_calls),
        "api_calls_towns_up_by_route": _by_route(towns_calls),
    }
    report["goals_met"] = {
        "silo_up_within_1_3x_necessary_chain": report["ratios"]["silo_up"] <= GOALS["silo_up"],
        "towns_up_within_3x_town_chain": report["ratios"]["towns_up"] <= GOALS["towns_up"],
        "noop_preview_100_within_5x_of_1": report["ratios"]["noop_preview"] <= GOALS["noop_preview"],
        "zero_mutating_calls_noop_up": report["mutating_calls_noop_up"] == 0,
        "zero_calls_failed_429": report["failed_calls_429"] == 0,
        "fleet_preview_20_within_4x_noop_1_x_fleet_per_parallel": report["ratios"]["fleet_preview"]
        <= GOALS["fleet_preview"],
        "api_create_1_within_1_5x_town_chain": report["ratios"]["api_create_1"] <= GOALS["api_create_1"],
        "api_create_20_within_3x_town_chain": report["ratios"]["api_create_20"] <= GOALS["api_create_20"],
        "api_status_p99_within_50ms": report["api_status_p99_ms"] <= GOALS["api_status_p99_ms"],
        "zero_api_lost_requests": report["api_lost_requests"] == 0,
        "zero_api_duplicates": report["api_duplicates"] == 0,
    }
    return report


def render_human(report: Mapping[str, Any]) -> str:
    r, g = report["ratios"], report["goals_met"]
    ok = {True: "met", False: "NOT met"}
    return "\n".join(
        [
            f"silo up:        {report['silo_up_wall_s']:.2f}s vs necessary chain {report['necessary_chain_s']:.2f}s "
            f"= {r['silo_up']:.2f}x (goal <= 1.3: {ok[g['silo_up_within_1_3x_necessary_chain']]})",
            f"{report['towns']} towns up:  {report['towns100_up_wall_s']:.2f}s vs town chain "
            f"{report['town_chain_s']:.2f}s = {r['towns_up']:.2f}x "
            f"(goal <= 3: {ok[g['towns_up_within_3x_town_chain']]})",
            f"no-op preview:  {report['noop_preview_100_s']:.2f}s ({report['towns']} towns) vs "
            f"{report['noop_preview_1_s']:.2f}s (1 town) = {r['noop_preview']:.2f}x "
            f"(goal <= 5: {ok[g['noop_preview_100_within_5x_of_1']]})",
            f"no-op up:       {report['mutating_calls_noop_up']} mutating calls; "
            f"429s: {report['calls_429_retried']} retried, {report['failed_calls_429']} failed",
            f"fleet preview:  {report['fleet_preview_20_s']:.2f}s ({report['fleet_stacks']} silos on PostgreSQL, "
            f"{report['fleet_parallel_stacks']} at a time) = {r['fleet_preview']:.2f}x of 1 silo's x "
            f"{report['fleet_stacks']}/{report['fleet_parallel_stacks']} "
            f"(goal <= 4: {ok[g['fleet_preview_20_within_4x_noop_1_x_fleet_per_parallel']]})",
            f"API create:     1 in {report['api_create_1_s']:.2f}s = {r['api_create_1']:.2f}x town chain "
            f"(goal <= 1.5: {ok[g['api_create_1_within_1_5x_town_chain']]}); {report['api_creates']} at once in "
            f"{report['api_create_20_s']:.2f}s = {r['api_create_20']:.2f}x (goal <= 3: "
            f"{ok[g['api_create_20_within_3x_town_chain']]})",
            f"API status:     p99 {report['api_status_p99_ms']:.1f} ms over {report['api_status_calls']} calls at "
            f"{report['api_status_rate']:g}/s "
            f"(goal <= 50: {ok[g['api_status_p99_within_50ms']]}); lost {report['api_lost_requests']}, "
            f"duplicates {report['api_duplicates']}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE, help=f"latency scale (default {DEFAULT_SCALE})")
    parser.add_argument("--towns", type=int, default=DEFAULT_TOWNS, help=f"towns added (default {DEFAULT_TOWNS})")
    parser.add_argument(
        "--parallel", type=int, default=PARALLEL, help=f"the CLI's --parallel (default {PARALLEL}, as `make up`)"
    )
    parser.add_argument(
        "--fleet", type=int, default=DEFAULT_FLEET, help=f"silos in the fleet preview (default {DEFAULT_FLEET})"
    )
    parser.add_argument(
        "--parallel-stacks", type=int, default=DEFAULT_PARALLEL_STACKS,
        help=f"the fleet preview's --parallel-stacks (default {DEFAULT_PARALLEL_STACKS})",
    )  # fmt: skip
    parser.add_argument(
        "--api-creates", type=int, default=DEFAULT_API_CREATES,
        help=f"creates at once through the provisioning API (default {DEFAULT_API_CREATES})",
    )  # fmt: skip
    parser.add_argument(
        "--status-rate", type=float, default=DEFAULT_STATUS_RATE,
        help=f"API status calls a second while the creates run (default {DEFAULT_STATUS_RATE:g}; 0: back to back)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale must be > 0 (got {args.scale})")
    try:
        report = run_benchmark(
            args.scale, args.towns, args.parallel, args.fleet, args.parallel_stacks, args.api_creates, args.status_rate
        )
    except (RuntimeError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else render_human(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
