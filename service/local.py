"""`make serve`: the provisioning API on this machine in one command, nothing touching a real account.

It starts (or finds running, from an earlier `make serve`) everything the service needs on loopback,
each keeping its state under `.silo/serve/` so a restart (or a crash) finds it again:
- a PostgreSQL for the registry and the queue (`.silo/serve/postgres`, or /var/tmp/silo-serve-* as root;
  port 54329 or SILO_SERVE_PG_PORT);
- the Fly emulator (scripts/emulator.sh, the one `make up` uses) and the Cloudflare emulator
  (`.silo/serve/cloudflare.json`, port 4281 or SILO_CF_EMULATOR_PORT);
- the control stack (the repository's Pulumi.control.yaml: registry schema, backup bucket), brought up;
then serves the API at 127.0.0.1:8787 with one token per role in `.silo/serve/tokens.json` (0600).

A dev tool, run from the repository root (it uses the test suite's PostgreSQL helper and the emulators).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from service.settings import REPO_ROOT, ServiceSettings

# The dev tools it uses (the emulators, the test suite's PostgreSQL helper) are beside the package, in the
# checkout; a console script (venv/bin/silo) does not put the checkout on sys.path by itself.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SERVE_DIR = REPO_ROOT / ".silo" / "serve"
PG_PORT = int(os.environ.get("SILO_SERVE_PG_PORT", "54329"))
CF_PORT = int(os.environ.get("SILO_CF_EMULATOR_PORT", "4281"))
CF_TOKEN = "local-cloudflare-token"  # the local emulator accepts this one only; not a secret
CF_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
CF_PARENT_ACCESS_KEY_ID = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def _say(line: str) -> None:
    print(f"serve: {line}", file=sys.stderr, flush=True)


def start_postgres() -> str:
    from tests.fixtures.postgres import PostgresServer, _os_user, find_bindir

    user = _os_user()
    root = SERVE_DIR / "postgres"
    if user is not None:
        # As root the server runs as another user (initdb refuses root), who cannot enter .silo/ (0700):
        # its data lives in a directory of its own, one per checkout.
        import hashlib

        root = Path("/var/tmp") / f"silo-serve-{hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]}"
    server = PostgresServer(bindir=find_bindir(), root=root, user=user, port=PG_PORT)
    server.root.mkdir(parents=True, exist_ok=True)
    if not server.running():
        _say(f"starting PostgreSQL on 127.0.0.1:{PG_PORT} (data: {server.data})")
        server.start()
    return server.dsn()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_cloudflare() -> str:
    url = f"http://127.0.0.1:{CF_PORT}"
    if not _listening(CF_PORT):
        _say(f"starting the Cloudflare emulator on {url} (state: .silo/serve/cloudflare.json)")
        with open(SERVE_DIR / "cloudflare.log", "ab") as log:
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from pathlib import Path; from emulators.cloudflare import serve; "
                    "serve('127.0.0.1', int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])",
                    str(CF_PORT),
                    str(SERVE_DIR / "cloudflare.json"),
                    CF_TOKEN,
                ],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        for _ in range(100):
            if _listening(CF_PORT):
                break
            time.sleep(0.1)
    return url


def start_fly() -> str:
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "emulator.sh")], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip())
    return done.stdout.strip().splitlines()[-1]


def up_control(env: dict[str, str]) -> None:
    from engine.runner import run
    from engine.workspace import select_stack, workspace

    os.environ.update(env)
    stack = select_stack(workspace(REPO_ROOT, REPO_ROOT / ".silo"), "control")
    _say("bringing up the control stack (registry schema, backup bucket)")
    result = run(stack, "up")
    if not result.ok:
        raise SystemExit(f"serve: the control stack failed: {result.error}")


def local_settings(port: int = 8787) -> ServiceSettings:
    SERVE_DIR.mkdir(parents=True, exist_ok=True)
    SERVE_DIR.chmod(0o700)
    dsn = start_postgres()
    env = {
        "FLY_API_HOSTNAME": start_fly(),
        "FLY_API_TOKEN": "",
        "CLOUDFLARE_API_URL": start_cloudflare(),
        "CLOUDFLARE_API_TOKEN": CF_TOKEN,
        "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT_ID,
        "CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID": CF_PARENT_ACCESS_KEY_ID,
        "SILO_REGISTRY_DSN": dsn,
    }
    up_control(env)
    return ServiceSettings(
        registry_dsn=dsn,
        port=port,
        fly_org="acme-erp",
        control_stack="organization/silo/control",
        kilo_api_url=f"http://127.0.0.1:{port}",
        allow_town_data_deletion=True,  # local towns hold nothing worth keeping
        env=env,
    ).check()


def tokens_path() -> Path:
    return SERVE_DIR / "tokens.json"
