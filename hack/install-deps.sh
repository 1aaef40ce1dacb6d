#!/usr/bin/env bash
# Installs the Debian packages Kasa needs to build, run and test, when they
# are missing. Safe to run again; does nothing when all are present.
#
# usage: install-deps.sh [--with-protoc]
set -euo pipefail

pkgs=(
	qemu-system-x86 qemu-system-data seabios ipxe-qemu  # the hypervisor and its firmware
	linux-source-6.1      # source of the minimal guest kernel
	build-essential flex bison bc libelf-dev libssl-dev  # kernel build
	cpio xz-utils zstd kmod   # unpacking the source, compressing the initrd, module deps
	e2fsprogs                 # mke2fs and debugfs: the guest root image (guest.img)
	iproute2                  # kasa check: tun/tc
	busybox-static            # test guests and test images
	libseccomp-dev            # static libseccomp for the agent (libcontainer, -tags seccomp)
	containerd runc           # the container manager Kasa plugs into, and the runc baseline
	containernetworking-plugins iptables  # CNI bridge/host-local/portmap for CRI pods (/usr/lib/cni)
)
if [ "${1:-}" = "--with-protoc" ]; then
	# protoc, and the well-known .proto files (google/protobuf/empty.proto)
	# that Debian ships separately in libprotobuf-dev.
	pkgs+=(protobuf-compiler libprotobuf-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
	case "$p" in \#*) continue ;; esac
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing packages ${missing[*]}; run as root or install them" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get update"
apt-get update -qq
echo "install-deps: apt-get install (${#missing[@]} packages; a few minutes on a new machine)"
apt-get install -y -q --no-install-recommends -o Dpkg::Progress-Fancy=0 "${missing[@]}" |
	grep --line-buffered -E '^(Unpacking|Setting up) ' | sed -u 's/^/install-deps: /' || true
# The pipeline hides apt-get's status; check that everything is there.
for p in "${missing[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		{ echo "install-deps: $p did not install" >&2; exit 1; }
done
