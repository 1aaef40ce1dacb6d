// Command mkinitrd writes an uncompressed newc cpio archive from a
// gen_init_cpio-style list: mkinitrd LIST OUT.
package main

import (
	"fmt"
	"os"

	"github.com/kasa-runtime/kasa/guest-image/cpio"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitrd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: mkinitrd LIST OUT.cpio")
	}
	list, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer list.Close()
	entries, err := cpio.ParseList(list)
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	out, err := os.Create(args[1])
	if err != nil {
		return err
	}
	w := cpio.NewWriter(out)
	for _, e := range entries {
		if err := w.Add(e); err != nil {
			out.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
