#!/usr/bin/env bash
# tools/town/build.sh [gt|bd|dolt ...]: builds the real Gas Town tools the town tests run, from Go
# modules pinned in tools/town/<name>/go.mod + go.sum (no upstream source lives in this repository).
#
#   gt    github.com/steveyegge/gastown, cmd/gt       (the town CLI: install, rig add, up, doctor)
#   bd    github.com/steveyegge/beads, cmd/bd         (beads; gt shells out to it for every bead)
#   dolt  github.com/dolthub/dolt/go, cmd/dolt        (the SQL server and `dolt backup`)
#
# Each binary lands in .tools/town/<name>-<module version>/bin/<name> (git-ignored). A build whose
# stamp (go.sum hash + Go version) matches is skipped, so a second run takes well under a second; the
# Go build cache makes a rebuild after a version bump incremental. Prints the directory of each
# binary on stdout (one per line, in argument order) and every step's duration on stderr.
#
# bd and dolt link dolt's engine, which needs cgo and ICU's regex headers (Debian: libicu-dev,
# build-essential); gt is pure Go.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT_ROOT="${SILO_TOWN_TOOLS_DIR:-$REPO/.tools/town}"
# gastown and beads tags are served by the module proxy but absent from the checksum database the
# proxy mirrors here; the committed go.sum pins their hashes instead (go verifies against it).
export GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}github.com/steveyegge"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"

say() { printf 'town-tools: %s\n' "$*" >&2; }

fail() {
  say "error: $*"
  exit 1
}

# step NAME CMD...: runs CMD and prints how long it took.
step() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  set +e
  "$@"
  rc=$?
  set -e
  say "$name: $(($(date +%s) - start))s$([[ $rc -eq 0 ]] || printf ' (failed, exit %s)' "$rc")"
  return "$rc"
}

# name → module, package, cgo, extra ldflags
declare -A MODULE=(
  [gt]=github.com/steveyegge/gastown
  [bd]=github.com/steveyegge/beads
  [dolt]=github.com/dolthub/dolt/go
)
declare -A PACKAGE=(
  [gt]=github.com/steveyegge/gastown/cmd/gt
  [bd]=github.com/steveyegge/beads/cmd/bd
  [dolt]=github.com/dolthub/dolt/go/cmd/dolt
)
declare -A CGO=([gt]=0 [bd]=1 [dolt]=1)

pinned_version() {
  # The wrapper's one direct requirement: `require MODULE VERSION`.
  awk -v m="${MODULE[$1]}" '$1 == "require" && $2 == m { print $3; exit } $1 == m && !/indirect/ { print $2; exit }' \
    "$HERE/$1/go.mod"
}

ldflags() {
  local name=$1 version=$2
  case $name in
    # gastown's Makefile sets these (internal/cmd/version.go); BuiltProperly marks a release-style build.
    gt) printf '%s' "-s -w -X github.com/steveyegge/gastown/internal/cmd.Version=${version#v}" \
      " -X github.com/steveyegge/gastown/internal/cmd.Build=${version}" \
      " -X github.com/steveyegge/gastown/internal/cmd.BuiltProperly=1" ;;
    # beads' .goreleaser.yml sets main.Version and main.Build the same way.
    bd) printf '%s' "-s -w -X main.Version=${version#v} -X main.Build=${version}" ;;
    *) printf '%s' "-s -w" ;;
  esac
}

preflight() {
  command -v go >/dev/null 2>&1 ||
    fail "Go is not installed (need go >= 1.26 on PATH to build gt, bd and dolt from tools/town/*/go.mod)"
  local need_cgo=$1
  if [[ $need_cgo == 1 ]]; then
    command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1 ||
      fail "no C compiler: bd and dolt need cgo (Debian: apt-get install build-essential)"
    [[ -f /usr/include/unicode/uregex.h ]] || pkg-config --exists icu-i18n 2>/dev/null ||
      fail "ICU headers are missing: bd and dolt need them for cgo (Debian: apt-get install libicu-dev)"
  fi
}

download() {
  (cd "$HERE/$1" && go mod download 2>"$2")
}

build_one() {
  local name=$1 version dir bin stamp_want log
  [[ -n ${MODULE[$name]:-} ]] || fail "unknown tool '$name' (known: ${!MODULE[*]})"
  version=$(pinned_version "$name")
  [[ -n $version ]] || fail "tools/town/$name/go.mod does not require ${MODULE[$name]}"
  dir="$OUT_ROOT/$name-$version"
  bin="$dir/bin/$name"
  stamp_want="$(sha256sum "$HERE/$name/go.sum" | cut -d' ' -f1) $(go env GOVERSION 2>/dev/null || echo none)"
  if [[ -x $bin && -f $dir/stamp && $(<"$dir/stamp") == "$stamp_want" ]]; then
    say "$name $version: up to date ($bin)"
    printf '%s\n' "$dir/bin"
    return 0
  fi
  preflight "${CGO[$name]}"
  say "$name $version: building (GOCACHE=$(go env GOCACHE), GOMODCACHE=$(go env GOMODCACHE))"
  log=$(mktemp)
  if ! step "$name: download modules" download "$name" "$log"; then
    tail -n 5 "$log" >&2
    rm -f "$log"
    fail "cannot download Go modules for $name through GOPROXY=$(go env GOPROXY): is the module proxy reachable?"
  fi
  rm -f "$log"
  mkdir -p "$dir/bin"
  step "$name: compile" env -C "$HERE/$name" CGO_ENABLED="${CGO[$name]}" \
    go build -trimpath -ldflags "$(ldflags "$name" "$version")" -o "$bin.tmp" "${PACKAGE[$name]}" ||
    fail "building $name failed (see the compiler output above)"
  mv "$bin.tmp" "$bin"
  printf '%s\n' "$stamp_want" >"$dir/stamp"
  say "$name $version: $bin"
  printf '%s\n' "$dir/bin"
}

main() {
  local total_start names
  total_start=$(date +%s)
  # One build at a time: every pytest-xdist worker runs this script when its first town test starts.
  mkdir -p "$OUT_ROOT"
  exec 9>"$OUT_ROOT/.lock"
  flock 9
  if [[ $# -eq 0 ]]; then names=(gt bd dolt); else names=("$@"); fi
  for name in "${names[@]}"; do
    build_one "$name"
  done
  say "done in $(($(date +%s) - total_start))s"
}

main "$@"
