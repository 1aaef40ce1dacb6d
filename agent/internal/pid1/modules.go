package pid1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// ModuleList is written by the guest-image builder when the kernel needs
// modules: one "path [param=value ...]" per line, in dependency order.
const ModuleList = "/etc/kasa/modules"

// LoadModules loads every module named in list. A missing list is fine (a
// kernel with everything built in); a module already loaded is skipped.
func LoadModules(ctx context.Context, list string) error {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if err := loadModule(fields[0], strings.Join(fields[1:], " ")); err != nil {
			return err
		}
		log.G(ctx).WithField("module", fields[0]).Debug("module loaded")
	}
	return sc.Err()
}

func loadModule(path, params string) error {
	m, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer m.Close()
	if err := unix.FinitModule(int(m.Fd()), params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}
