#!/usr/bin/env bash
# Builds containerd v2.4.2 (containerd, ctr, containerd-shim-runc-v2) from
# the Go module proxy, the same way install-cri-tools.sh builds cri-tools:
# the module's source is downloaded, copied and built in place. The CRI
# integration tests run against it beside Debian's containerd 1.6 (the
# runc baseline of those tests uses this build's own runc shim, so both
# sides of a comparison come from one release). Static, no cgo, no btrfs
# snapshotter. The binaries are cached under
# $KASA_CACHE/containerd/<version>/ and copied to OUTDIR.
#
# usage: install-containerd2.sh OUTDIR
set -euo pipefail

out=${1:?usage: install-containerd2.sh OUTDIR}
version=v2.4.2
pkg=github.com/containerd/containerd/v2
bins="containerd ctr containerd-shim-runc-v2"
cache=${KASA_CACHE:-/var/cache/kasa}/containerd/$version
have=1
for b in $bins; do [ -x "$cache/$b" ] || have=; done
if [ -z "$have" ]; then
	echo "install-containerd2: building containerd $version from the Go module proxy (a few minutes)"
	dir=$(go mod download -json "$pkg@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$dir" ] || { echo "install-containerd2: go mod download of containerd $version failed" >&2; exit 1; }
	work=$(mktemp -d)
	trap 'chmod -R u+w "$work"; rm -rf "$work" "${tmp:-}"' EXIT
	cp -r "$dir" "$work/src"
	chmod -R u+w "$work/src"
	# What containerd's own Makefile stamps in, so `containerd --version`
	# names the release (the tests pick the config format from it).
	ldflags="-s -w -X $pkg/version.Version=$version -X $pkg/version.Revision=kasa-module-build"
	mkdir -p "$(dirname "$cache")"
	tmp=$(mktemp -d "$cache.tmp.XXXXXX")
	chmod 755 "$tmp"
	for b in $bins; do
		echo "install-containerd2: go build ./cmd/$b"
		(cd "$work/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -tags no_btrfs,urfave_cli_no_docs \
			-ldflags "$ldflags" -o "$tmp/$b" "./cmd/$b")
	done
	"$tmp/containerd" --version
	rm -rf "$cache"
	mv "$tmp" "$cache"
fi
mkdir -p "$out"
for b in $bins; do cp "$cache/$b" "$out/"; done
echo "install-containerd2: containerd, ctr and containerd-shim-runc-v2 $version in $out"
