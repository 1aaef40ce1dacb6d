package shimv2

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// bundle is a container's OCI bundle as the sandbox needs it, whichever
// manager wrote it: the one place where containerd's and CRI-O's ways of
// describing the same container are made one.
type bundle struct {
	spec *specs.Spec
	// rootfs is the host directory that is the container's root when no
	// rootfs mounts come with the Create: the spec's root.path, relative to
	// the bundle (containerd: "rootfs") or absolute (CRI-O: its storage's
	// overlay "merged" directory).
	rootfs string
}

// readBundle reads dir/config.json and translates the managers' quirks.
func readBundle(dir string) (*bundle, error) {
	s, err := readBundleSpec(dir)
	if err != nil {
		return nil, err
	}
	return fromManager(dir, s), nil
}

func readBundleSpec(dir string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json: %w", dir, err)
	}
	return &s, nil
}

// fromManager turns a spec as its manager wrote it into what the sandbox
// expects; s is modified.
//
//   - The root filesystem: root.path resolved against the bundle, as OCI
//     says; "rootfs" when the spec has none.
//   - Pinned namespaces of a pod's sandbox container: CRI-O creates the
//     pod's IPC and UTS (and network) namespaces with pinns before the
//     sandbox container exists and names them by path in its spec, where
//     containerd leaves the sandbox container to create them. In a VM the
//     sandbox container's namespaces are the guest's new ones, which the
//     pod's other containers join; the host's pinned ones mean nothing
//     there, so their paths are dropped. The network namespace keeps its
//     path: it is the pod's, whose veths the VM's NICs are joined to.
//     Workload containers keep theirs: a path there (CRI-O's pinned file or
//     containerd's /proc/<pid>/ns/...) means "the pod's", which the guest
//     spec turns into the sandbox container's namespace.
func fromManager(dir string, s *specs.Spec) *bundle {
	b := &bundle{spec: s, rootfs: filepath.Join(dir, "rootfs")}
	if s.Root != nil && s.Root.Path != "" {
		if filepath.IsAbs(s.Root.Path) {
			b.rootfs = filepath.Clean(s.Root.Path)
		} else {
			b.rootfs = filepath.Join(dir, s.Root.Path)
		}
	}
	if isPodSandbox(s) && s.Linux != nil {
		for i, n := range s.Linux.Namespaces {
			if pinnedByManager[n.Type] {
				s.Linux.Namespaces[i].Path = ""
			}
		}
	}
	return b
}

// pinnedByManager are the namespaces a manager may create for a pod before
// its sandbox container (CRI-O's pinns) and name in that container's spec.
var pinnedByManager = map[specs.LinuxNamespaceType]bool{
	specs.IPCNamespace: true, specs.UTSNamespace: true,
}
