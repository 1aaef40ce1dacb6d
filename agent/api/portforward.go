package api

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The port-forward stream: the host opens one vsock stream to
// PortForwardVsockPort per forwarded TCP connection, sends a
// PortForwardRequest, and the agent answers with a PortForwardReply; on
// PortForwardOK the stream carries the connection's bytes both ways.
// portforward.md beside this file describes the format.
const (
	// PortForwardVsockPort is the guest's AF_VSOCK port for forwarded streams.
	PortForwardVsockPort = 1026
	// PortForwardVersion is the version of the request and reply below.
	PortForwardVersion = 1
	// PortForwardRequestSize and PortForwardReplySize are fixed.
	PortForwardRequestSize = 8
	PortForwardReplySize   = 4
)

var portForwardMagic = [2]byte{'K', 'P'}

// PortForwardFamily says which loopback address the host's client used;
// the agent tries that family first and then the other, as "localhost".
type PortForwardFamily uint8

const (
	PortForwardIPv4 PortForwardFamily = 4
	PortForwardIPv6 PortForwardFamily = 6
)

// PortForwardStatus is the agent's answer to a request.
type PortForwardStatus uint8

const (
	PortForwardOK          PortForwardStatus = 0 // connected; the stream is the connection
	PortForwardRefused     PortForwardStatus = 1 // nothing listens on the port (ECONNREFUSED on both families)
	PortForwardUnreachable PortForwardStatus = 2 // the connect failed otherwise (timeout, no route, ...)
	PortForwardBadRequest  PortForwardStatus = 3 // the request was malformed or of an unknown version
	PortForwardBusy        PortForwardStatus = 4 // the agent has too many forwarded streams
)

func (s PortForwardStatus) String() string {
	switch s {
	case PortForwardOK:
		return "ok"
	case PortForwardRefused:
		return "connection refused"
	case PortForwardUnreachable:
		return "unreachable"
	case PortForwardBadRequest:
		return "bad request"
	case PortForwardBusy:
		return "too many forwarded connections"
	}
	return fmt.Sprintf("status %d", uint8(s))
}

// PortForwardRequest asks the agent to connect to localhost:Port.
type PortForwardRequest struct {
	Family PortForwardFamily
	Port   uint16
}

// ErrPortForwardBadRequest is what DecodePortForwardRequest returns for a
// request it does not understand.
var ErrPortForwardBadRequest = errors.New("port-forward: bad request")

// Encode returns the request's PortForwardRequestSize bytes.
func (r PortForwardRequest) Encode() []byte {
	b := make([]byte, PortForwardRequestSize)
	b[0], b[1], b[2], b[3] = portForwardMagic[0], portForwardMagic[1], PortForwardVersion, byte(r.Family)
	binary.BigEndian.PutUint16(b[4:], r.Port)
	return b
}

// DecodePortForwardRequest parses a request of exactly PortForwardRequestSize bytes.
func DecodePortForwardRequest(b []byte) (PortForwardRequest, error) {
	if len(b) != PortForwardRequestSize || b[0] != portForwardMagic[0] || b[1] != portForwardMagic[1] {
		return PortForwardRequest{}, ErrPortForwardBadRequest
	}
	if b[2] != PortForwardVersion {
		return PortForwardRequest{}, fmt.Errorf("%w: version %d", ErrPortForwardBadRequest, b[2])
	}
	r := PortForwardRequest{Family: PortForwardFamily(b[3]), Port: binary.BigEndian.Uint16(b[4:])}
	if r.Family != PortForwardIPv4 && r.Family != PortForwardIPv6 {
		return PortForwardRequest{}, fmt.Errorf("%w: family %d", ErrPortForwardBadRequest, b[3])
	}
	if r.Port == 0 || b[6] != 0 || b[7] != 0 {
		return PortForwardRequest{}, fmt.Errorf("%w: port 0 or reserved bytes set", ErrPortForwardBadRequest)
	}
	return r, nil
}

// PortForwardReply is the agent's answer; Family is the one it connected
// with (0 unless Status is PortForwardOK).
type PortForwardReply struct {
	Status PortForwardStatus
	Family PortForwardFamily
}

// Encode returns the reply's PortForwardReplySize bytes.
func (r PortForwardReply) Encode() []byte {
	return []byte{portForwardMagic[0], portForwardMagic[1], byte(r.Status), byte(r.Family)}
}

// DecodePortForwardReply parses a reply of exactly PortForwardReplySize bytes.
func DecodePortForwardReply(b []byte) (PortForwardReply, error) {
	if len(b) != PortForwardReplySize || b[0] != portForwardMagic[0] || b[1] != portForwardMagic[1] {
		return PortForwardReply{}, errors.New("port-forward: malformed reply")
	}
	return PortForwardReply{Status: PortForwardStatus(b[2]), Family: PortForwardFamily(b[3])}, nil
}
