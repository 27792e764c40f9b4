"""The provisioning API under the benchmark's latency model (bench/run.py): creates until running, status
calls meanwhile, and what was lost or duplicated.

  api_create_1_s      one create (POST /v1/towns), until its town runs;
  api_create_20_s     20 creates for 20 users at once (`--api-creates`), beside the towns that exist (the
                      benchmark's silo's: 100 by default), until all run;
  api_status_p99_ms   GET /v1/towns/{id} of those existing towns while the 20 creates run, at a constant
                      rate (`--status-rate`, 100 a second by default: the registry's 100-odd towns each
                      polled about once a second by its user's page), the 99th percentile. Open loop, as
                      wrk2 measures: each call has its scheduled instant and its latency counts from it, so
                      a slow answer delays the calls behind it and they count the delay too (a closed loop
                      would send fewer calls when the service is slow and hide it: "coordinated
                      omission"). `--status-rate 0` sends them back to back from one client instead; on
                      these two shared cores that client and the web process then take most of a core
                      away from the creates, which lengthens api_create_20_s (docs/performance.md);
  api_lost_requests   accepted creates whose town is not running at the end;
  api_duplicates      towns made more than once (registry rows per user and name, Fly apps, machines).

Goals: api_create_1_s <= 1.5 x town_chain_s, api_create_20_s <= 3 x town_chain_s, api_status_p99_ms <= 50,
no lost request, no duplicate.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
GOALS = {"api_create_1": 1.5, "api_create_20": 3.0, "api_status_p99_ms": 50.0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """`silo serve --config FILE` against the benchmark's emulators, registry and backend."""

    def __init__(self, root: Path, env: dict[str, str], dsn: str, state_dir: Path, workers: int) -> None:
        from service.auth import ensure_tokens

        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {
            "host": "127.0.0.1",
            "port": self.port,
            "towns_project_dir": str(root / "towns"),
            "silos_project_dir": str(root / "silos"),
            "state_dir": str(state_dir),
            "tokens_file": str(root / "tokens.json"),
            "fly_org": "acme",
            "region": "yul",
            "control_stack": "organization/silo/control",
            "kilo_api_url": self.url,
            "allow_town_data_deletion": True,
            "workers": workers,
            "wait_timeout_s": 600,
            "env": {k: v for k, v in env.items() if k != "SILO_REGISTRY_DSN"},
        }
        (root / "silos").mkdir(parents=True, exist_ok=True)
        (root / "serve.yaml").write_text(yaml.safe_dump(settings))
        self.tokens = ensure_tokens(dsn, root / "tokens.json")
        self.dsn = dsn
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Service:
        log = open(self.root / "serve.log", "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "FLY_", "CLOUDFLARE_"))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "components.cli.main", "serve", "--config", str(self.root / "serve.yaml")],
            cwd=REPO_ROOT,
            env={**env, "SILO_REGISTRY_DSN": self.dsn},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"silo serve did not start: {(self.root / 'serve.log').read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.tokens['backend']}"}, timeout=900
        )

    def create_all(self, users: list[str], name: str) -> dict[str, dict[str, Any]]:
        """Create a town per user at once; when every one has run: the answers, by user."""

        def create(user: str) -> tuple[str, dict[str, Any]]:
            with self.client() as client:
                # `?wait=true`, as a backend that wants the town running would: the service answers when the
                # operation ends (it is told by the registry, service/operations.py Finished), and the client
                # sends nothing meanwhile.
                answer = client.post(
                    "/v1/towns", params={"wait": "true"}, json={"user_id": user, "name": name, "rigs": []}
                )
                answer.raise_for_status()
                body = answer.json()
                if "operation" in body:
                    return user, body
                while True:  # still running after the service's wait timeout
                    op = client.get(f"/v1/operations/{body['operation_id']}").json()
                    if op["status"] in ("succeeded", "failed"):
                        return user, {**body, "operation": op}
                    time.sleep(0.1)

        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            return dict(pool.map(create, users))


def existing_towns(dsn: str) -> list[tuple[str, str]]:
    """(user, town id) of every town the registry holds: the towns status calls are made for."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT user_id, id::text FROM gastown_towns WHERE destroyed_at IS NULL").fetchall()
    return [(str(user), str(town_id)) for user, town_id in rows]


DEFAULT_STATUS_RATE = 100.0


def measure(service: Service, burst: int = 20, status_rate: float = DEFAULT_STATUS_RATE) -> dict[str, Any]:
    """One create, then `burst` creates at once while status calls of the towns that already exist run,
    `status_rate` a second (0: back to back)."""
    existing = existing_towns(service.dsn)
    if not existing:
        raise RuntimeError("the API benchmark needs existing towns to ask the status of")
    started = time.monotonic()
    service.create_all(["one-000"], "first")
    create_1 = time.monotonic() - started

    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with service.client() as client:
            i = 0
            begun = time.monotonic()
            while not done.is_set():
                user, town_id = existing[i % len(existing)]
                if status_rate > 0:
                    scheduled = begun + i / status_rate
                    if (early := scheduled - time.monotonic()) > 0:
                        time.sleep(early)
                else:
                    scheduled = time.monotonic()
                client.get(f"/v1/towns/{town_id}", headers={"X-User-Id": user}).raise_for_status()
                latencies.append((time.monotonic() - scheduled) * 1000)
                i += 1

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.monotonic()
    try:
        answers = service.create_all([f"new-{i:03d}" for i in range(burst)], "burst")
    finally:
        create_n = time.monotonic() - started
        done.set()
        poller.join()

    with psycopg.connect(service.dsn) as conn:
        running = dict(
            conn.execute(
                "SELECT user_id, status FROM gastown_towns WHERE town_name IN ('burst', 'first') "
                "AND destroyed_at IS NULL"
            ).fetchall()
        )
        rows = conn.execute(
            "SELECT count(*) - count(DISTINCT (user_id, town_name)) FROM gastown_towns WHERE destroyed_at IS NULL"
        ).fetchone()
    accepted = [*answers, "one-000"]
    lost = sum(1 for user in accepted if running.get(user) != "running")
    snap = httpx.get(f"{service.env['FLY_API_HOSTNAME']}/__emulator/snapshot", timeout=60).json()
    per_app: dict[str, int] = {}
    for machine in snap["machines"].values():
        per_app[machine["app"]] = per_app.get(machine["app"], 0) + 1
    duplicates = (rows[0] if rows else 0) + sum(n - 1 for n in per_app.values() if n > 1)
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else 0.0
    return {
        "api_create_1_s": round(create_1, 3),
        "api_create_20_s": round(create_n, 3),
        "api_creates": burst,
        "api_status_p99_ms": round(p99, 2),
        "api_status_median_ms": round(statistics.median(latencies), 2) if latencies else 0.0,
        "api_status_calls": len(latencies),
        "api_status_rate": status_rate,
        "api_lost_requests": lost,
        "api_duplicates": duplicates,
        "api_existing_towns": len(existing),
    }
