package template

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"syscall"
)

// layoutVersion changes whenever what a template contains changes (its
// devices and their slots, the agent's template contract): templates of an
// older runtime are then not used.
const layoutVersion = 3

// Spec is everything that makes a booted guest what it is: two sandboxes
// whose Specs are equal can start from the same template. Files are named by
// path and keyed by their content (the QEMU binary by its identity on disk,
// which a package upgrade changes).
type Spec struct {
	QEMU   string `json:"qemu"`
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd,omitempty"`
	// Image is the guest's root image (an NVDIMM, DAX), which a clone maps
	// from the same file as its template: it is keyed by content like the
	// kernel.
	Image        string   `json:"image,omitempty"`
	Firmware     string   `json:"firmware,omitempty"`
	MachineType  string   `json:"machine_type"`
	VCPUs        uint32   `json:"vcpus"`
	MemoryMiB    uint32   `json:"memory_mib"`
	KernelParams []string `json:"kernel_params"`
	Accelerator  string   `json:"accelerator"`
	Transport    string   `json:"transport"`
	SharedFS     string   `json:"shared_fs"`
	Debug        bool     `json:"debug"`
	// FreePageReporting adds a device (a virtio-balloon) to the machine.
	FreePageReporting bool `json:"free_page_reporting,omitempty"`
}

// keyInput is what is hashed into a key.
type keyInput struct {
	Layout  int               `json:"layout"`
	Spec    Spec              `json:"spec"`
	Content map[string]string `json:"content"`
}

// Key is the template key of spec: a hash of spec, of the content of its
// kernel, initrd or image and firmware, and of its QEMU binary's identity.
func Key(spec Spec) (string, error) {
	in := keyInput{Layout: layoutVersion, Spec: spec, Content: map[string]string{}}
	for _, f := range []struct{ name, path string }{{"kernel", spec.Kernel}, {"initrd", spec.Initrd}, {"image", spec.Image}, {"firmware", spec.Firmware}} {
		if f.path == "" {
			continue
		}
		sum, err := fileSHA256(f.path)
		if err != nil {
			return "", fmt.Errorf("template key: %s: %w", f.name, err)
		}
		in.Content[f.name] = sum
	}
	id, err := fileIdentity(spec.QEMU)
	if err != nil {
		return "", fmt.Errorf("template key: hypervisor: %w", err)
	}
	in.Content["qemu"] = id
	b, err := json.Marshal(in)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16]), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileIdentity names a file's version on disk without reading it: device,
// inode, size and modification time.
func fileIdentity(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("%s: no stat information", path)
	}
	return fmt.Sprintf("%d:%d:%d:%d", st.Dev, st.Ino, fi.Size(), fi.ModTime().UnixNano()), nil
}
