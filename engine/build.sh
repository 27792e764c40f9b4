#!/usr/bin/env bash
# Build the Pulumi engine this project runs on, from Go modules through the module proxy only:
#   .engine/pulumi-<version>-<key>/bin/pulumi                         the CLI (engine/cli/go.mod pins it)
#   .engine/pulumi-<version>-<key>/bin/pulumi-language-python         the language-host launcher
#   .engine/pulumi-<version>-<key>/bin/pulumi-resource-pulumi-python  the dynamic-provider launcher
# and points .engine/current at it. <key> hashes every input of the CLI build, so a second run with the
# same inputs is a no-op, and a changed pin builds beside the old one. The launchers (engine/bin) are
# copied in on every run: a few bytes of shell that must never go stale. Each step prints its duration.
#
# No compile when a `pulumi` on PATH is the pinned version (`pulumi version` prints it, e.g. the
# official CLI): that binary is copied into the same place instead (seconds). A copy, not a link: the CLI
# looks for its bundled plugins next to its resolved executable, and they must be our launchers above.
# A cold compile takes 9-19 min on 2 cores; it prints its progress (packages compiled of those to
# compile, time so far) every 20 s, or on one updating line on a terminal (SILO_ENGINE_PROGRESS_EVERY
# sets the seconds between lines).
#
# Not built (the module proxy here refuses every version of them; see docs/engine.md): Pulumi's own
# Python language host (engine/bin/pulumi-language-python starts engine/language_host.py instead),
# and the bridged providers pulumi-random / pulumi-postgresql (the program does not use them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cli="$here/cli"

