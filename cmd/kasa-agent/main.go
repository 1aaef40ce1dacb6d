// Command kasa-agent is the guest's init: it serves the host's ttrpc calls.
package main

import "github.com/kasa-runtime/kasa/agent/guest"

func main() { guest.Main() }
