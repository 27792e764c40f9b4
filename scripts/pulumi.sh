#!/usr/bin/env bash
# Run the real `pulumi <op>` of one stack (python -m engine: the CLI built by `make engine`, or a
# `pulumi` on PATH). Without a Fly token (fly:apiToken / FLY_API_TOKEN) the program talks to the
# local Fly emulator, which this script starts (state kept in .silo/); SILO_EMULATOR_PORT moves it
# (default 4280).
set -euo pipefail
op=${1:?usage: scripts/pulumi.sh up|preview|destroy|refresh STACK}
stack=${2:-dev}
cd "$(dirname "$0")/.."
# .silo/ holds the state, its passphrase and the emulator's world: its owner's only, and so is every file
# this run makes (python -m engine also runs the CLI with umask 077; engine/workspace.py).
umask 077
mkdir -p .silo
chmod 700 .silo

has_token() {
  [ -n "${FLY_API_TOKEN:-}" ] || [ -n "${FLY_ACCESS_TOKEN:-}" ] || grep -qE '^[[:space:]]*fly:apiToken:' "Pulumi.${stack}.yaml"
}

if ! has_token && [ -z "${FLY_API_HOSTNAME:-}${FLY_FLAPS_BASE_URL:-}" ]; then
  port=${SILO_EMULATOR_PORT:-4280}
  emulator_up() { (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; }
  if ! emulator_up; then
    echo "no Fly token configured: starting the local Fly emulator on 127.0.0.1:${port} (state: .silo/fly-emulator.json)"
    nohup venv/bin/python -m components.cli.main emulator --port "${port}" --state .silo/fly-emulator.json \
      >.silo/fly-emulator.log 2>&1 &
    echo $! >.silo/fly-emulator.pid  # it keeps serving for later runs: kill "$(cat .silo/fly-emulator.pid)"
    for _ in $(seq 150); do emulator_up && break; sleep 0.1; done
    if ! emulator_up; then
      echo "the Fly emulator did not start on 127.0.0.1:${port}; its log (.silo/fly-emulator.log):" >&2
      cat .silo/fly-emulator.log >&2
      exit 1
    fi
  fi
  export FLY_API_HOSTNAME="http://127.0.0.1:${port}"
fi

exec venv/bin/python -m engine "${op}" "${stack}"
