#!/usr/bin/env bash
# Builds crictl and critest (cri-tools v1.30.0) from the Go module proxy,
# the only way that works here: `go install` of cri-tools fails, so the
# module's source is downloaded, copied and built in place. The binaries are
# cached under $KASA_CACHE/cri-tools/<version>/ and copied to OUTDIR.
#
# usage: install-cri-tools.sh OUTDIR
set -euo pipefail

out=${1:?usage: install-cri-tools.sh OUTDIR}
version=v1.30.0
cache=${KASA_CACHE:-/var/cache/kasa}/cri-tools/$version
if [ ! -x "$cache/crictl" ] || [ ! -x "$cache/critest" ]; then
	echo "install-cri-tools: building crictl and critest $version (a few minutes)"
	dir=$(go mod download -json "sigs.k8s.io/cri-tools@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$dir" ] || { echo "install-cri-tools: go mod download of cri-tools $version failed" >&2; exit 1; }
	work=$(mktemp -d)
	trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
	cp -r "$dir" "$work/src"
	chmod -R u+w "$work/src"
	mkdir -p "$cache.tmp"
	(cd "$work/src" && GOFLAGS=-mod=mod go build -o "$cache.tmp/crictl" ./cmd/crictl)
	(cd "$work/src" && GOFLAGS=-mod=mod go test -c -o "$cache.tmp/critest" ./cmd/critest)
	rm -rf "$cache"
	mv "$cache.tmp" "$cache"
fi
mkdir -p "$out"
cp "$cache/crictl" "$cache/critest" "$out/"
echo "install-cri-tools: crictl and critest $version in $out"
