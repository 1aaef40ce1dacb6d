#!/usr/bin/env bash
# Builds crictl and critest (cri-tools v1.30.0) from the Go module proxy,
# the only way that works here: `go install` of cri-tools fails, so the
# module's source is downloaded, copied and built in place. The binaries are
# cached under $KASA_CACHE/cri-tools/<version>/ and copied to OUTDIR.
#
# One fix is applied to crictl v1.30.0: `crictl attach` never passes its
# --transport flag on ("get executor: unknown transport"), so attach cannot
# work against any runtime; the patch sets it as exec does.
#
# usage: install-cri-tools.sh OUTDIR
set -euo pipefail

out=${1:?usage: install-cri-tools.sh OUTDIR}
version=v1.30.0
cache=${KASA_CACHE:-/var/cache/kasa}/cri-tools/$version-kasa1
if [ ! -x "$cache/crictl" ] || [ ! -x "$cache/critest" ]; then
	echo "install-cri-tools: building crictl and critest $version (a few minutes)"
	dir=$(go mod download -json "sigs.k8s.io/cri-tools@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$dir" ] || { echo "install-cri-tools: go mod download of cri-tools $version failed" >&2; exit 1; }
	work=$(mktemp -d)
	trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
	cp -r "$dir" "$work/src"
	chmod -R u+w "$work/src"
	sed -i 's/^\(\t*\)stdin: c.Bool("stdin"),$/&\n\1transport: c.String(transportFlag),/' "$work/src/cmd/crictl/attach.go"
	grep -q 'transport: c.String(transportFlag)' "$work/src/cmd/crictl/attach.go" || { echo "install-cri-tools: patching crictl attach failed" >&2; exit 1; }
	mkdir -p "$cache.tmp"
	(cd "$work/src" && GOFLAGS=-mod=mod go build -o "$cache.tmp/crictl" ./cmd/crictl)
	(cd "$work/src" && GOFLAGS=-mod=mod go test -c -o "$cache.tmp/critest" ./cmd/critest)
	rm -rf "$cache"
	mv "$cache.tmp" "$cache"
fi
mkdir -p "$out"
cp "$cache/crictl" "$cache/critest" "$out/"
echo "install-cri-tools: crictl and critest $version in $out"
