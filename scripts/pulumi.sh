#!/usr/bin/env bash
# Run `pulumi <op>` for one silo stack. Without a Fly token (fly:apiToken / FLY_API_TOKEN) the
# program talks to the local Fly emulator, which this script starts (state kept in .silo/).
# Without the Pulumi CLI it first tries Pulumi's official installer; where that cannot download
# (an offline machine) it runs the same program under the in-repo engine harness instead.
# SILO_ENGINE=harness skips the CLI altogether; SILO_EMULATOR_PORT moves the emulator (default 4280).
set -euo pipefail
op=${1:?usage: scripts/pulumi.sh up|preview|destroy STACK}
stack=${2:-dev}
cd "$(dirname "$0")/.."
root=$(pwd)
mkdir -p .silo

has_token() {
  [ -n "${FLY_API_TOKEN:-}" ] || [ -n "${FLY_ACCESS_TOKEN:-}" ] || grep -qE '^[[:space:]]*fly:apiToken:' "Pulumi.${stack}.yaml"
}

if ! has_token && [ -z "${FLY_API_HOSTNAME:-}${FLY_FLAPS_BASE_URL:-}" ]; then
  port=${SILO_EMULATOR_PORT:-4280}
  emulator_up() { (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; }
  if ! emulator_up; then
    echo "no Fly token configured: starting the local Fly emulator on 127.0.0.1:${port} (state: .silo/fly-emulator.json)"
    nohup venv/bin/python -m components.cli emulator --port "${port}" --state .silo/fly-emulator.json \
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

engine=${SILO_ENGINE:-auto}
if [ "${engine}" = harness ]; then
  exec venv/bin/python -m harness "${op}" --stack "${stack}" --project-dir "${root}"
fi
if ! command -v pulumi >/dev/null 2>&1 && [ ! -x "${HOME}/.pulumi/bin/pulumi" ]; then
  echo "installing the Pulumi CLI with its official installer"
  curl -fsSL --max-time 60 https://get.pulumi.com | sh || true
fi
export PATH="${HOME}/.pulumi/bin:${PATH}"

if command -v pulumi >/dev/null 2>&1; then
  export PULUMI_BACKEND_URL=${PULUMI_BACKEND_URL:-file://${root}/.silo/backend}
  export PULUMI_CONFIG_PASSPHRASE=${PULUMI_CONFIG_PASSPHRASE-}
  mkdir -p .silo/backend
  pulumi stack select "${stack}" --create --non-interactive
  case "${op}" in
    up) exec pulumi up --yes --stack "${stack}" ;;
    preview) exec pulumi preview --diff --stack "${stack}" ;;
    destroy) exec pulumi destroy --yes --stack "${stack}" ;;
  esac
fi

echo "the Pulumi CLI is not available here: running the same program under the engine harness"
exec venv/bin/python -m harness "${op}" --stack "${stack}" --project-dir "${root}"
