"""`silo pr up|down|gc`: a silo per pull request on a shared PostgreSQL state, the real CLI and the Fly
emulator (issue 23): made from the template with unique names, its Kong URL and anon key as the PR
comment, a cap, a TTL that `gc` honours, and `down` leaving nothing behind."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from emulators.fly import FlyEmulator
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.team import TeamCli, postgres_state

pytestmark = [pytest.mark.engine, pytest.mark.db]

TEMPLATE = {
    "pr": {"ttl": "72h", "max": 2},
    "config": {
        "silo:client": "acme",
        "silo:app": "erp",
        "silo:flyOrg": "acme-erp",
        "silo:siteUrl": "https://deploy-preview-{pr}--acme-erp.netlify.app",
        "silo:studio": "false",
    },
}


@pytest.fixture
def team(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[tuple[TeamCli, FlyEmulator]]:
    fly = FlyEmulator()
    fly.start()
    cli = TeamCli(tmp_path, postgres_state(postgres_server).url, {"FLY_API_HOSTNAME": fly.url})
    (cli.project / "pr-silo.yaml").write_text(yaml.safe_dump(TEMPLATE))
    try:
        yield cli, fly
    finally:
        fly.stop()


def pr_apps(fly: FlyEmulator, number: int) -> list[str]:
    return sorted(a for a in fly.snapshot()["apps"] if a.startswith(f"devenv-acme-erp-pr{number}-"))


def stacks(cli: TeamCli) -> list[str]:
    return sorted(s["name"] for s in json.loads(cli.run("stack", "ls", "--json").stdout))


def test_a_pull_request_gets_its_own_silo_until_it_closes_or_expires(
    team: tuple[TeamCli, FlyEmulator], tmp_path: Path
) -> None:
    cli, fly = team
    up = cli.silo("pr", "up", "7", "--comment-file", str(tmp_path / "comment.md"))
    assert up.returncode == 0, up.stdout + up.stderr
    comment = (tmp_path / "comment.md").read_text()
    assert comment.strip() == up.stdout.strip()
    anon = cli.run("stack", "output", "anon_key", "--stack", "pr-7").stdout.strip()
    assert "| Supabase URL (Kong) | https://devenv-acme-erp-pr7-kong.fly.dev |" in comment
    assert f"`{anon}`" in comment and comment.startswith("<!-- silo-pr -->")
    service_key = cli.run("stack", "output", "service_role_key", "--show-secrets", "--stack", "pr-7").stdout.strip()
    assert service_key not in comment + up.stdout + up.stderr
    assert "devenv-acme-erp-pr7-kong" in pr_apps(fly, 7)
    # The stack's own file is the template's, made for the run and removed after it.
    assert not list(cli.project.glob("Pulumi.pr-*.yaml"))
    tags = json.loads(cli.run("stack", "tag", "ls", "--json", "--stack", "pr-7").stdout)
    expires = dt.datetime.fromisoformat(tags["silo:pr-expires"])
    assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(hours=71) and tags["silo:pr"] == "7"

    # A second PR silo that expires at once; a third is over the template's cap of 2.
    assert cli.silo("pr", "up", "8", "--ttl", "0s").returncode == 0
    capped = cli.silo("pr", "up", "9")
    assert capped.returncode == 1
    assert capped.stderr.strip() == (
        "error: pr-9: 2 PR silos exist already (pr-7, pr-8), the cap is 2: `silo pr down <number>` one, "
        "or `silo pr gc` the expired ones"
    )
    assert stacks(cli) == ["pr-7", "pr-8"] and not pr_apps(fly, 9)

    # A push: the same silo again, its TTL renewed; the fleet sees PR silos like any other.
    again = cli.silo("pr", "up", "7")
    assert again.returncode == 0, again.stdout + again.stderr
    previewed = cli.silo("fleet", "preview", "--only", "pr-*")
    assert previewed.returncode == 0, previewed.stdout + previewed.stderr
    assert "fleet preview: 2 stack(s): 2 ok" in previewed.stdout
    assert not list(cli.project.glob("Pulumi.pr-*.yaml"))

    gc = cli.silo("pr", "gc")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert "pr-8: destroyed" in gc.stdout and "pr-7: kept until" in gc.stdout
    assert stacks(cli) == ["pr-7"] and not pr_apps(fly, 8)

    down = cli.silo("pr", "down", "7")
    assert down.returncode == 0 and "pr-7: destroyed" in down.stdout, down.stdout + down.stderr
    assert stacks(cli) == []
    snap = fly.snapshot()
    assert snap["apps"] == {} and snap["volumes"] == {}, "a PR silo's data is deleted with it"
    again_down = cli.silo("pr", "down", "7")
    assert again_down.returncode == 0 and "nothing to destroy" in again_down.stdout
