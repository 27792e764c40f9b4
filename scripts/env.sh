# shellcheck shell=bash
# Source this file (bash or zsh) to use the raw `pulumi` CLI on this project:
#     source scripts/env.sh        (or let direnv do it: .envrc)
# It puts scripts/bin first on PATH. Its `pulumi` runs the CLI `make engine` built (else a `pulumi`
# further down PATH) the way `make up` does: a local file backend and a generated passphrase under
# .silo/ unless you chose others, the local Fly emulator when no Fly token is configured, the
# guardrails policy pack and the engine's parallelism on `up`/`preview` (scripts/bin/pulumi says how).
# Everything you already exported (PULUMI_BACKEND_URL, PULUMI_CONFIG_PASSPHRASE[_FILE], PULUMI_HOME)
# wins over these defaults.
if [ -n "${BASH_SOURCE:-}" ]; then
  SILO_ROOT=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
else
  # zsh: the sourced file's own path
  # shellcheck disable=SC2296
  SILO_ROOT=$(cd -P "$(dirname "${(%):-%x}")/.." && pwd)
fi
export SILO_ROOT
case ":$PATH:" in
  *":$SILO_ROOT/scripts/bin:"*) ;;
  *) export PATH="$SILO_ROOT/scripts/bin:$PATH" ;;
esac
export PULUMI_HOME="${PULUMI_HOME:-$SILO_ROOT/.silo/pulumi-home}"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$SILO_ROOT/.silo/backend}"
if [ -z "${PULUMI_CONFIG_PASSPHRASE+set}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  export PULUMI_CONFIG_PASSPHRASE_FILE="$SILO_ROOT/.silo/passphrase"  # made on first use (0600)
fi
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
