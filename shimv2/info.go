package shimv2

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"

	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kasa-runtime/kasa/version"
)

// infoFlag is how containerd 2.x asks a shim what it supports (`shim
// -info`, runtime options on stdin, a types.RuntimeInfo protobuf on
// stdout). Its CRI plugin allows recursive read-only mounts (Kubernetes'
// recursiveReadOnly) only for a handler whose features list "rro".
const infoFlag = "-info"

// featuresTypeURL is the type URL containerd registers for OCI features
// (typeurl.Register(&features.Features{}, "types.containerd.io",
// "opencontainers/runtime-spec", major, "features", "Features")); the
// value is the features' JSON.
var featuresTypeURL = path.Join("types.containerd.io", "opencontainers/runtime-spec", strconv.Itoa(specs.VersionMajor), "features", "Features")

// mountOptions are the OCI mount options a container of a Kasa pod gets
// as runc would give them: those the guest's libcontainer knows, less
// "shared" and "rshared", which Kasa refuses (their mounts would have to
// reach the host from inside the VM).
var mountOptions = []string{
	"async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion",
	"lazytime", "loud", "mand", "noatime", "nodev", "nodiratime", "noexec", "noiversion",
	"nolazytime", "nomand", "norelatime", "nostrictatime", "nosuid", "nosymfollow", "private",
	"ratime", "rbind", "rdev", "rdiratime", "relatime", "remount", "rexec", "rnoatime", "rnodev",
	"rnodiratime", "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow", "ro",
	"rprivate", "rrelatime", "rro", "rrw", "rslave", "rstrictatime", "rsuid", "rsymfollow",
	"runbindable", "rw", "silent", "slave", "strictatime", "suid", "symfollow", "sync",
	"tmpcopyup", "unbindable",
}

// RuntimeInfo is what `containerd-shim-kasa-v2 -info` answers. It
// declares no Linux features: containerd then offers no user namespaces
// (which Kasa does not map) to the handler.
func RuntimeInfo() (*types.RuntimeInfo, error) {
	f, err := json.Marshal(features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		MountOptions:  mountOptions,
	})
	if err != nil {
		return nil, err
	}
	return &types.RuntimeInfo{
		Name:     RuntimeType,
		Version:  &types.RuntimeVersion{Version: version.Version, Revision: version.Commit},
		Features: &anypb.Any{TypeUrl: featuresTypeURL, Value: f},
	}, nil
}

// printInfo answers -info. The runtime options on stdin are not needed:
// what Kasa supports does not depend on its configuration file.
func printInfo(stdout io.Writer) int {
	info, err := RuntimeInfo()
	if err == nil {
		var b []byte
		if b, err = proto.Marshal(info); err == nil {
			_, err = stdout.Write(b)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "runtime info:", err)
		return 1
	}
	return 0
}
