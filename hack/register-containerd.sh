#!/usr/bin/env bash
# Registers Kasa with containerd's CRI plugin under the RuntimeClass handler
# "kata", from configuration/runtime/containerd-kata.toml (containerd 1.6 and
# 1.7, config version 2) or containerd2-kata.toml (containerd 2.x, config
# version 3 and later), installed in $PREFIX/share/kasa/. Restart containerd
# afterwards.
#
# The snippet is picked by config.toml's `version`; without a config.toml,
# by `containerd --version` (2.x gets a version 3 config.toml).
#
# containerd 1.x's `imports` replace a config.toml's whole CRI table, so,
# for a version 2 config.toml:
#   - config.toml already registers kata: nothing to do;
#   - config.toml configures the CRI plugin: the kata tables are appended
#     to it (a copy is kept as config.toml.kasa-bak);
#   - otherwise the snippet goes to conf.d/kasa.toml and config.toml (made
#     if missing) imports it.
# containerd 2.x merges imported tables into config.toml's, so a version 3
# (or 4) config.toml always imports conf.d/kasa.toml and keeps its own CRI
# settings.
#
# usage: register-containerd.sh [SNIPPET] ; env CONTAINERD_DIR (/etc/containerd)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${CONTAINERD_DIR:-/etc/containerd}
conf=$dir/config.toml
mkdir -p "$dir"

# config.toml's version: the top-level key, before the first table.
version=
if [ -f "$conf" ]; then
	version=$(awk '/^[[:space:]]*\[/ { exit } /^[[:space:]]*version[[:space:]]*=/ { sub(/^[^=]*=[[:space:]]*/, ""); sub(/[^0-9].*/, ""); print; exit }' "$conf")
	version=${version:-1}
elif command -v containerd >/dev/null && containerd --version 2>/dev/null | awk '{ v = $3; sub(/^v/, "", v); exit !(v + 0 >= 2) }'; then
	version=3
else
	version=2
fi
if [ "$version" -ge 3 ]; then
	snippet=${1:-$here/../configuration/runtime/containerd2-kata.toml}
else
	snippet=${1:-$here/../configuration/runtime/containerd-kata.toml}
fi

if [ -f "$conf" ] && grep -q 'containerd\.runtimes\.kata\]' "$conf"; then
	echo "register-containerd: $conf already registers the kata handler"
	exit 0
fi
if [ -f "$conf" ] && [ -f "$dir/conf.d/kasa.toml" ] && grep -q "^imports.*$dir/conf.d/" "$conf"; then
	install -m 0644 "$snippet" "$dir/conf.d/kasa.toml"
	echo "register-containerd: $conf imports $dir/conf.d/kasa.toml (updated)"
	exit 0
fi
if [ "$version" -lt 3 ] && [ -f "$conf" ] && grep -q 'io\.containerd\.grpc\.v1\.cri"\]' "$conf"; then
	cp "$conf" "$conf.kasa-bak"
	# The kata tables only: config.toml keeps its own runc.
	{ echo; echo "# Kasa (RuntimeClass handler kata), added by register-containerd.sh"; sed -n '/runtimes\.kata\]/,/runtimes\.runc\]/p' "$snippet" | sed '$d' | grep -v '^# containerd.s default handler\|^# kata would leave'; } >>"$conf"
	echo "register-containerd: appended the kata runtime to $conf (backup $conf.kasa-bak); restart containerd"
	exit 0
fi
install -D -m 0644 "$snippet" "$dir/conf.d/kasa.toml"
if [ ! -f "$conf" ]; then
	printf 'version = %s\nimports = ["%s/conf.d/*.toml"]\n' "$version" "$dir" >"$conf"
elif ! grep -q '^imports' "$conf"; then
	sed -i "1i imports = [\"$dir/conf.d/*.toml\"]" "$conf"
	grep -q '^version' "$conf" || sed -i '1i version = 2' "$conf"
else
	echo "register-containerd: $conf has its own imports; make sure they include $dir/conf.d/kasa.toml" >&2
fi
echo "register-containerd: $dir/conf.d/kasa.toml installed and imported by $conf; restart containerd"
