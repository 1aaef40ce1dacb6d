#!/usr/bin/env bash
# Regenerates the Go code of every .proto under agent/api/ (make generate).
#
# Generated files are committed beside their .proto and must come out byte
# for byte the same on every machine, so every generator is pinned:
#   protoc                 libprotoc 3.21.12 (Debian 12 protobuf-compiler)
#   protoc-gen-go          google.golang.org/protobuf v1.36.12
#   protoc-gen-go-ttrpc    github.com/containerd/ttrpc v1.2.10
# The two plugins are installed into $KASA_CACHE/tools/bin (default
# /var/cache/kasa/tools/bin) when missing or of another version. protoc comes
# from the system (apt-get install protobuf-compiler); $PROTOC overrides it.
#
# Usage: hack/generate.sh            (from any directory)
set -euo pipefail

readonly PROTOC_WANT="libprotoc 3.21.12"
readonly PROTOC_GEN_GO_MOD="google.golang.org/protobuf"
readonly PROTOC_GEN_GO_VERSION="v1.36.12"
readonly PROTOC_GEN_GO_TTRPC_MOD="github.com/containerd/ttrpc"
readonly PROTOC_GEN_GO_TTRPC_VERSION="v1.2.10"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
tools_bin="${KASA_CACHE:-/var/cache/kasa}/tools/bin"
protoc="${PROTOC:-protoc}"

die() {
	echo "generate.sh: $*" >&2
	exit 1
}

# module_version BINARY MODULE prints the version of MODULE that BINARY was
# built from (its main module or a dependency), or nothing.
module_version() {
	go version -m "$1" 2>/dev/null |
		awk -v mod="$2" '($1 == "mod" || $1 == "dep") && $2 == mod { print $3; exit }'
}

# ensure_plugin NAME MODULE VERSION installs MODULE/cmd/NAME@VERSION into
# $tools_bin unless the binary there was already built from that version.
ensure_plugin() {
	local name="$1" mod="$2" version="$3"
	local bin="${tools_bin}/${name}"
	if [[ -x "${bin}" && "$(module_version "${bin}" "${mod}")" == "${version}" ]]; then
		return
	fi
	echo "generate.sh: installing ${mod}/cmd/${name}@${version} into ${tools_bin}" >&2
	mkdir -p "${tools_bin}"
	# Outside the repository, so that go.mod is neither read nor touched.
	(cd / && GOBIN="${tools_bin}" GOFLAGS= GOWORK=off go install "${mod}/cmd/${name}@${version}")
	local got
	got="$(module_version "${bin}" "${mod}")"
	[[ "${got}" == "${version}" ]] || die "${bin} is ${got:-of unknown version}, want ${version}"
}

command -v go >/dev/null || die "go is not in PATH"
command -v "${protoc}" >/dev/null ||
	die "${protoc} not found: apt-get install protobuf-compiler (or set PROTOC)"
protoc_version="$("${protoc}" --version)"
[[ "${protoc_version}" == "${PROTOC_WANT}" ]] ||
	die "${protoc} is \"${protoc_version}\", want \"${PROTOC_WANT}\" (its version is written into the generated code)"

ensure_plugin protoc-gen-go "${PROTOC_GEN_GO_MOD}" "${PROTOC_GEN_GO_VERSION}"
ensure_plugin protoc-gen-go-ttrpc "${PROTOC_GEN_GO_TTRPC_MOD}" "${PROTOC_GEN_GO_TTRPC_VERSION}"

# The well-known types (google/protobuf/empty.proto...) ship with protoc;
# Debian puts them under /usr/include.
wkt_include=""
for dir in "$(dirname "$(command -v "${protoc}")")/../include" /usr/include /usr/local/include; do
	if [[ -f "${dir}/google/protobuf/empty.proto" ]]; then
		wkt_include="$(cd "${dir}" && pwd -P)"
		break
	fi
done
[[ -n "${wkt_include}" ]] || die "google/protobuf/empty.proto not found next to ${protoc}"

# Paths given to protoc are relative to the repository root: they end up in
# the generated files ("source: agent/api/agent.proto").
cd "${repo_root}"
mapfile -t protos < <(find agent/api -name '*.proto' -type f | LC_ALL=C sort)
[[ ${#protos[@]} -gt 0 ]] || die "no .proto files under agent/api"

"${protoc}" \
	--plugin=protoc-gen-go="${tools_bin}/protoc-gen-go" \
	--plugin=protoc-gen-go-ttrpc="${tools_bin}/protoc-gen-go-ttrpc" \
	-I . \
	-I "${wkt_include}" \
	--go_out=. --go_opt=paths=source_relative \
	--go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative \
	"${protos[@]}"

echo "generate.sh: generated Go code for ${protos[*]}" >&2
