#!/usr/bin/env python
"""What a state backend costs per operation: the same silo's no-change `preview` and no-change `up` on the
file backend, PostgreSQL and S3 (moto, as R2 is reached), on the real CLI (Automation API) and the Fly
emulator with no latency, so the differences are the backends' own.

    python bench/backends.py [--runs 5] [--json]

Each backend gets its own silo (one `up` first, not measured), then `--runs` previews and `--runs` ups
alternate; the medians are reported, and each backend's difference from the file backend's. A preview
reads the checkpoint; an `up` also takes and releases the lock and writes the checkpoint, a backup and
the history (pkg/backend/diy), so it shows the writes' cost too. PostgreSQL runs as the tests run it
(tests/fixtures/postgres.py: loopback, fsync off), moto in this process: network and durability of a
real server add to both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from bench.run import EmulatorProcess, _quiet  # noqa: E402
from emulators.fly import FlyEmulator  # noqa: E402
from engine.runner import run  # noqa: E402
from engine.workspace import make_project, select_stack, workspace  # noqa: E402
from tests.fixtures.postgres import PostgresServer, _os_user, find_bindir  # noqa: E402


def silo(app: str) -> dict[str, str]:
    return {
        "silo:client": "bench",
        "silo:app": app,
        "silo:flyOrg": "bench",
        "silo:siteUrl": f"https://{app}.example",
        "silo:studio": "true",
    }


def measure(root: Path, name: str, url: str | None, fly_url: str, runs: int) -> dict[str, float]:
    project = make_project(root / name)
    (project / "Pulumi.s.yaml").write_text(yaml.safe_dump({"config": silo(name)}))
    env = {"FLY_API_HOSTNAME": fly_url, "FLY_API_TOKEN": "", "FLY_FLAPS_BASE_URL": ""}
    if url:
        env["PULUMI_BACKEND_URL"] = url
    stack = select_stack(workspace(project, root / f"{name}-state", env), "s")
    first = run(stack, "up")
    if not first.ok:
        raise RuntimeError(f"{name}: up failed: {first.error}")
    previews, ups = [], []
    for _ in range(runs):
        for op, into in (("preview", previews), ("up", ups)):
            result = run(stack, op)
            if not result.ok or result.changed():
                raise RuntimeError(f"{name}: {op} was not a clean no-change run: {result.error or result.changed()}")
            into.append(result.seconds)
    return {"preview_s": round(statistics.median(previews), 3), "up_s": round(statistics.median(ups), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/backends.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    _quiet()
    root = Path(tempfile.mkdtemp(prefix="silo-backends-"))
    pg = PostgresServer(bindir=find_bindir(), root=Path(tempfile.mkdtemp(prefix="silo-backends-pg-")), user=_os_user())
    fly = EmulatorProcess(FlyEmulator)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
    try:
        pg.start()
        fly.start()
        moto.start()
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="state")
        backends = {
            "file": None,
            "postgres": f"postgres://postgres@127.0.0.1:{pg.port}/{pg.create_database()}?sslmode=disable",
            "s3": f"s3://state?endpoint={endpoint}&region=us-east-1&s3ForcePathStyle=true"
            "&response_checksum_validation=when_required",
        }
        report = {name: measure(root, name, url, fly.url, args.runs) for name, url in backends.items()}
    finally:
        moto.stop()
        fly.stop()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    for name in ("postgres", "s3"):
        for op in ("preview_s", "up_s"):
            report[name][f"{op[:-2]}_over_file_s"] = round(report[name][op] - report["file"][op], 3)
    if args.json:
        print(json.dumps(report))
    else:
        for name, numbers in report.items():
            print(f"{name:<9} " + "  ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
