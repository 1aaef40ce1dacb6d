package restore

import "testing"

func TestIsTemplate(t *testing.T) {
	for cmdline, want := range map[string]bool{
		"console=ttyS0 kasa.template=1 quiet\n": true,
		"kasa.template=1":                       true,
		"console=ttyS0 quiet":                   false,
		"kasa.template=10":                      false,
		"xkasa.template=1":                      false,
	} {
		if got := IsTemplate(cmdline); got != want {
			t.Errorf("IsTemplate(%q) = %v", cmdline, got)
		}
	}
}
