package shimv2

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// A line the guest can provoke passes once per interval, then with the
// count of those held back; other lines all pass.
func TestGuestProvokedLogsLimited(t *testing.T) {
	var out bytes.Buffer
	l := logrus.New()
	l.SetOutput(&out)
	l.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	limitGuestProvokedLogs(l)
	limitGuestProvokedLogs(l) // idempotent
	f := l.Formatter.(*limitedFormatter)
	now := time.Unix(1000, 0)
	f.now = func() time.Time { return now }

	for i := 0; i < 10000; i++ {
		l.WithField("stream", 2*i).Error("ttrpc: received message on inactive stream")
		l.Info("ordinary")
	}
	now = now.Add(guestLogEvery)
	l.WithField("stream", 4).Error("ttrpc: received message on inactive stream")

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var limited []string
	ordinary := 0
	for _, line := range lines {
		if strings.Contains(line, "inactive stream") {
			limited = append(limited, line)
		} else if strings.Contains(line, "ordinary") {
			ordinary++
		}
	}
	if ordinary != 10000 {
		t.Errorf("%d ordinary lines of 10000", ordinary)
	}
	if len(limited) != 2 {
		t.Fatalf("%d limited lines, want 2:\n%s", len(limited), strings.Join(limited, "\n"))
	}
	if !strings.Contains(limited[1], "suppressed_since_last=9999") || !strings.Contains(limited[1], "level=error") || !strings.Contains(limited[1], "stream=4") {
		t.Errorf("second line does not count the suppressed ones or lost its level/fields: %s", limited[1])
	}
}
