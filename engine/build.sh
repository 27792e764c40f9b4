#!/usr/bin/env bash
# Build the Pulumi engine this project runs on, from Go modules through the module proxy only:
#   .engine/pulumi-<version>-<key>/bin/pulumi                         the CLI (engine/cli/go.mod pins it)
#   .engine/pulumi-<version>-<key>/bin/pulumi-resource-pulumi-python  the dynamic-provider launcher
# and points .engine/current at it. <key> hashes every input of the CLI build, so a second run with the
# same inputs is a no-op, and a changed pin builds beside the old one. The launchers (engine/bin) are
# copied in on every run: a few bytes of shell that must never go stale. Each step prints its duration.
#
# Not built (the module proxy here refuses every version of them; see docs/engine.md): the
# Python language host (the program runs through the Automation API's inline-program server instead),
# and the bridged providers pulumi-random / pulumi-postgresql (the program does not use them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cli="$here/cli"

version=$(awk '$1 == "github.com/pulumi/pulumi/pkg/v3" { print $2 }' "$cli/go.mod")
key=$(cat "$cli/go.mod" "$cli/go.sum" "$0" | sha256sum | cut -c1-12)
out="$root/.engine/pulumi-$version-$key"

link_current() { ln -sfn "$(basename "$out")" "$root/.engine/current"; }

if [ -x "$out/bin/pulumi" ]; then
  install -m 0755 "$here"/bin/* "$out/bin/"
  link_current
  echo "engine: pulumi $version is built ($out)"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "engine: the Go toolchain is missing (go not on PATH); install Go >= 1.26.6 to build the Pulumi CLI" >&2
  exit 1
fi

started=$(date +%s)
step_name=""
end_step() {
  [ -n "$step_name" ] && echo "engine: ${step_name} took $(($(date +%s) - step_started)) s"
  step_name=""
}
step() {  # step NAME: close the previous step (printing its duration), then start timing this one
  end_step
  step_name=$1
  step_started=$(date +%s)
  echo "engine: ${step_name}..."
}

cd "$cli"
step "downloading Go modules for pulumi $version"
if ! log=$(go mod download 2>&1); then
  echo "engine: cannot download the Go modules from $(go env GOPROXY): $(printf '%s\n' "$log" | grep -m1 -iE 'error|forbidden|refused|dial|timeout' || printf '%s\n' "$log" | tail -n 1)" >&2
  exit 1
fi

tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
step "compiling the pulumi CLI $version"
# The flags Pulumi's release build uses: static binary, no cgo, version stamped for `pulumi version`.
CGO_ENABLED=0 go build -mod=readonly -trimpath -tags osusergo,grpcnotrace \
  -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$version" \
  -o "$tmp/bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi

step "installing the launchers"
install -m 0755 "$here"/bin/* "$tmp/bin/"
"$tmp/bin/pulumi" version >/dev/null

mv "$tmp" "$out"
trap - EXIT
link_current
end_step
echo "engine: pulumi $version built in $(( $(date +%s) - started )) s ($out)"
