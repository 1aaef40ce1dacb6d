#!/usr/bin/env bash
# Makes the guest's root as an image for a DAX mapping from an NVDIMM: an
# ext4 file system with the same tree as the initramfs, from the same list
# (gen_init_cpio's format: dir, file, slink and nod lines), plus /newroot,
# where the agent mounts the tmpfs it moves into (the image itself is
# mounted read-only), behind a 2 MiB header whose pfn info block (written by
# PMEMHDR, guest-image/pmemhdr) makes the guest kernel map it with DAX.
#
# usage: mkimage.sh LIST IMAGE PMEMHDR
#
# Sizes are multiples of 2 MiB, the alignment of the DAX mapping. Block
# size 4096 = the page size, which ext4 DAX needs. No journal: the guest
# never writes to it.
set -euo pipefail

list=${1:?usage: mkimage.sh LIST IMAGE PMEMHDR}
image=${2:?usage: mkimage.sh LIST IMAGE PMEMHDR}
pmemhdr=${3:?usage: mkimage.sh LIST IMAGE PMEMHDR}
for t in mke2fs debugfs; do
	command -v "$t" >/dev/null || { echo "mkimage: $t missing: apt-get install e2fsprogs (make deps)" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
mkdir -p "$root/newroot"
nodes=$stage/nodes
: >"$nodes"
while read -r kind path a b c d e f; do
	case "$kind" in
	dir) mkdir -p "$root$path" && chmod "$a" "$root$path" ;;
	file) install -D -m "$b" "$a" "$root$path" ;;
	slink) mkdir -p "$(dirname "$root$path")" && ln -sfn "$a" "$root$path" ;;
	# nod PATH MODE UID GID TYPE MAJOR MINOR: made in the image by debugfs,
	# which needs no privilege (mknod in the staging directory would).
	# (its mknod takes a name in the current directory).
	nod) printf 'cd %s\nmknod %s %s %s %s\nsif %s mode 0%o\ncd /\n' "$(dirname "$path")" "$(basename "$path")" "$d" "$e" "$f" \
		"$(basename "$path")" $(( (d == "c" ? 8192 : 24576) + 8#$a )) >>"$nodes" ;;
	''|\#*) ;;
	*) echo "mkimage: $list: unknown entry kind $kind" >&2; exit 1 ;;
	esac
done <"$list"

# Room for the files, ext4's metadata and a little slack, rounded up to 2 MiB.
kib=$(du -sk --apparent-size "$root" | cut -f1)
mib=$(( (kib * 115 / 100 + 4096 + 1023) / 1024 ))
mib=$(( (mib + 1) / 2 * 2 ))
fs=$stage/fs.ext4
mke2fs -q -t ext4 -b 4096 -m 0 -N 256 -L kasa-guest \
	-O ^has_journal,^resize_inode \
	-U 6b617361-6775-4573-8000-696d61676501 -E root_owner=0:0,hash_seed=6b617361-6775-4573-8000-696d61676502 \
	-d "$root" "$fs" "${mib}M" >/dev/null
if [ -s "$nodes" ]; then
	debugfs -w -f "$nodes" "$fs" >/dev/null 2>"$stage/debugfs.err" || { cat "$stage/debugfs.err" >&2; exit 1; }
	# debugfs reports a failed command on stderr but still exits 0.
	if grep -v '^debugfs ' "$stage/debugfs.err" | grep -q .; then
		cat "$stage/debugfs.err" >&2
		exit 1
	fi
fi
rm -f "$image.tmp"
"$pmemhdr" "$fs" "$image.tmp"
mv "$image.tmp" "$image"
