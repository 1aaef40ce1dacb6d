#!/usr/bin/env bash
# Registers Kasa with containerd's CRI plugin under the RuntimeClass handler
# "kata", from configuration/runtime/containerd-kata.toml (installed as
# $PREFIX/share/kasa/containerd-kata.toml). Restart containerd afterwards.
#
# containerd's `imports` replace a config.toml's whole CRI table, so:
#   - config.toml already registers kata: nothing to do;
#   - config.toml configures the CRI plugin: the kata tables are appended
#     to it (a copy is kept as config.toml.kasa-bak);
#   - otherwise the snippet goes to conf.d/kasa.toml and config.toml (made
#     if missing, version 2) imports it.
#
# usage: register-containerd.sh [SNIPPET] ; env CONTAINERD_DIR (/etc/containerd)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
snippet=${1:-$here/../configuration/runtime/containerd-kata.toml}
dir=${CONTAINERD_DIR:-/etc/containerd}
conf=$dir/config.toml
mkdir -p "$dir"

if [ -f "$conf" ] && grep -q 'containerd\.runtimes\.kata\]' "$conf"; then
	echo "register-containerd: $conf already registers the kata handler"
	exit 0
fi
if [ -f "$conf" ] && [ -f "$dir/conf.d/kasa.toml" ] && grep -q "^imports.*$dir/conf.d/" "$conf"; then
	install -m 0644 "$snippet" "$dir/conf.d/kasa.toml"
	echo "register-containerd: $conf imports $dir/conf.d/kasa.toml (updated)"
	exit 0
fi
if [ -f "$conf" ] && grep -q 'io\.containerd\.grpc\.v1\.cri"\]' "$conf"; then
	cp "$conf" "$conf.kasa-bak"
	# The kata tables only: config.toml keeps its own runc.
	{ echo; echo "# Kasa (RuntimeClass handler kata), added by register-containerd.sh"; sed -n '/runtimes\.kata\]/,/runtimes\.runc\]/p' "$snippet" | sed '$d' | grep -v '^# containerd.s default handler\|^# kata would leave'; } >>"$conf"
	echo "register-containerd: appended the kata runtime to $conf (backup $conf.kasa-bak); restart containerd"
	exit 0
fi
install -D -m 0644 "$snippet" "$dir/conf.d/kasa.toml"
if [ ! -f "$conf" ]; then
	printf 'version = 2\nimports = ["%s/conf.d/*.toml"]\n' "$dir" >"$conf"
elif ! grep -q '^imports' "$conf"; then
	sed -i "1i imports = [\"$dir/conf.d/*.toml\"]" "$conf"
	grep -q '^version' "$conf" || sed -i '1i version = 2' "$conf"
else
	echo "register-containerd: $conf has its own imports; make sure they include $dir/conf.d/kasa.toml" >&2
fi
echo "register-containerd: $dir/conf.d/kasa.toml installed and imported by $conf; restart containerd"
