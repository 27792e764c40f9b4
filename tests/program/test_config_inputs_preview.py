"""Careless and hostile stack config fails `preview` of the real program (real CLI) before anything is
asked of Fly (issue 26 items 7, 8, 11): a credential in plain text, a misspelt provider key (which would
otherwise send the run to the emulator), a site URL that would open GoTrue's redirects. The line is the
one `silo validate` prints, and a plain-text secret is never quoted back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.cli import main as cli
from emulators.fly import FlyEmulator
from tests.fixtures.program import STACK, StackProgram, base_config, fly_env

pytestmark = pytest.mark.engine

PLAIN_SECRET = "plain-SECRET-jwt-value"

CASES = [
    (
        "plain-kilo-jwt",
        {"silo:kiloJwt": PLAIN_SECRET},
        "silo:kiloJwt: must be a secret: set it with `pulumi config set --secret silo:kiloJwt ...`",
    ),
    (
        "plain-fly-token",
        {"fly:apiToken": PLAIN_SECRET},
        "fly:apiToken: must be a secret: set it with `pulumi config set --secret fly:apiToken ...`",
    ),
    ("misspelt-fly-token", {"fly:apitoken": "x"}, "fly:apitoken: unknown key (did you mean fly:apiToken?)"),
    (
        "site-url-list",
        {"silo:siteUrl": "https://a.dev/,https://evil.example"},
        "silo:siteUrl: must be one URL, not a list",
    ),
    ("site-url-wildcard", {"silo:siteUrl": "https://**"}, "silo:siteUrl: must be an exact URL: no wildcard"),
]


@pytest.fixture
def emulator() -> Iterator[FlyEmulator]:
    fly = FlyEmulator()
    fly.start()
    try:
        yield fly
    finally:
        fly.stop()


@pytest.mark.parametrize(("changes", "line"), [pytest.param(c, line, id=i) for i, c, line in CASES])
def test_the_preview_fails_naming_the_key_before_any_fly_call(
    changes: dict[str, Any], line: str, tmp_path: Path, emulator: FlyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    program = StackProgram(tmp_path, STACK, fly_env(emulator))
    result = program.run_config("preview", {**base_config(), **changes})

    assert not result.ok
    assert line in (result.error or ""), result.error
    assert PLAIN_SECRET not in result.text + (result.error or "")
    assert emulator.calls() == []
    # `silo validate` refuses the same file with the same line.
    assert cli.main(["validate", str(program.config_file)]) != 0
    assert line in capsys.readouterr().err
