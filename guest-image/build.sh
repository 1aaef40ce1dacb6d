#!/usr/bin/env bash
# Builds Kasa's guest image: a kernel and the guest's root in two forms, a
# cpio initramfs (initrd.img) and an ext4 image (guest.img) that the guest
# maps read-only with DAX (hypervisor.qemu.image). In both, /init is
# kasa-agent, with /kasa/bin/pause beside it and busybox as /bin/sh for the
# debug console. A manifest lists versions and sha256 sums.
#
# usage: build.sh AGENT_BINARY OUTDIR
# env:   KERNEL_SOURCE=minimal (default: linux-source-6.1 + kernel/kasa.config)
#                     |debian (Debian's linux-image-amd64 + its modules)
#        INITRD_COMPRESSION=none (default: unpacking is the slow part of a TCG boot) | gzip | zstd
#        KASA_CACHE (default /var/cache/kasa): downloads and kernel builds
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
agent=${1:?usage: build.sh AGENT_BINARY OUTDIR}
out=${2:?usage: build.sh AGENT_BINARY OUTDIR}
source=${KERNEL_SOURCE:-minimal}
compression=${INITRD_COMPRESSION:-none}
# The debug console's shell (kasa exec): Debian's static busybox, whose sh
# runs its applets without links (uname, ls, ps, dmesg ...).
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "build.sh: $busybox missing: install busybox-static (make deps)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out" "$stage/root"

case "$source" in
minimal) "$here/build-kernel.sh" "$stage/kernel" ;;
debian) "$here/debian-kernel.sh" "$stage/kernel" "$stage/root" ;;
*) echo "build.sh: KERNEL_SOURCE=$source: allowed values are minimal, debian" >&2; exit 1 ;;
esac

# The initramfs: just enough tree for the agent to mount the rest.
list=$stage/initramfs.list
{
	for d in bin dev proc sys run tmp etc kasa kasa/bin; do echo "dir /$d 0755 0 0"; done
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "nod /dev/null 0666 0 0 c 1 3"
	# The agent lives in a directory of its own (pid1.MoveRootToTmpfs binds it).
	echo "file /kasa/bin/kasa-agent $agent 0755 0 0"
	echo "slink /init /kasa/bin/kasa-agent 0777 0 0"
	# The pause process of pod sandbox containers (the agent bind-mounts it).
	echo "file /kasa/bin/pause $stage/pause 0755 0 0"
	# The debug console's shell; only a console session runs it.
	echo "file /kasa/bin/busybox $busybox 0755 0 0"
	echo "slink /bin/sh /kasa/bin/busybox 0777 0 0"
	# Modules staged by debian-kernel.sh, in a stable order.
	(cd "$stage/root" && find . -mindepth 1 | LC_ALL=C sort) | while read -r p; do
		p=${p#.}
		case "$p" in /bin|/dev|/proc|/sys|/run|/tmp|/etc|/kasa|/kasa/bin) continue ;; esac
		if [ -d "$stage/root$p" ]; then echo "dir $p 0755 0 0"; else echo "file $p $stage/root$p 0644 0 0"; fi
	done
} >"$list"
(cd "$here/.." && go build -o "$stage/mkinitrd" ./guest-image/mkinitrd)
(cd "$here/.." && go build -o "$stage/pmemhdr" ./guest-image/pmemhdr)
(cd "$here/.." && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$stage/pause" ./cmd/kasa-pause)
"$stage/mkinitrd" "$list" "$stage/initrd.cpio"
"$here/mkimage.sh" "$list" "$out/guest.img" "$stage/pmemhdr"

case "$compression" in
zstd) zstd -q -19 -T0 --no-progress -f "$stage/initrd.cpio" -o "$out/initrd.img" ;;
gzip) gzip -9 -n -c "$stage/initrd.cpio" >"$out/initrd.img" ;;
none) cp "$stage/initrd.cpio" "$out/initrd.img" ;;
*) echo "build.sh: INITRD_COMPRESSION=$compression: allowed values are zstd, gzip, none" >&2; exit 1 ;;
esac

cp "$stage/kernel/vmlinuz" "$out/vmlinuz"
rm -f "$out/vmlinux"
[ ! -f "$stage/kernel/vmlinux" ] || cp "$stage/kernel/vmlinux" "$out/vmlinux"
[ ! -f "$stage/kernel/kernel.config" ] || cp "$stage/kernel/kernel.config" "$out/kernel.config"

sha() { sha256sum "$1" | cut -d' ' -f1; }
{
	echo "{"
	echo "  \"kernel_source\": \"$source\","
	echo "  \"kernel\": \"$(cat "$stage/kernel/kernel.version")\","
	echo "  \"kernel_fragment_sha256\": \"$(sha "$here/kernel/kasa.config")\","
	echo "  \"initrd_compression\": \"$compression\","
	echo "  \"sha256\": {"
	echo "    \"vmlinuz\": \"$(sha "$out/vmlinuz")\","
	[ ! -f "$out/vmlinux" ] || echo "    \"vmlinux\": \"$(sha "$out/vmlinux")\","
	echo "    \"initrd.img\": \"$(sha "$out/initrd.img")\","
	echo "    \"guest.img\": \"$(sha "$out/guest.img")\","
	echo "    \"pause\": \"$(sha "$stage/pause")\","
	echo "    \"busybox\": \"$(sha "$busybox")\","
	echo "    \"kasa-agent\": \"$(sha "$agent")\""
	echo "  }"
	echo "}"
} >"$out/manifest.json"
echo "guest image: $out ($source kernel, $(du -h "$out/initrd.img" | cut -f1) initrd, $(du -h --apparent-size "$out/guest.img" | cut -f1) DAX image)"
