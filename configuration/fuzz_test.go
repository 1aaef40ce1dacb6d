package configuration

import (
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// parseFuzzAnnotations reads "key=value" lines; a key that does not start
// with "io." is under AnnotationPrefix, to keep seeds short.
func parseFuzzAnnotations(s string) map[string]string {
	out := map[string]string{}
	for line := range strings.SplitSeq(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		if !strings.HasPrefix(k, "io.") {
			k = AnnotationPrefix + k
		}
		out[k] = v
	}
	return out
}

// FuzzApplyAnnotations applies arbitrary pod annotations to a valid
// configuration whose enable_annotations and valid_*_paths come from the
// fuzzer too (split at newlines). The call must error or return a copy
// that passes Validate and differs from the file only in hypervisor keys an
// annotation on the allowlist, enabled by enable_annotations and used by
// the hypervisor, may set; path values match their valid_*_paths, kernel
// parameters are only appended to, and rootless, virtio_fs_userns and
// seccompsandbox never change. The original is not modified.
func FuzzApplyAnnotations(f *testing.F) {
	all := "default_vcpus\ndefault_memory\nkernel_params\nmachine_type\npath\nkernel\ninitrd\nvirtio_fs_daemon\nmsize_9p\nenable_debug\ndefault_max.*\nshared_fs"
	paths := "/usr/bin/qemu-system-*\n/usr/share/kasa/*\n/usr/libexec/virtiofsd"
	for _, s := range []struct {
		enable, valid  string
		annotationList string
	}{
		{all, paths, "hypervisor.default_vcpus=2\nhypervisor.default_memory=1024\nhypervisor.kernel_params=debug panic=1"},
		{all, paths, "hypervisor.default_max_vcpus=4\nhypervisor.default_maxvcpus=8"},
		{all, paths, "hypervisor.path=/usr/bin/qemu-system-aarch64\nhypervisor.kernel=/usr/share/kasa/../../../etc/shadow"},
		{all, paths, "hypervisor.shared_fs=virtio-9p\nhypervisor.machine_type=microvm\nhypervisor.enable_debug=true"},
		{".*", "*", "hypervisor.rootless=false\nhypervisor.seccompsandbox=\nhypervisor.virtio_fs_userns=off\nhypervisor.kernel_params=\x00init=/bin/sh"},
		{"", "", "hypervisor.default_vcpus=2"},
		{all, paths, "agent.kernel_modules=evil\nruntime.disable_new_netns=true\nio.katacontainers.config_path=/tmp/x.toml\nio.kubernetes.cri.container-type=sandbox"},
		{"kernel_params|default_vcpus", "", "hypervisor.kernel_params=a b\nhypervisor.default_vcpus=-1\nhypervisor.msize_9p=4096"},
		{all, paths, "hypervisor.virtio_fs_daemon=/usr/libexec/virtiofsd\nhypervisor.block_device_driver=virtio-blk\nhypervisor.firmware=/x"},
		{all, paths, "hypervisor.default_vcpus=2\nhypervisor.machine_type=q35\nhypervisor.kernel=/usr/share/kasa/vmlinux"},
		{"(?i)KERNEL_PARAMS", paths, "hypervisor.kernel_params=console=hvc0"},
	} {
		f.Add(s.enable, s.valid, s.annotationList)
	}
	f.Fuzz(func(t *testing.T, enable, valid, annotationList string) {
		base := Default()
		base.Path = "/etc/kasa/configuration.toml"
		h := &base.Hypervisor
		h.EnableAnnotations = strings.Split(enable, "\n")
		globs := strings.Split(valid, "\n")
		h.ValidHypervisorPaths, h.ValidKernelPaths, h.ValidInitrdPaths, h.ValidVirtioFSDaemonPaths = globs, globs, globs, globs
		if base.Validate() != nil {
			return // Load refuses such a file
		}
		orig := base.Clone()
		annotations := parseFuzzAnnotations(annotationList)

		out, err := base.ApplyAnnotations(annotations)
		if !reflect.DeepEqual(base, orig) {
			t.Fatal("ApplyAnnotations modified its receiver")
		}
		if err != nil {
			if out != nil {
				t.Fatal("a result with an error")
			}
			return
		}
		if out == base {
			t.Fatal("returned the receiver, want a copy")
		}
		if err := out.Validate(); err != nil {
			t.Fatalf("result fails Validate: %v", err)
		}
		if out.HypervisorName != base.HypervisorName || out.Path != base.Path ||
			!reflect.DeepEqual(out.Agent, base.Agent) || !reflect.DeepEqual(out.Runtime, base.Runtime) {
			t.Fatal("an annotation changed more than hypervisor keys")
		}
		if out.Hypervisor.Rootless != base.Hypervisor.Rootless || out.Hypervisor.SeccompSandbox != base.Hypervisor.SeccompSandbox ||
			out.Hypervisor.VirtioFSUserns != base.Hypervisor.VirtioFSUserns {
			t.Fatal("rootless, virtio_fs_userns or seccompsandbox changed")
		}

		// The keys the annotations may set.
		var enabled []*regexp.Regexp
		for _, e := range h.EnableAnnotations {
			enabled = append(enabled, regexp.MustCompile("^(?:"+e+")$"))
		}
		settable := map[string]bool{}
		prefix := AnnotationPrefix + "hypervisor."
		for ann := range annotations {
			name, ok := strings.CutPrefix(ann, prefix)
			if !ok {
				continue
			}
			if o, ok := hypervisorOverrides[name]; ok && matchesAny(enabled, name, o.key) {
				settable[o.key] = true
			}
		}
		ov, bv := reflect.ValueOf(out.Hypervisor), reflect.ValueOf(base.Hypervisor)
		for i := range ov.NumField() {
			key := ov.Type().Field(i).Tag.Get("toml")
			if reflect.DeepEqual(ov.Field(i).Interface(), bv.Field(i).Interface()) {
				continue
			}
			if !settable[key] {
				t.Fatalf("%s changed from %v to %v, but no enabled annotation may set it", key, bv.Field(i), ov.Field(i))
			}
			if o := hypervisorOverrides[key]; o.pathList != "" {
				p := ov.Field(i).String()
				if filepath.Clean(p) != p || !filepath.IsAbs(p) || !slices.ContainsFunc(pathPatterns(h, o.pathList), func(g string) bool {
					ok, _ := filepath.Match(g, p)
					return ok
				}) {
					t.Fatalf("%s = %q, not a clean path matched by %s %q", key, p, o.pathList, pathPatterns(h, o.pathList))
				}
			}
		}
		if before, after := strings.Fields(h.KernelParams), strings.Fields(out.Hypervisor.KernelParams); !slices.Equal(after[:min(len(before), len(after))], before) {
			t.Fatalf("kernel parameters %q replaced by %q, want them appended to", h.KernelParams, out.Hypervisor.KernelParams)
		}
	})
}
