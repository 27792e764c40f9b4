# shellcheck shell=bash
# Sourced by scripts/pulumi.sh (`make up`) and scripts/bin/pulumi (the raw CLI): which Fly this run
# targets, said on every run (issue 25: "every run prints whether it targets the emulator or a Fly org").
#     fly_target ROOT STACK_FILE
# With no Fly token (FLY_API_TOKEN / FLY_ACCESS_TOKEN / fly:apiToken in the stack file) and no API URL
# (FLY_API_HOSTNAME / FLY_FLAPS_BASE_URL / fly:apiUrl), it makes sure this checkout's own emulator serves
# SILO_EMULATOR_PORT (scripts/emulator.sh: another process on that port is refused) and exports its URL
# as FLY_API_HOSTNAME. The line goes to stderr, so a caller's stdout stays the CLI's.
fly_target() {
  local root=$1 stack_file=$2 url
  in_stack_file() { [[ -f $stack_file ]] && grep -qE "^[[:space:]]*$1:" "$stack_file"; }
  if [[ -n ${FLY_API_TOKEN:-}${FLY_ACCESS_TOKEN:-} ]] || in_stack_file fly:apiToken; then
    local from=FLY_API_TOKEN
    in_stack_file fly:apiToken && from=$(basename "$stack_file")
    url=${FLY_API_HOSTNAME:-${FLY_FLAPS_BASE_URL:-https://api.machines.dev}}
    if [[ $url =~ ^https?://(127\.0\.0\.1|localhost|\[::1\])(:|/|$) ]]; then
      echo "fly: $url with the token from $from (an emulator on loopback; nothing touches a Fly account)" >&2
    else
      echo "fly: the Fly Machines API at $url, with the token from $from: this run changes a real Fly organization" >&2
    fi
  elif [[ -n ${FLY_API_HOSTNAME:-}${FLY_FLAPS_BASE_URL:-} ]] || in_stack_file fly:apiUrl; then
    echo "fly: ${FLY_API_HOSTNAME:-${FLY_FLAPS_BASE_URL:-the fly:apiUrl of $(basename "$stack_file")}} without a token (an emulator on loopback; nothing touches a Fly account)" >&2
  else
    url=$("$root/scripts/emulator.sh" "${SILO_EMULATOR_PORT:-4280}") || return 1
    export FLY_API_HOSTNAME=$url
    echo "fly: the local Fly emulator at $url (no Fly token configured: nothing touches a Fly account)" >&2
  fi
}
