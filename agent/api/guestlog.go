package api

import (
	"strconv"
	"strings"
)

// The guest log stream: the agent's own log and the guest kernel's
// (/dev/kmsg) as lines on GuestLogVsockPort. The host connects; the agent
// sends what it queued since boot and then the lines as they come. A line
// is
//
//	<source><level> <text>\n
//
// with source GuestLogAgent or GuestLogKernel and level a syslog priority
// digit (0 emergency … 7 debug). guestlog.md beside this file has the
// bounds. The host treats every byte as hostile: GuestLogLine's parse is
// total, and what does not parse is shown as it came, source "guest".
const (
	// GuestLogVsockPort is the guest's AF_VSOCK port of the log stream
	// (Kata's agent.log_vport is 1025 too).
	GuestLogVsockPort = 1025
	// GuestLogLevelParam on the guest kernel command line sets the agent's
	// log level ("debug"); the kernel's lines are then sent at every level,
	// not only warning and above.
	GuestLogLevelParam = "kasa.log_level"
	// MaxGuestLogLine bounds a line the agent sends, text included; the
	// host cuts longer lines there.
	MaxGuestLogLine = 2048
)

// GuestLogSource says where a guest log line comes from.
type GuestLogSource byte

const (
	GuestLogAgent  GuestLogSource = 'a'
	GuestLogKernel GuestLogSource = 'k'
)

func (s GuestLogSource) String() string {
	switch s {
	case GuestLogAgent:
		return "agent"
	case GuestLogKernel:
		return "kernel"
	}
	return "guest"
}

// Syslog priorities, as the kernel and the agent's lines use them.
const (
	LogErr     = 3
	LogWarning = 4
	LogInfo    = 6
	LogDebug   = 7
)

// FormatGuestLogLine returns one line of the stream, text cut to fit
// MaxGuestLogLine and its newlines replaced.
func FormatGuestLogLine(src GuestLogSource, level int, text string) []byte {
	level = min(max(level, 0), LogDebug)
	text = strings.ReplaceAll(text, "\n", " ")
	if len(text) > MaxGuestLogLine-4 {
		text = text[:MaxGuestLogLine-4]
	}
	b := make([]byte, 0, len(text)+4)
	b = append(b, byte(src), byte('0'+level), ' ')
	b = append(b, text...)
	return append(b, '\n')
}

// ParseGuestLogLine splits a line (without its newline) into source, level
// and text. A line that does not follow the format is returned whole with
// source "guest" and level LogInfo.
func ParseGuestLogLine(line []byte) (GuestLogSource, int, []byte) {
	if len(line) >= 3 && (line[0] == byte(GuestLogAgent) || line[0] == byte(GuestLogKernel)) &&
		line[1] >= '0' && line[1] <= '7' && line[2] == ' ' {
		return GuestLogSource(line[0]), int(line[1] - '0'), line[3:]
	}
	return 0, LogInfo, line
}

// GuestLogLevelFromCmdline returns the value of GuestLogLevelParam on a
// kernel command line, "" when it is absent.
func GuestLogLevelFromCmdline(cmdline string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, GuestLogLevelParam+"="); ok {
			return v
		}
	}
	return ""
}

// DebugConsoleFromCmdline says whether DebugConsoleParam is on a kernel
// command line (bare, or =1/=true).
func DebugConsoleFromCmdline(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == DebugConsoleParam {
			return true
		}
		if v, ok := strings.CutPrefix(f, DebugConsoleParam+"="); ok {
			b, err := strconv.ParseBool(v)
			return err == nil && b
		}
	}
	return false
}
