package metrics

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/kasa-runtime/kasa/agent/api"
)

const goodGuestText = `# HELP kasa_guest_memory_total_bytes x
# TYPE kasa_guest_memory_total_bytes gauge
kasa_guest_memory_total_bytes 2.01326592e+08
# TYPE kasa_guest_memory_available_bytes gauge
kasa_guest_memory_available_bytes 1.5e+08
# TYPE kasa_guest_cpu_seconds_total counter
kasa_guest_cpu_seconds_total{mode="user"} 1.5
kasa_guest_cpu_seconds_total{mode="idle"} 30
`

func TestParseGuestMetrics(t *testing.T) {
	s, rejected, err := parseGuestMetrics(goodGuestText)
	if err != nil || rejected != 0 || len(s) != 4 {
		t.Fatalf("good text: %v, %d rejected, %v", s, rejected, err)
	}
	if s[0].name != api.GuestCPUSeconds || s[0].mode != "idle" || s[0].value != 30 || s[0].typ != counter {
		t.Errorf("first sample %+v", s[0])
	}
}

// TestParseGuestMetricsHostile: whatever the guest sends beyond what the
// agent may is dropped and counted, and no guest string gets through.
func TestParseGuestMetricsHostile(t *testing.T) {
	for _, tc := range []struct {
		name, text   string
		kept, reject int
	}{
		{"unknown family", "# TYPE kasa_sandbox_boot_seconds gauge\nkasa_sandbox_boot_seconds 1\nevil_metric 3\n", 0, 2},
		{"extra label", "kasa_guest_memory_total_bytes{sandbox_id=\"other\"} 5\n", 0, 1},
		{"unknown mode", "# TYPE kasa_guest_cpu_seconds_total counter\nkasa_guest_cpu_seconds_total{mode=\"x" + strings.Repeat("a", 1000) + "\"} 1\n", 0, 1},
		{"mode twice", "# TYPE kasa_guest_cpu_seconds_total counter\nkasa_guest_cpu_seconds_total{mode=\"user\"} 1\nkasa_guest_cpu_seconds_total{mode=\"user\"} 2\n", 1, 1},
		{"wrong type", "# TYPE kasa_guest_memory_total_bytes counter\nkasa_guest_memory_total_bytes 5\n", 0, 1},
		{"untyped", "kasa_guest_cpu_seconds_total{mode=\"user\"} 1\n", 0, 1},
		{"NaN", "# TYPE kasa_guest_memory_free_bytes gauge\nkasa_guest_memory_free_bytes NaN\n", 0, 1},
		{"negative", "# TYPE kasa_guest_memory_free_bytes gauge\nkasa_guest_memory_free_bytes -1\n", 0, 1},
		{"infinite", "# TYPE kasa_guest_memory_free_bytes gauge\nkasa_guest_memory_free_bytes +Inf\n", 0, 1},
		{"huge", "# TYPE kasa_guest_memory_free_bytes gauge\nkasa_guest_memory_free_bytes 1e300\n", 0, 1},
		{"histogram", "# TYPE kasa_guest_cpus_online histogram\nkasa_guest_cpus_online_bucket{le=\"+Inf\"} 1\nkasa_guest_cpus_online_count 1\nkasa_guest_cpus_online_sum 1\n", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, rejected, err := parseGuestMetrics(tc.text)
			if err != nil || len(s) != tc.kept || rejected != tc.reject {
				t.Errorf("kept %v, rejected %d, %v; want %d kept, %d rejected", s, rejected, err, tc.kept, tc.reject)
			}
		})
	}
	for name, text := range map[string]string{
		"not the format": "kasa_guest_memory_total_bytes{{ 5 \x00\n",
		"too large":      goodGuestText + "# " + strings.Repeat("x", api.MaxMetricsBytes),
	} {
		s, rejected, err := parseGuestMetrics(text)
		if err == nil || len(s) != 0 || rejected == 0 {
			t.Errorf("%s: kept %v, rejected %d, %v; want an error", name, s, rejected, err)
		}
		if err != nil && strings.Contains(err.Error(), "\x00") {
			t.Errorf("%s: the error quotes the guest: %q", name, err)
		}
	}
	// Many series in one family: each refused, none kept.
	var b strings.Builder
	b.WriteString("# TYPE kasa_guest_cpu_seconds_total counter\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&b, "kasa_guest_cpu_seconds_total{mode=\"m%d\"} 1\n", i)
	}
	if s, rejected, _ := parseGuestMetrics(b.String()); len(s) != 0 || rejected != 1000 {
		t.Errorf("1000 made-up modes: kept %d, rejected %d", len(s), rejected)
	}
}

// FuzzParseGuestMetrics: no input panics, and whatever is kept is one of
// the listed families with a listed label and a finite, bounded value.
func FuzzParseGuestMetrics(f *testing.F) {
	f.Add(goodGuestText)
	f.Add("kasa_guest_cpu_seconds_total{mode=\"user\"} 1\n")
	f.Fuzz(func(t *testing.T, text string) {
		samples, _, _ := parseGuestMetrics(text)
		for _, s := range samples {
			if _, ok := guestFamilies[s.name]; !ok {
				t.Fatalf("kept unknown family %q", s.name)
			}
			if s.mode != "" && (s.name != api.GuestCPUSeconds || !contains(api.GuestCPUModes, s.mode)) {
				t.Fatalf("kept label %q on %s", s.mode, s.name)
			}
			if math.IsNaN(s.value) || s.value < 0 || s.value > maxGuestValue {
				t.Fatalf("kept value %v", s.value)
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