version=$(awk '$1 == "github.com/pulumi/pulumi/pkg/v3" { print $2 }' "$cli/go.mod")
key=$(cat "$cli/go.mod" "$cli/go.sum" "$0" | sha256sum | cut -c1-12)
out="$root/.engine/pulumi-$version-$key"
main_pkg=github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
# The flags Pulumi's release build uses: static binary (CGO_ENABLED=0), version stamped for `pulumi version`.
build_flags=(-mod=readonly -trimpath -tags "osusergo,grpcnotrace"
  -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$version")
cold_time="a cold build takes 9-19 min on 2 cores"

link_current() { ln -sfn "$(basename "$out")" "$root/.engine/current"; }

if [ -x "$out/bin/pulumi" ]; then
  install -m 0755 "$here"/bin/* "$out/bin/"
  link_current
  from=""
  [ -f "$out/copied-from" ] && from=", copied from $(cat "$out/copied-from")"
  echo "engine: pulumi $version is built ($out$from)"
  exit 0
fi

tmp="$out.tmp.$$"
scratch=$(mktemp)
trap 'rm -rf "$tmp" "$scratch"' EXIT

# -- a pulumi on PATH of the pinned version: copied, not compiled ----------------------------------------
# Skipped: this project's wrapper (scripts/bin) and anything in .engine/ (an earlier build or copy).
on_path="" path_note=""
engine_dir="$(cd -P "$root" && pwd)/.engine/"
IFS=: read -r -a path_dirs <<<"$PATH"
for dir in "${path_dirs[@]}"; do
  if [ -z "$dir" ] || [ ! -f "$dir/pulumi" ] || [ ! -x "$dir/pulumi" ]; then continue; fi
  [ -d "$root/scripts/bin" ] && [ "$dir" -ef "$root/scripts/bin" ] && continue
  resolved=$(readlink -f "$dir/pulumi")
  case $resolved in "$engine_dir"*) continue ;; esac
  on_path=$dir/pulumi
  break
done
if [ -n "$on_path" ]; then
  if [ "$(head -c 2 "$resolved")" = "#!" ]; then
    path_note="the pulumi on PATH ($on_path) is a script (a version manager's shim?), not the CLI itself: put the directory of the pulumi binary first on PATH"
  else
    found=$(PULUMI_SKIP_UPDATE_CHECK=true timeout 60 "$resolved" version 2>/dev/null | tail -n 1 | tr -d '[:space:]') || found=""
    if [ "$found" = "$version" ]; then
      mkdir -p "$tmp/bin"
      cp "$resolved" "$tmp/bin/pulumi"
      chmod 0755 "$tmp/bin/pulumi"
      install -m 0755 "$here"/bin/* "$tmp/bin/"
      echo "$on_path" >"$tmp/copied-from"
      mv "$tmp" "$out"
      link_current
      echo "engine: using the pulumi $version on PATH ($on_path), copied to $out: nothing to compile"
      exit 0
    fi
    path_note="the pulumi on PATH ($on_path) is ${found:-a version it does not say}, not the pinned $version"
  fi
fi

if ! command -v go >/dev/null 2>&1; then
  echo "engine: the Go toolchain is missing (go not on PATH); install Go >= 1.26.6 to build the Pulumi CLI," \
    "or put the official pulumi $version on PATH${path_note:+ ($path_note)}" >&2
  exit 1
fi

started=$(date +%s)
step_name=""
end_step() {
  [ -n "$step_name" ] && echo "engine: ${step_name} took $(minutes $(($(date +%s) - step_started)))"
  step_name=""
}
step() {  # step NAME: close the previous step (printing its duration), then start timing this one
  end_step
  step_name=$1
  step_started=$(date +%s)
  echo "engine: ${step_name}..."
}
minutes() {  # minutes SECONDS: "42 s", "3 min 10 s"
  if [ "$1" -lt 60 ]; then echo "$1 s"; else echo "$(($1 / 60)) min $(($1 % 60)) s"; fi
}

# progress KIND TOTAL: read a go command's output, print the step's progress, pass on the rest.
# KIND build: `go build -v` prints each package it compiles (not those in the build cache) as a bare
# import path; TOTAL is the number it will compile (stale ones; empty: unknown). KIND download: `go mod download -x`
# prints `# get URL.zip: 200 OK (…)` for each module fetched; TOTAL is the number not in the module cache.
# Other lines (go's errors) go to stderr; a download's other `# get` trace is dropped.
progress() {
  local kind=$1 total=$2 done=0 line="" part="" now last shown="" every tty=""
  local unit=packages
  [ "$kind" = download ] && unit=modules
  [ -t 1 ] && tty=1
  every=${SILO_ENGINE_PROGRESS_EVERY:-20}
  [ -n "$tty" ] && every=2
  printf -v last '%(%s)T' -1
  report() {
    local elapsed=$((now - step_started)) count="$done $unit"
    if [ "$kind" = build ] && [ -n "$total" ] && [ "$done" -ge "$total" ]; then
      count="linking"
      [ "$total" -gt 0 ] && count="all $total packages compiled, linking"
    elif [ -n "$total" ] && [ "$total" -gt 0 ]; then
      [ "$done" -gt "$total" ] && total=$done
      count="$done/$total $unit"
    fi
    local text
    text="engine: ${step_name}: $count, $(minutes "$elapsed")"
    [ "$kind" = build ] && [ "${total:-0}" -ge 100 ] && text+=" ($cold_time)"
    if [ -n "$tty" ]; then printf '\r\033[K%s' "$text"; shown=1; else echo "$text"; fi
  }
  take() {  # take LINE: count it, or pass it on
    case $kind:$1 in
      build:*[![:alnum:]._~/+-]* | build:) ;;
      build:*) done=$((done + 1)); return ;;
      download:"# get "*.zip:\ 200*) done=$((done + 1)); return ;;
      download:"# get "*) return ;;
    esac
    [ -n "$shown" ] && printf '\r\033[K' && shown=""
    printf '%s\n' "$1" >&2
  }
  while :; do
    if IFS= read -r -t 1 line; then
      take "$part$line"
      part=""
    elif [ $? -gt 128 ]; then
      part+=$line  # a timeout: keep what came of a line so far
    else
      [ -n "$part$line" ] && take "$part$line"
      break
    fi
    printf -v now '%(%s)T' -1
    if [ $((now - last)) -ge "$every" ]; then
      report
      last=$now
    fi
  done
  if [ -n "$shown" ]; then printf '\n'; fi
  return 0
}

cd "$cli"
step "downloading Go modules for pulumi $version"
# The modules go.mod requires that are not in the module cache yet (its paths and versions case-escaped).
cache="$(go env GOMODCACHE)/cache/download"
to_fetch=$(awk '/^require \($/ { block = 1; next } block && /^\)/ { block = 0; next }
    block && NF >= 2 && $1 !~ /^\/\// { print $1, $2 } /^require [^(]/ { print $2, $3 }' go.mod |
  sed 's/[A-Z]/!\L&/g' | while read -r path ver; do [ -e "$cache/$path/@v/$ver.zip" ] || echo; done | wc -l)
if ! go mod download -x 2>&1 | progress download "$to_fetch" 2>"$scratch"; then
  echo "engine: cannot download the Go modules from $(go env GOPROXY): $(grep -m1 -iE 'error|forbidden|refused|dial|timeout' "$scratch" || tail -n 1 "$scratch")" >&2
  exit 1
fi

mkdir -p "$tmp/bin"
step "compiling the pulumi CLI $version"
# The packages go build will compile (and print): those not in the Go build cache for these same flags
# ("stale"; a main package in the cache is stale too, "not installed", but only needs linking).
cached_main="not installed but available in build cache"
to_build=""  # unknown if go list fails (go build then says why)
if deps=$(CGO_ENABLED=0 go list "${build_flags[@]}" -deps \
  -f "{{if and .Stale (ne .StaleReason \"$cached_main\")}}stale{{end}}" "$main_pkg" 2>/dev/null); then
  to_build=$(grep -c stale <<<"$deps" || true)
fi
if [ "${to_build:-0}" -ge 100 ]; then
  echo "engine: $to_build packages to compile; $cold_time. To skip it, put the official pulumi $version" \
    "on PATH (e.g. curl -fsSL https://get.pulumi.com | sh -s -- --version ${version#v}) and run make engine" \
    "again: it is copied instead (docs/engine.md)${path_note:+; $path_note}"
elif [ -n "$path_note" ]; then
  echo "engine: $path_note"
fi
if ! CGO_ENABLED=0 go build -v "${build_flags[@]}" -o "$tmp/bin/pulumi" "$main_pkg" 2>&1 | progress build "$to_build"; then
  echo "engine: compiling the pulumi CLI $version failed (go build's errors above)" >&2
  exit 1
fi

step "installing the launchers"
install -m 0755 "$here"/bin/* "$tmp/bin/"
"$tmp/bin/pulumi" version >/dev/null

mv "$tmp" "$out"
link_current
end_step
echo "engine: pulumi $version built in $(minutes $(($(date +%s) - started))) ($out)"
