// Package api is the versioned ttrpc contract between the Kasa shim and the in-guest agent.
//
// agent.proto is the source of truth; agent.pb.go and agent_ttrpc.pb.go are
// generated from it by hack/generate.sh (make generate) and committed. The
// versioning rule is written at the top of agent.proto: package kasa.agent.v1
// only ever grows additively, and APIVersion counts those additions so that
// the host can refuse an agent that is too old.
package api
