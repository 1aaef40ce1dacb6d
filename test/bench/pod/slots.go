package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// maxBootsKey matches a max_concurrent_boots line of a configuration file.
var maxBootsKey = regexp.MustCompile(`(?m)^\s*max_concurrent_boots\s*=.*$`)

// withBootSlots returns the configuration text with
// runtime.max_concurrent_boots = n: the line replaced, or added to the
// [runtime] table, or in a [runtime] table of its own at the end.
func withBootSlots(text string, n int) string {
	line := fmt.Sprintf("max_concurrent_boots = %d", n)
	switch {
	case maxBootsKey.MatchString(text):
		return maxBootsKey.ReplaceAllString(text, line)
	case strings.Contains(text, "\n[runtime]\n") || strings.HasPrefix(text, "[runtime]\n"):
		return strings.Replace("\n"+text, "\n[runtime]\n", "\n[runtime]\n"+line+"\n", 1)[1:]
	}
	return strings.TrimRight(text, "\n") + "\n\n[runtime]\n" + line + "\n"
}

// slotSweep runs the kata bursts once per value of -boot-slots, with the
// shim's configuration file rewritten for each (the shim reads it for
// every sandbox) and restored afterwards. It prints each burst as it ends
// and returns them by slot count, in the order of bursts.
func (b *bench) slotSweep(ctx context.Context, cfg config) (map[int][]burstRun, error) {
	if cfg.kasaConfig == "" {
		return nil, fmt.Errorf("-boot-slots needs -kasa-config (the file is rewritten for each value)")
	}
	orig, err := os.ReadFile(cfg.kasaConfig)
	if err != nil {
		return nil, err
	}
	defer os.WriteFile(cfg.kasaConfig, orig, 0o644)
	out := map[int][]burstRun{}
	for _, slots := range cfg.bootSlots {
		if err := os.WriteFile(cfg.kasaConfig, []byte(withBootSlots(string(orig), slots)), 0o644); err != nil {
			return nil, err
		}
		for _, n := range cfg.bursts {
			br := b.burst(ctx, "kata", n)
			out[slots] = append(out[slots], br)
			fmt.Printf("  kata  burst of %d, max_concurrent_boots = %d: %s\n", n, slots, br)
		}
	}
	return out, nil
}

func printSlotSweep(cfg config, sweep map[int][]burstRun) {
	for i, n := range cfg.bursts {
		fmt.Printf("\nburst of %d with runtime.max_concurrent_boots = N (first / median / last pod ready)\n", n)
		for _, slots := range cfg.bootSlots {
			fmt.Printf("N=%-4d %s\n", slots, sweep[slots][i])
		}
	}
}
