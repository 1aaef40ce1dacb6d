#!/usr/bin/env bash
# Fetches Debian's linux-image-amd64 kernel (apt-get download; never installed
# on the host) and stages the modules the guest needs, in dependency order.
#
# usage: debian-kernel.sh OUTDIR ROOTDIR
#   OUTDIR/vmlinuz, OUTDIR/kernel.version
#   ROOTDIR/lib/modules/<release>/...ko and ROOTDIR/etc/kasa/modules (load order)
set -euo pipefail

out=${1:?usage: debian-kernel.sh OUTDIR ROOTDIR}
root=${2:?usage: debian-kernel.sh OUTDIR ROOTDIR}
cache=${KASA_CACHE:-/var/cache/kasa}/debian-kernel
wanted="virtio_pci virtio_net virtio_blk virtio_console virtio_rng vsock vmw_vsock_virtio_transport 9p 9pnet_virtio overlay"

pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "debian-kernel: cannot resolve linux-image-amd64 (run apt-get update)" >&2; exit 1; }
version=$(apt-cache show "$pkg" | awk '/^Version:/ {print $2; exit}')
dir=$cache/$pkg-$version
if [ ! -d "$dir/boot" ]; then
	mkdir -p "$cache/dl"
	(cd "$cache/dl" && apt-get download "$pkg=$version" 2>/dev/null)
	rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
	dpkg-deb -x "$cache/dl/${pkg}_${version}_amd64.deb" "$dir.tmp"
	mv "$dir.tmp" "$dir"
fi
release=${pkg#linux-image-}
mods=$dir/lib/modules/$release

mkdir -p "$out" "$root/etc/kasa"
cp "$dir/boot/vmlinuz-$release" "$out/vmlinuz"
echo "debian $pkg $version release $release" >"$out/kernel.version"

declare -A done=()
order=()
visit() {
	local name=$1 path deps dep
	[ -z "${done[$name]:-}" ] || return 0
	done[$name]=1
	path=$(find "$mods/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)
	[ -n "$path" ] || { echo "debian-kernel: module $name not found in $pkg" >&2; exit 1; }
	deps=$(modinfo -F depends "$path")
	for dep in ${deps//,/ }; do visit "$dep"; done
	order+=("${path#"$dir"}")
}
for m in $wanted; do visit "$m"; done

: >"$root/etc/kasa/modules"
for p in "${order[@]}"; do
	mkdir -p "$root$(dirname "$p")"
	cp "$dir$p" "$root$p"
	echo "$p" >>"$root/etc/kasa/modules"
done
echo "debian-kernel: $pkg $version, ${#order[@]} modules"
