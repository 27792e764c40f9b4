"""The ``silo`` CLI as users run it: ``python -m components.cli.main ...`` in a subprocess."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from components.cli.main import fly_config_map, format_table, main

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / "venv" / "bin" / "python"
GOOD: dict[str, Any] = {
    "silo:client": "acme",
    "silo:app": "erp",
    "silo:flyOrg": "acme-erp",
    "silo:region": "yul",
    "silo:state": "running",
    "silo:rlsMode": "production",
    "silo:autoStopMinutes": "30",
    "silo:studio": "true",
    "silo:siteUrl": "https://silo-acme-erp--prod.netlify.app",
    "silo:controlStack": "acme/silo/control",
}


def silo(*args: str | Path) -> subprocess.CompletedProcess[str]:
    python = PYTHON if PYTHON.exists() else Path(sys.executable)
    return subprocess.run(
        [str(python), "-m", "components.cli.main", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stack_file(tmp_path: Path, config: dict[str, Any], name: str = "Pulumi.test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))
    return path


def test_repo_dev_stack_validates() -> None:
    result = silo("validate", "Pulumi.dev.yaml")
    assert (result.returncode, result.stdout) == (0, "ok: acme-erp\n")
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["validate", "render", "status", "adopt"])
def test_the_control_stack_file_gets_one_line_not_a_traceback(command: str, tmp_path: Path) -> None:
    # The control stack has no Fly apps: every command answers in one line instead of crashing on it.
    extra = ["--out", str(tmp_path / "out")] if command == "render" else []
    result = silo(command, "Pulumi.control.yaml", *extra)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and len(result.stdout.strip().splitlines()) == 1
    expected = "ok: control stack" if command == "validate" else "is the control stack (silo:kind control)"
    assert expected in result.stdout
    assert not (tmp_path / "out").exists()


def test_valid_file_with_towns(tmp_path: Path) -> None:
    towns = [{"name": "alpha", "user": "u1", "rigs": [{"name": "web", "url": "git@github.com:acme/web.git"}]}]
    result = silo("validate", stack_file(tmp_path, GOOD | {"silo:towns": towns, "fly:apiToken": {"secure": "v1:x"}}))
    assert (result.returncode, result.stdout.strip()) == (0, "ok: acme-erp")


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            {"silo:client": "Acme"},
            "silo:client: must be a slug of lowercase letters, digits and single dashes, "
            'starting with a letter (got "Acme")',
        ),
        ({"silo:app": "erp_v2"}, "silo:app: must be a slug of lowercase letters, digits and single dashes"),
        (
            {"silo:app": "x" * 50},
            "silo:app: Fly app name devenv-acme-" + "x" * 50 + "-storage would be 70 characters",
        ),
        ({"silo:region": "montreal"}, 'silo:region: unknown Fly region "montreal"'),
        ({"silo:state": "paused"}, 'silo:state: must be one of running or stopped (got "paused")'),
        (
            {"silo:rlsMode": "off"},
            'silo:rlsMode: must be one of production, permissive or disabled (got "off")',
        ),
        (
            {"silo:siteUrl": "http://silo-acme-erp.netlify.app"},
            "silo:siteUrl: must be an https:// URL with a host",
        ),
        ({"silo:flyOrg": None}, "silo:flyOrg: must be a Fly organization slug"),
        (
            {"silo:autoStopMInutes": "10"},
            "silo:autoStopMInutes: unknown key (did you mean silo:autoStopMinutes?)",
        ),
        (
            {"silo:towns": [{"name": "a", "user": "u"}, {"name": "a", "user": "v"}]},
            'silo:towns: duplicate town name "a"',
        ),
        (
            {"silo:towns": [{"name": "a", "user": "u", "rigs": [{"name": "web", "url": "ftp://h/r"}]}]},
            "silo:towns[0].rigs[0].url: must be a git URL",
        ),
    ],
)
def test_invalid_files_exit_2_with_a_line_naming_the_key(tmp_path: Path, change: dict[str, Any], line: str) -> None:
    result = silo("validate", stack_file(tmp_path, GOOD | change))
    assert result.returncode == 2
    assert result.stdout == ""
    assert any(err.startswith(line) for err in result.stderr.splitlines()), result.stderr


def test_missing_org_and_several_problems_each_get_a_line(tmp_path: Path) -> None:
    config = {k: v for k, v in GOOD.items() if k != "silo:flyOrg"} | {
        "silo:state": "off",
        "silo:studio": "maybe",
    }
    result = silo("validate", stack_file(tmp_path, config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "silo:flyOrg: required",
        'silo:state: must be one of running or stopped (got "off")',
        'silo:studio: must be true or false (got "maybe")',
    ]
    assert "Traceback" not in result.stderr


def test_missing_or_broken_files(tmp_path: Path) -> None:
    missing = silo("validate", tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "cannot read the stack file" in missing.stderr
    broken = tmp_path / "Pulumi.broken.yaml"
    broken.write_text("config:\n  silo:client: [acme\n")
    result = silo("validate", broken)
    assert result.returncode == 2 and "not valid YAML at line" in result.stderr


def test_usage_errors_exit_2_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["emulator", "--port", "http"]) == 2
    assert "must be a port number" in capsys.readouterr().err
    assert main(["validate", str(REPO / "Pulumi.dev.yaml")]) == 0
    assert capsys.readouterr().out == "ok: acme-erp\n"


def test_status_table_formatting() -> None:
    rows = [
        {
            "app": "devenv-acme-erp-pg",
            "machine_id": "148e1",
            "state": "started",
            "checks": ["pg: passing"],
            "volume": "vol_1",
            "ips": ["fdaa::3", "172.16.0.2"],
        },
        {"app": "devenv-acme-erp-kong", "machine_id": None, "state": "stopped", "checks": []},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["APP", "MACHINE", "STATE", "CHECKS", "VOLUME", "IPS"]
    assert lines[1].split() == [
        "devenv-acme-erp-pg",
        "148e1",
        "started",
        "pg:",
        "passing",
        "vol_1",
        "fdaa::3,172.16.0.2",
    ]
    assert lines[2].split() == ["devenv-acme-erp-kong", "-", "stopped", "-", "-", "-"]
    # Columns line up: every row starts its STATE cell at the same offset.
    assert len({line.index(cell) for line, cell in zip(lines, ["STATE", "started", "stopped"], strict=True)}) == 1


def test_encrypted_fly_token_is_not_passed_as_a_token() -> None:
    raw = {"fly:apiToken": {"secure": "v1:abc"}, "fly:apiUrl": "http://127.0.0.1:4280", "silo:app": "x"}
    assert fly_config_map(raw) == {"fly:apiUrl": "http://127.0.0.1:4280"}
    assert fly_config_map({"fly:apiToken": "tok"}) == {"fly:apiToken": "tok"}


@pytest.mark.skipif(
    importlib.util.find_spec("components.render.files") is None, reason="components.render.files not written yet"
)
def test_render_writes_files_for_a_valid_stack(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = silo("render", "Pulumi.dev.yaml", "--out", out)
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.splitlines()]
    assert written and all(path.is_file() for path in written)
    assert any("devenv-acme-erp-kong" in path.read_text() for path in written)


def test_render_refuses_an_invalid_stack(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = silo("render", stack_file(tmp_path, GOOD | {"silo:region": "xyz"}), "--out", out)
    assert result.returncode == 2 and result.stderr.startswith("silo:region: ")
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(importlib.util.find_spec("emulators.fly") is None, reason="emulators.fly not written yet")
def test_emulator_command_serves_the_machines_api(tmp_path: Path) -> None:
    port = _free_port()
    python = PYTHON if PYTHON.exists() else Path(sys.executable)
    args = ["emulator", "--port", str(port), "--token", "t0ken", "--state", str(tmp_path / "fly.json")]
    process = subprocess.Popen([str(python), "-m", "components.cli.main", *args], cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}/v1/apps?org_slug=personal"
        response = None
        for _ in range(300):  # wait for the server to listen (bounded, not a timing assertion)
            if process.poll() is not None:
                break
            try:
                response = httpx.get(url, headers={"Authorization": "Bearer t0ken"})
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert response is not None, "the emulator never started listening"
        assert response.status_code == 200
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
