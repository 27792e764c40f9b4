"""The pure parts of team scale (issue 23), without the engine: reading a backend's locks (the S3 request
signature against botocore's own signer, key prefixes, the file backend's lock files), how `silo fleet`
picks, orders, judges and reports stacks, and how `silo pr` makes a pull request's stack file."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from unittest import mock

import pytest
import yaml
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from components.cli import fleet, pr
from components.cli.main import main
from engine.locks import _S3, _sign, key_prefix, redact, stack_locks
from engine.runner import RunResult, Step

NOW = dt.datetime(2026, 12, 7, 10, 0, 0, tzinfo=dt.UTC)


# -- engine/locks.py -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("s3", "key", "query"),
    [
        # R2 as the docs reach it: an endpoint, path style, region auto; a key with a space and a plus.
        (_S3("state", "https://acct.r2.cloudflarestorage.com", "auto", True, "AK", "S/k+x", ""), "a b+c.json", ""),
        # AWS: virtual-host style, a session token, a listing with a continuation token.
        (_S3("state", "https://s3.eu-west-1.amazonaws.com", "eu-west-1", False, "AK", "SK", "tok"), "", "x"),
    ],
)
def test_s3_request_signature_is_the_one_botocore_computes(s3: _S3, key: str, query: str) -> None:
    url = s3.url(key)
    if query:
        url += "?list-type=2&prefix=team%2F.pulumi%2Flocks%2F&continuation-token=a%2Bb%3D"
    ours = _sign(s3, "GET", url, NOW)
    request = AWSRequest(method="GET", url=url, headers={"x-amz-content-sha256": ours["x-amz-content-sha256"]})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(Credentials(s3.access_key, s3.secret_key, s3.token or None), "s3", s3.region).add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]


def test_keys_live_under_the_backend_urls_path() -> None:
    assert key_prefix("postgres://u@db:5432/state?sslmode=require") == "state/"
    assert key_prefix("s3://bucket?endpoint=https://x") == ""
    assert key_prefix("s3://bucket/team-a/silo?region=auto") == "team-a/silo/"
    assert redact("postgres://pulumi:hunter2@db:5432/state") == "postgres://pulumi:****@db:5432/state"


def test_file_backend_locks_name_their_holder(tmp_path: Path) -> None:
    locks = tmp_path / ".pulumi" / "locks" / "organization" / "silo"
    for stack, pid in (("dev", 4242), ("other", 1)):
        (locks / stack).mkdir(parents=True)
        doc = {"pid": pid, "username": "ci", "hostname": socket.gethostname(), "timestamp": "2026-12-07T10:00:00Z"}
        (locks / stack / "0f.json").write_text(json.dumps(doc))
    [lock] = stack_locks(tmp_path.as_uri(), "dev")
    assert (lock.pid, lock.holder) == (4242, f"ci@{socket.gethostname()} (pid 4242)")
    assert stack_locks(tmp_path.as_uri(), "organization/silo/dev") == [lock]
    assert stack_locks(tmp_path.as_uri(), "prod") == []


# -- components/cli/fleet.py -----------------------------------------------------------------------------
def test_only_and_exclude_are_glob_patterns_on_stack_names() -> None:
    names = ["pr-12", "pr-7", "acme-erp", "control", "beta-x"]
    assert fleet.pick(names) == sorted(names)
    assert fleet.pick(names, only=["pr-*"]) == ["pr-12", "pr-7"]
    assert fleet.pick(names, only=["pr-*", "acme-*"], exclude=["pr-1?"]) == ["acme-erp", "pr-7"]
    assert fleet.pick(names, exclude=["*"]) == []


def test_up_runs_control_stacks_first(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.control.yaml").write_text(yaml.safe_dump({"config": {"silo:kind": "control"}}))
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {"silo:client": "acme"}}))
    names = ["control", "dev", "pr-3"]
    assert fleet.waves(tmp_path, names, "up") == [["control"], ["dev", "pr-3"]]
    assert fleet.waves(tmp_path, names, "preview") == [names]


LOCKED_STDERR = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete "
    "the lock file with `pulumi cancel`.\n  postgres://****:****@db/state/.pulumi/locks/organization/silo/dev/"
    "1.json?sslmode=require: created by ci@runner-7 (pid 812) at 2026-12-07T10:01:07Z"
)


def test_a_locked_stack_is_one_line_naming_the_holder() -> None:
    failed = RunResult(op="up", ok=False, error=f"\n code: 255\n stdout: \n stderr: {LOCKED_STDERR}")
    result, line = fleet.one_line_error(failed, "dev")
    assert result == "locked"
    assert line == (
        "locked by ci@runner-7 (pid 812) since 2026-12-07T10:01:07Z: another run of this stack is going; "
        "if it died, `silo recover dev` clears its lock"
    )


def test_other_failures_are_their_first_error_line_with_the_resource_name() -> None:
    urn = "urn:pulumi:dev::silo::silo:devenv:DevEnvStack$pulumi-python:dynamic/fly:App::devenv-acme-erp-pg"
    failed = RunResult(op="preview", ok=False, error=f"{urn}: Fly API 401: token expired\nsecond line")
    assert fleet.one_line_error(failed, "dev") == ("failed", "devenv-acme-erp-pg: Fly API 401: token expired")
    cli = RunResult(op="preview", ok=False, error="\n code: 255\n stdout: \n stderr: error: no stack named 'x'")
    assert fleet.one_line_error(cli, "x") == ("failed", "no stack named 'x'")


def steps(**ops: str) -> list[Step]:
    return [Step(name, "pulumi-python:dynamic/fly:Machine", op, f"urn:x::{name}") for name, op in ops.items()]


@pytest.mark.parametrize(
    ("op", "refreshed", "changes", "ops", "want"),
    [
        ("preview", False, {"same": 30}, {"a": "same"}, ("ok", None)),
        ("preview", False, {"same": 29, "update": 1}, {"a": "update"}, ("changes", None)),
        ("preview", True, {"same": 29, "update": 1}, {"a": "update"}, ("drifted", 1)),
        ("refresh", False, {"same": 28, "update": 2}, {"a": "update", "b": "delete"}, ("drifted", 2)),
        ("up", False, {"same": 29, "create": 1}, {"a": "create"}, ("updated", None)),
        ("up", False, {"same": 30}, {"a": "same"}, ("ok", None)),
    ],
)
def test_each_run_comes_to_one_result(op, refreshed, changes, ops, want) -> None:
    outcome = fleet.outcome_of(
        "dev", op, RunResult(op=op, ok=True, changes=changes, steps=steps(**ops)), refreshed=refreshed
    )
    assert (outcome.result, outcome.drift) == want
    assert "same" not in outcome.changes


def test_the_markdown_summary_has_every_stack_and_the_details_of_the_others() -> None:
    outcomes = [
        fleet.Outcome("dev", "preview", "ok", seconds=3.21),
        fleet.Outcome("pr-7", "preview", "drifted", {"update": 2}, 2, 4.0, changed={"pr-7-kong-secrets": "update"}),
        fleet.Outcome("prod", "preview", "failed", seconds=0.5, message="silo:region: unknown region xyz"),
    ]
    text = fleet.markdown("silo fleet preview --refresh", outcomes)
    assert "| `dev` | ok | - | - | 3.2s |" in text
    assert "| `pr-7` | drifted | 2 update | 2 | 4.0s |" in text
    assert "<details><summary>pr-7: drifted</summary>" in text and "update: pr-7-kong-secrets" in text
    assert "<details><summary>prod: failed</summary>" in text and "silo:region: unknown region xyz" in text
    assert "<details><summary>dev" not in text


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["fleet", "preview", "--parallel-stacks", "0"], "must be at least 1"),
        (["fleet", "up", "--refresh"], "--refresh: only for preview"),
        (["fleet", "drift"], "invalid choice"),
        (["pr", "up", "0"], "must be a pull request's number"),
        (["pr", "up", "7", "--max", "-1"], "must be at least 1"),
    ],
)
def test_bad_usage_is_exit_2_with_one_line(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert said in capsys.readouterr().err


# -- components/cli/pr.py --------------------------------------------------------------------------------
def template(tmp_path: Path, config: dict | None = None, **settings: object) -> pr.Template:
    doc = {
        "pr": settings or {"ttl": "48h", "max": 3},
        "config": config
        or {
            "silo:client": "acme",
            "silo:app": "erp",
            "silo:flyOrg": "acme-erp",
            "silo:siteUrl": "https://deploy-preview-{pr}--acme.netlify.app",
        },
    }
    path = tmp_path / "pr-silo.yaml"
    path.write_text(yaml.safe_dump(doc))
    return pr.load_template(path)


def test_a_pr_stack_file_is_the_template_with_its_number(tmp_path: Path) -> None:
    made = template(tmp_path)
    assert (made.ttl, made.max) == (dt.timedelta(hours=48), 3)
    config = pr.pr_config(made, 42)
    assert config["silo:app"] == "erp-pr42"  # the reserved suffix: no real silo's slug
    assert config["silo:siteUrl"] == "https://deploy-preview-42--acme.netlify.app"
    assert config["silo:allowDataDeletion"] == "true"  # a PR silo's data is throwaway
    text = pr.stack_file_text(made, 42)
    assert yaml.safe_load(text)["config"] == config and text.startswith("# Generated by `silo pr up 42`")


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"silo:app": "erp-{pr}"}, "silo:app: the template's app slug, without {pr}"),
        ({"silo:kind": "control"}, "silo:kind: a PR silo is a silo"),
        ({"silo:towns": [{"name": "alpha", "user": "u"}]}, "silo:towns[0].name: must name {pr}"),
        ({"silo:region": "nowhere"}, "for PR 5: silo:region:"),
    ],
)
def test_a_template_that_would_collide_or_is_invalid_is_refused(tmp_path: Path, change: dict, said: str) -> None:
    base = {"silo:client": "acme", "silo:app": "erp", "silo:flyOrg": "acme", "silo:siteUrl": "https://a.example"}
    with pytest.raises(pr.PrError) as raised:
        pr.pr_config(template(tmp_path, {**base, **change}), 5)
    assert said in str(raised.value)


def test_a_real_silo_with_the_pr_slug_is_found(tmp_path: Path) -> None:
    made = template(tmp_path)
    other = {"silo:client": "acme-erp", "silo:app": "pr7", "silo:flyOrg": "x", "silo:siteUrl": "https://x.example"}
    (tmp_path / "Pulumi.legacy.yaml").write_text(yaml.safe_dump({"config": other}))
    assert pr.silo_id_clash(tmp_path, pr.pr_config(made, 7)) == "Pulumi.legacy.yaml"
    assert pr.silo_id_clash(tmp_path, pr.pr_config(made, 8)) is None


@pytest.mark.parametrize(
    ("settings", "said"),
    [({"ttl": "3 days"}, "pr.ttl: must be a whole number of s, m, h or d"), ({"max": 0}, "pr.max: must be")],
)
def test_bad_pr_settings_name_the_key(tmp_path: Path, settings: dict, said: str) -> None:
    with pytest.raises(pr.PrError) as raised:
        template(tmp_path, None, **settings)
    assert str(raised.value).startswith(f"{tmp_path / 'pr-silo.yaml'}: ") and said in str(raised.value)


def test_the_comment_has_the_public_url_and_key_only() -> None:
    outputs = {"supabase_url": "https://devenv-acme-erp-pr7-kong.fly.dev", "anon_key": "a.b.c", "service_role_key": "s"}
    text = pr.comment(outputs, 7, NOW)
    assert text.startswith(pr.COMMENT_MARK)
    assert "| Supabase URL (Kong) | https://devenv-acme-erp-pr7-kong.fly.dev |" in text and "`a.b.c`" in text
    assert "2026-12-07 10:00 UTC" in text and "| s |" not in text and "`s`" not in text
