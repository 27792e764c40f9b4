"""`silo fleet` over every stack of a shared PostgreSQL state, on the real CLI and the emulators (issue 23).

One fleet (the control stack, a silo with a town that reads it, a plain silo) goes through what a team
does with it: `fleet up` (control first), `fleet preview` (all in sync, --only/--exclude), the scheduled
drift check's own script (.github/workflows/drift.yml, with the real `silo` and a stand-in `gh`) after a
secret is changed behind Pulumi's back, `fleet refresh`, a stack whose file is broken (one failed line,
the others fine), and `fleet status`. Then the PostgreSQL backend with more stacks than its connection pool
can list at once (the CLI's `stack ls` deadlock, worked around by `silo fleet`).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from emulators.cloudflare import CloudflareEmulator
from emulators.fly import FlyEmulator
from tests.fixtures.cloudflare import CF_ACCOUNT_ID, CF_PARENT_ACCESS_KEY_ID, CF_TOKEN
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.team import REPO_ROOT, TeamCli, postgres_state

pytestmark = [pytest.mark.engine, pytest.mark.db]

DRIFT = REPO_ROOT / ".github" / "workflows" / "drift.yml"
CONTROL = {"silo:kind": "control", "silo:backupBucket": "fleet-backups"}


def silo(app: str, **more: object) -> dict[str, object]:
    return {
        "silo:client": "fleet",
        "silo:app": app,
        "silo:flyOrg": "fleet",
        "silo:siteUrl": f"https://{app}.example",
        "silo:studio": "false",
        **more,
    }


STACKS = {
    "control": CONTROL,
    "towns": silo(
        "towns", **{"silo:controlStack": "organization/silo/control", "silo:towns": [{"name": "t1", "user": "u1"}]}
    ),
    "plain": silo("plain"),
}


@pytest.fixture
def fleet(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[tuple[TeamCli, FlyEmulator]]:
    """Three stacks initialised on a fresh PostgreSQL state, none deployed yet."""
    backend = postgres_state(postgres_server)
    fly, cloudflare = FlyEmulator(), CloudflareEmulator(token=CF_TOKEN)
    fly.start()
    cloudflare.start()
    env = {
        "FLY_API_HOSTNAME": fly.url,
        "SILO_REGISTRY_DSN": postgres_server.dsn(postgres_server.create_database()),
        "CLOUDFLARE_API_URL": cloudflare.url,
        "CLOUDFLARE_API_TOKEN": CF_TOKEN,
        "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT_ID,
        "CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID": CF_PARENT_ACCESS_KEY_ID,
    }
    cli = TeamCli(tmp_path, backend.url, env)
    try:
        for name, config in STACKS.items():
            cli.init(name, config)
        yield cli, fly
    finally:
        fly.stop()
        cloudflare.stop()


def rows(output: str) -> dict[str, list[str]]:
    """The summary table's rows by stack (the lines after the STACK header, up to the first blank cell)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("STACK "))
    out = {}
    for line in lines[start + 1 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < 3:
            break
        out[cells[0]] = cells[1:]
    return out


def tamper_secret(fly: FlyEmulator, app: str) -> None:
    """Change one of an app's Fly secrets outside Pulumi (what someone's `fly secrets set` does)."""
    name = next(k for k in fly.snapshot()["secrets"][app] if not k.startswith("SILO_OWNER_"))
    response = httpx.post(
        f"{fly.url}/v1/apps/{app}/secrets",
        json={"values": {name: "set-by-hand"}},
        headers={"Authorization": "Bearer t"},
    )
    assert response.status_code == 200, response.text


def run_step(name: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    [script] = [s["run"] for s in yaml.safe_load(DRIFT.read_text())["jobs"]["drift"]["steps"] if s.get("name") == name]
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_fleet_up_preview_drift_refresh_and_status(fleet: tuple[TeamCli, FlyEmulator], tmp_path: Path) -> None:
    cli, fly = fleet
    up = cli.silo("fleet", "up", "--parallel-stacks", "3")
    assert up.returncode == 0, up.stdout + up.stderr
    table = rows(up.stdout)
    assert {name: cells[0] for name, cells in table.items()} == dict.fromkeys(STACKS, "updated")
    # The control stack ran on its own, before any silo started (the town reads it through a StackReference).
    lines = up.stdout.splitlines()
    control_done = next(i for i, line in enumerate(lines) if re.match(r"control\s+updated", line))
    assert all(i > control_done for i, line in enumerate(lines) if re.match(r"(towns|plain)\s+up \.\.\.", line))
    assert "fleet up: 3 stack(s): 3 updated" in up.stdout

    details = tmp_path / "preview.md"
    preview = cli.silo("fleet", "preview", "--summary-md", str(details))
    assert preview.returncode == 0, preview.stdout + preview.stderr + details.read_text()
    assert {name: cells[0] for name, cells in rows(preview.stdout).items()} == dict.fromkeys(STACKS, "ok")
    chosen = cli.silo("fleet", "preview", "--only", "t*", "--only", "p*", "--exclude", "plain")
    assert chosen.returncode == 0 and list(rows(chosen.stdout)) == ["towns"], chosen.stdout + chosen.stderr
    nothing = cli.silo("fleet", "preview", "--only", "nope-*")
    assert nothing.returncode == 2 and "no stack of 3 matches" in nothing.stderr

    # The drift check, as the workflow runs it: the real silo on PATH, a stand-in gh.
    tamper_secret(fly, "devenv-fleet-plain-rest")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text('#!/bin/sh\necho "$*" >> "$GH_LOG"\n')
    gh.chmod(gh.stat().st_mode | stat.S_IEXEC)
    summary, outputs, gh_log = tmp_path / "summary.md", tmp_path / "outputs", tmp_path / "gh.log"
    env = {
        **cli.env,
        "PATH": f"{bin_dir}:{REPO_ROOT / 'venv' / 'bin'}:{os.environ['PATH']}",
        "GITHUB_ACTIONS": "true",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(outputs),
        "GH_LOG": str(gh_log),
        "RUN_URL": "https://github.com/acme/silo/actions/runs/1",
    }
    checked = run_step("silo fleet preview --refresh --expect-no-changes", cli.project, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # the step records the exit code
    assert "code=1" in outputs.read_text()
    assert "::warning title=Drift in stack plain::" in checked.stdout
    text = summary.read_text()
    assert "| `plain` | drifted |" in text and "| `towns` | ok |" in text and "| `control` | ok |" in text
    assert "<details><summary>plain: drifted</summary>" in text and "devenv-fleet-plain-rest-secrets" in text
    assert "Run: https://github.com/acme/silo/actions/runs/1" in text
    reported = run_step("comment on the drift issue", cli.project, {**env, "CODE": "1"})
    assert reported.returncode == 1  # the run fails, after the issue has the summary
    assert "issue create --title Stack drift --label drift --body-file drift-summary.md" in gh_log.read_text()

    refresh = cli.silo("fleet", "refresh", "--only", "plain")
    assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    assert rows(refresh.stdout)["plain"][:3] == ["drifted", "1 update", "1"]
    converged = cli.silo("fleet", "up", "--only", "plain")
    assert converged.returncode == 0 and rows(converged.stdout)["plain"][0] == "updated", converged.stdout
    assert rows(cli.silo("fleet", "preview", "--refresh", "--only", "plain").stdout)["plain"][0] == "ok"

    # A stack that fails is one line; the others run.
    cli.write_config("plain", silo("plain", **{"silo:region": "xyz"}))
    broken = cli.silo("fleet", "preview")
    assert broken.returncode == 1
    assert {name: cells[0] for name, cells in rows(broken.stdout).items()} == {
        "control": "ok", "plain": "failed", "towns": "ok",
    }  # fmt: skip
    [line] = [line for line in broken.stdout.splitlines() if line.startswith("failed: plain: ")]
    assert "silo:region" in line
    assert "Traceback" not in broken.stdout + broken.stderr

    status = cli.silo("fleet", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    states = {name: cells for name, cells in rows(status.stdout).items()}
    assert states["towns"][:2] == ["ok", "running"] and states["control"][:2] == ["ok", "control"]
    assert states["plain"][-1] == "https://devenv-fleet-plain-kong.fly.dev"


def test_fleet_lists_more_stacks_than_the_postgres_backend_pool_can_list_at_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """With GOMAXPROCS=2 the backend has 4 connections, and `pulumi stack ls` lists with 10 workers that each
    hold one and wait for another: it never returns once there are 4 stacks or more."""
    backend = postgres_state(postgres_server)
    cli = TeamCli(tmp_path, backend.url, {"GOMAXPROCS": "2"})
    names = [f"s{i}" for i in range(6)]
    for name in names:
        cli.run("stack", "init", name)
    status = cli.silo("fleet", "status", timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr
    assert sorted(rows(status.stdout)) == names
