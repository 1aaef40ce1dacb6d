#!/usr/bin/env bash
# Builds Kasa's minimal guest kernel from Debian's linux-source-6.1 package:
# `make tinyconfig` + guest-image/kernel/kasa.config, everything built in.
# The result is cached outside the clone, keyed by the fragment, this script
# and the source package version, so later runs on the same machine reuse it.
#
# usage: build-kernel.sh OUTDIR    (writes OUTDIR/vmlinuz, OUTDIR/vmlinux, OUTDIR/kernel.config)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-kernel.sh OUTDIR}
cache=${KASA_CACHE:-/var/cache/kasa}
fragment=$here/kernel/kasa.config
src_tar=/usr/src/linux-source-6.1.tar.xz

if [ ! -f "$src_tar" ]; then
	echo "build-kernel: $src_tar missing: apt-get install linux-source-6.1" >&2
	exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { cat "$fragment" "$0"; echo "$src_version"; } | sha256sum | cut -c1-16)
dest=$cache/kernel/$key

if [ ! -f "$dest/vmlinuz" ]; then
	echo "build-kernel: building linux-source-6.1 $src_version with $(basename "$fragment") (key $key); about 6 minutes on 2 cores"
	work=$cache/kernel/build-$key
	rm -rf "$work"
	mkdir -p "$work"
	tar -C "$work" -xf "$src_tar"
	ksrc=$work/linux-source-6.1
	export KBUILD_BUILD_TIMESTAMP="1970-01-01" KBUILD_BUILD_USER=kasa KBUILD_BUILD_HOST=kasa KBUILD_BUILD_VERSION=1
	make -s -C "$ksrc" tinyconfig >/dev/null
	"$ksrc"/scripts/kconfig/merge_config.sh -m -O "$ksrc" "$ksrc/.config" "$fragment" >/dev/null
	make -s -C "$ksrc" olddefconfig >/dev/null
	# Every option we ask for must survive dependency resolution.
	missing=0
	while IFS= read -r line; do
		case "$line" in CONFIG_*=*) ;; *) continue ;; esac
		if ! grep -qx "$line" "$ksrc/.config"; then
			echo "build-kernel: $line did not survive olddefconfig (got: $(grep "^${line%%=*}=" "$ksrc/.config" || echo unset))" >&2
			missing=1
		fi
	done <"$fragment"
	[ "$missing" = 0 ] || exit 1
	# The build is silent for minutes; say every 30 s that it is moving.
	started=$(date +%s)
	(
		while sleep 30; do
			echo "build-kernel: compiling, $(find "$ksrc" -name '*.o' | wc -l) objects so far, $(( $(date +%s) - started )) s"
		done
	) &
	ticker=$!
	trap 'kill $ticker 2>/dev/null || true' EXIT
	make -s -C "$ksrc" -j"$(nproc)" bzImage
	kill $ticker 2>/dev/null || true
	trap - EXIT
	echo "build-kernel: built in $(( $(date +%s) - started )) s"
	mkdir -p "$dest.tmp"
	cp "$ksrc/arch/x86/boot/bzImage" "$dest.tmp/vmlinuz"
	cp "$ksrc/vmlinux" "$dest.tmp/vmlinux"
	cp "$ksrc/.config" "$dest.tmp/kernel.config"
	make -s -C "$ksrc" kernelrelease >"$dest.tmp/release"
	echo "$src_version" >"$dest.tmp/source-version"
	rm -rf "$dest"
	mv "$dest.tmp" "$dest"
	rm -rf "$work"
else
	echo "build-kernel: using cached kernel $dest"
fi

mkdir -p "$out"
cp "$dest/vmlinuz" "$dest/vmlinux" "$dest/kernel.config" "$out/"
echo "linux-source-6.1 $(cat "$dest/source-version") release $(cat "$dest/release") key $key" >"$out/kernel.version"
