package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kasa-runtime/kasa/virtcontainers"
)

// templateCmd is kasa template create|list|remove.
func templateCmd(path string, args []string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return 1
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, "usage: kasa template create|list|remove [KEY...]\n")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	store := virtcontainers.TemplateStore(cfg)
	switch args[0] {
	case "create":
		m, err := virtcontainers.CreateTemplate(ctx, cfg)
		if err != nil {
			fmt.Fprintf(stderr, "kasa: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "template %s made in %.1fs: %s\n", m.Key, m.BootSeconds, store.Dir(m.Key))
		if !cfg.Factory.EnableTemplate {
			fmt.Fprintln(stdout, "note: factory.enable_template = false: sandboxes do not use it")
		}
		return 0
	case "list":
		ms, broken, err := store.List()
		if err != nil {
			fmt.Fprintf(stderr, "kasa: %v\n", err)
			return 1
		}
		current := virtcontainers.TemplateStatus(cfg).Key
		if current == "" {
			_, current, _ = virtcontainers.TemplateSpec(cfg)
		}
		fmt.Fprintf(stdout, "%-32s  %-7s  %-20s  %8s  %s\n", "KEY", "USED", "CREATED", "MEMORY", "KERNEL / INITRD OR IMAGE")
		for _, m := range ms {
			used := "no"
			if m.Key == current && cfg.Factory.EnableTemplate {
				used = "yes"
			}
			fmt.Fprintf(stdout, "%-32s  %-7s  %-20s  %7.1fM  %s / %s\n", m.Key, used, m.Created.Format(time.DateTime),
				float64(allocated(filepath.Join(store.Dir(m.Key), "memory")))/(1<<20), m.Spec.Kernel, cmp.Or(m.Spec.Initrd, m.Spec.Image))
		}
		for _, k := range broken {
			fmt.Fprintf(stdout, "%-32s  %-7s  unfinished or broken: the next sandbox that needs it makes it again\n", k, "no")
		}
		return 0
	case "remove":
		keys := args[1:]
		if len(keys) == 0 {
			_, key, err := virtcontainers.TemplateSpec(cfg)
			if err != nil {
				fmt.Fprintf(stderr, "kasa: %v\n", err)
				return 1
			}
			keys = []string{key}
		}
		for _, k := range keys {
			if err := store.Remove(ctx, k); err != nil {
				fmt.Fprintf(stderr, "kasa: %v\n", err)
				return 1
			}
			fmt.Fprintf(stdout, "removed template %s\n", k)
		}
		return 0
	default:
		fmt.Fprintf(stderr, "kasa: unknown template command %q (create, list, remove)\n", args[0])
		return 2
	}
}

// allocated is how much of a (sparse) file is written: what it costs in
// the template directory's tmpfs.
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
