package guestlog

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/agent/api"
)

func TestQueueIsBoundedAndCountsDrops(t *testing.T) {
	q := NewQueue()
	text := strings.Repeat("z", 1000)
	for range 2 * MaxQueued / 1000 {
		q.Add(api.GuestLogAgent, api.LogInfo, text)
	}
	if q.bytes > MaxQueued || q.dropped == 0 {
		t.Fatalf("queue holds %d bytes (max %d), dropped %d", q.bytes, MaxQueued, q.dropped)
	}
	dropped := q.dropped
	q.next() // the host took everything
	q.Add(api.GuestLogKernel, api.LogErr, "after")
	lines := q.next()
	if len(lines) != 2 || !strings.Contains(string(lines[0]), "dropped") || string(lines[1]) != "k3 after\n" {
		t.Fatalf("after draining: %q (dropped %d)", lines, dropped)
	}
}

// TestServeSendsQueuedAndNewLines plays the host: lines queued before it
// connects arrive first, then new ones, from the hook's entries too.
func TestServeSendsQueuedAndNewLines(t *testing.T) {
	q := NewQueue()
	logger := logrus.New()
	logger.SetOutput(&strings.Builder{})
	logger.AddHook(NewHook(q))
	logger.WithField("container", "c1").WithField("component", "kasa-agent").Info("container created")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go q.Serve(context.Background(), l)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	first, _ := r.ReadString('\n')
	if first != "a6 container created container=c1\n" {
		t.Errorf("first line %q", first)
	}
	logger.Warn("later")
	if second, _ := r.ReadString('\n'); second != "a4 later\n" {
		t.Errorf("second line %q", second)
	}
}

func TestParseKmsg(t *testing.T) {
	for rec, want := range map[string]struct {
		level int
		text  string
		ok    bool
	}{
		"6,339,5140900,-;NET: Registered PF_VSOCK protocol family\n":  {6, "NET: Registered PF_VSOCK protocol family", true},
		"4,1,2,c;virtio: odd\n SUBSYSTEM=virtio\n DEVICE=+virtio:1\n": {4, "virtio: odd", true},
		"30,5,6,-;facility daemon, level info\n":                      {6, "facility daemon, level info", true},
		"no semicolon":                                                {0, "", false},
		"x,1,2,-;text":                                                {0, "", false},
		"-1,1,2,-;text":                                               {0, "", false},
	} {
		level, text, ok := ParseKmsg([]byte(rec))
		if level != want.level || text != want.text || ok != want.ok {
			t.Errorf("ParseKmsg(%q) = %d %q %v, want %+v", rec, level, text, ok, want)
		}
	}
}
