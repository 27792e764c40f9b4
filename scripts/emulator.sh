#!/usr/bin/env bash
# scripts/emulator.sh [PORT]: make sure this checkout's local Fly emulator serves 127.0.0.1:PORT
# (default SILO_EMULATOR_PORT, else 4280), starting it when nothing listens there; prints its URL.
# Only an emulator this checkout started (its pid in .silo/fly-emulator.pid, serving this checkout's
# .silo/fly-emulator.json on that port) is used: another process on the port, such as another
# checkout's emulator, is refused rather than silently shared.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${1:-${SILO_EMULATOR_PORT:-4280}}
silo="$root/.silo"
state="$silo/fly-emulator.json"
pidfile="$silo/fly-emulator.pid"
url="http://127.0.0.1:${port}"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; }
# `ps -ww`: whole lines whatever COLUMNS says (ps cuts the line there otherwise; a long path was lost).
ours() {
  local pid args
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  args=$(ps -ww -o args= -p "$pid" 2>/dev/null) || return 1
  # The relative form is how an earlier scripts/pulumi.sh started it, from this checkout's root.
  [[ $args == *"emulator --port ${port} --state ${state}" || $args == *"emulator --port ${port} --state .silo/fly-emulator.json" ]]
}

if listening; then
  if ours; then
    echo "$url"
    exit 0
  fi
  echo "error: 127.0.0.1:${port} is served by another process, not this checkout's Fly emulator ($root); set SILO_EMULATOR_PORT to a free port, or stop that process" >&2
  exit 1
fi

# One emulator per checkout: its world is one state file, which two emulators would both write.
pid=$(cat "$pidfile" 2>/dev/null || true)
if [[ -n $pid ]] && args=$(ps -ww -o args= -p "$pid" 2>/dev/null) && [[ $args =~ emulator\ --port\ ([0-9]+)\ --state\ (${state}|\.silo/fly-emulator\.json)$ ]]; then
  echo "error: this checkout's Fly emulator already serves 127.0.0.1:${BASH_REMATCH[1]} (.silo/fly-emulator.json): set SILO_EMULATOR_PORT=${BASH_REMATCH[1]}, or stop it (kill ${pid}) to move it to port ${port}" >&2
  exit 1
fi

umask 077
mkdir -p "$silo"
python="$root/venv/bin/python"
[[ -x $python ]] || { echo "error: no virtualenv at $root/venv: run 'make venv/.installed'" >&2; exit 1; }
echo "no Fly token configured: starting the local Fly emulator on 127.0.0.1:${port} (state: .silo/fly-emulator.json)" >&2
# Detached for good (its own session, no inherited descriptors): it keeps serving for later runs, and a
# caller reading our output (url=$(scripts/emulator.sh)) is not held open by it.
(cd "$root" && "$python" - "$port" "$state" "$silo" <<'PY'
import subprocess
import sys

port, state, silo = sys.argv[1:]
with open(f"{silo}/fly-emulator.log", "ab") as log:
    emulator = subprocess.Popen(
        [sys.executable, "-m", "components.cli.main", "emulator", "--port", port, "--state", state],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
    )
with open(f"{silo}/fly-emulator.pid", "w") as pid:
    pid.write(f"{emulator.pid}\n")
PY
)
for _ in $(seq 150); do listening && break; sleep 0.1; done
if ! listening; then
  echo "error: the Fly emulator did not start on 127.0.0.1:${port}; its log (.silo/fly-emulator.log):" >&2
  cat "$silo/fly-emulator.log" >&2
  exit 1
fi
echo "$url"
