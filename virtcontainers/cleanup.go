package virtcontainers

import (
	"context"

	"github.com/containerd/log"
)

// cleanup is a stack of undo steps: a setup that fails half-way runs it to
// take back every step already taken, newest first (gVisor's cleanup.Make).
type cleanup struct {
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func() error
}

func (c *cleanup) add(what string, fn func() error) { c.steps = append(c.steps, undoStep{what, fn}) }

func (c *cleanup) run(ctx context.Context) {
	for i := len(c.steps) - 1; i >= 0; i-- {
		if err := c.steps[i].fn(); err != nil {
			log.G(ctx).WithError(err).Warnf("rollback: %s", c.steps[i].what)
		}
	}
	c.steps = nil
}
