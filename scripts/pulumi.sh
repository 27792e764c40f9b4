#!/usr/bin/env bash
# Run the real `pulumi <op>` of one stack (python -m engine: the CLI built by `make engine`, or a
# `pulumi` on PATH). Without a Fly token (fly:apiToken / FLY_API_TOKEN) the program talks to the
# local Fly emulator, which this script starts (scripts/emulator.sh: state kept in .silo/);
# SILO_EMULATOR_PORT moves it (default 4280).
set -euo pipefail
op=${1:?usage: scripts/pulumi.sh up|preview|destroy|refresh STACK [--verbose]}
stack=${2:-dev}
cd "$(dirname "$0")/.."
# .silo/ holds the state, its passphrase and the emulator's world: its owner's only, and so is every file
# this run makes (python -m engine also runs the CLI with umask 077; engine/workspace.py).
umask 077
mkdir -p .silo
chmod 700 .silo

# Which Fly this run targets, said every time; with no token, this checkout's own emulator (started if
# needed; another process on its port is refused).
# shellcheck source=scripts/fly-target.sh
source scripts/fly-target.sh
fly_target "$PWD" "Pulumi.${stack}.yaml"

exec venv/bin/python -m engine "${op}" "${stack}" "${@:3}"
