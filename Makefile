# Kasa: a pod-per-VM container runtime.
#   make build         bin/kasa, bin/containerd-shim-kasa-v2, bin/kasa-agent (static)
#   make guest-image   build/guest/{vmlinuz,initrd.img,guest.img,manifest.json}
#   make demo          installs, checks the host, runs a pod in a VM through containerd's CRI
#   make test          installs what it needs, builds, runs unit + integration tests
#   make install       PREFIX (default /usr) and DESTDIR are honoured
#   make generate      regenerates agent/api from agent.proto (protoc)
#   make bench-boot    boot phase timings, Kasa agent beside a trivial /init
#   make bench-run     ctr run --rm hello-world, Kasa beside runc
#   make bench-pod     CRI pod-ready latency, bursts of 10 and 20 pods, memory per idle pod, Kasa beside runc
#   make bench-vsock   agent RPC latency and stream throughput, vhost-user-vsock beside virtio-serial
#   make fuzz          every Go fuzz target for FUZZTIME each (default 5m; make test runs 10s each)
#   make soak          the CRI exec soak for 10 minutes (make test runs 2)

PREFIX ?= /usr
DESTDIR ?=
GO ?= go
VERSION ?= 0.1.0-dev
COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null)
LDFLAGS := -X github.com/kasa-runtime/kasa/version.Version=$(VERSION) -X github.com/kasa-runtime/kasa/version.Commit=$(COMMIT)
# The agent is the guest's only binary: static, no libc at run time.
# It links libseccomp statically, so deps (apt packages) come before it.
STATIC := CGO_ENABLED=1 $(GO) build -trimpath -tags netgo,osusergo,seccomp -ldflags '$(LDFLAGS) -s -w -extldflags -static'
KERNEL_SOURCE ?= minimal
KASA_TEST_CRIO_DIR ?= $(CURDIR)/../shared/cri-o
GUEST := build/guest

export PATH := $(CURDIR)/bin:$(PATH)

.PHONY: all build deps guest-image install install-containerd-config demo test test-unit test-fuzz test-integration cri-tools generate bench-boot bench-run bench-pod bench-vsock fuzz soak clean

all: build guest-image

build: bin/kasa bin/kasa-agent bin/containerd-shim-kasa-v2

bin/kasa: FORCE deps
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/kasa

bin/containerd-shim-kasa-v2: FORCE deps
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/containerd-shim-kasa-v2

bin/kasa-agent: FORCE deps
	$(STATIC) -o $@ ./cmd/kasa-agent

deps:
	hack/install-deps.sh

guest-image: deps bin/kasa-agent
	KERNEL_SOURCE=$(KERNEL_SOURCE) guest-image/build.sh bin/kasa-agent $(GUEST)

install: build guest-image
	install -D -m 0755 bin/kasa $(DESTDIR)$(PREFIX)/bin/kasa
	install -D -m 0755 bin/containerd-shim-kasa-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-kasa-v2
	install -D -m 0755 bin/kasa-agent $(DESTDIR)$(PREFIX)/libexec/kasa/kasa-agent
	install -D -m 0644 $(GUEST)/vmlinuz $(DESTDIR)$(PREFIX)/share/kasa/vmlinuz
	install -D -m 0644 $(GUEST)/initrd.img $(DESTDIR)$(PREFIX)/share/kasa/initrd.img
	install -D -m 0644 $(GUEST)/guest.img $(DESTDIR)$(PREFIX)/share/kasa/guest.img
	install -D -m 0644 $(GUEST)/manifest.json $(DESTDIR)$(PREFIX)/share/kasa/manifest.json
	install -d $(DESTDIR)$(PREFIX)/share/defaults/kasa
	sed 's#/usr/share/kasa/#$(PREFIX)/share/kasa/#g' configuration/configuration.toml \
		> $(DESTDIR)$(PREFIX)/share/defaults/kasa/configuration.toml
	install -D -m 0644 configuration/runtime/containerd-kata.toml $(DESTDIR)$(PREFIX)/share/kasa/containerd-kata.toml
	install -D -m 0644 configuration/runtime/containerd2-kata.toml $(DESTDIR)$(PREFIX)/share/kasa/containerd2-kata.toml
	sed 's#/usr/#$(PREFIX)/#g' configuration/runtime/crio-kata.conf > $(DESTDIR)$(PREFIX)/share/kasa/crio-kata.conf

# Registers the RuntimeClass handler "kata" with containerd's CRI plugin
# (hack/register-containerd.sh says how); restart containerd afterwards.
install-containerd-config:
	CONTAINERD_DIR=$(DESTDIR)/etc/containerd hack/register-containerd.sh

# The README's main command: install, check the host, then a pod in its own
# VM through containerd's CRI (handler kata, CNI bridge), beside runc.
demo: deps install cri-tools
	@echo "== kasa check"
	$(PREFIX)/bin/kasa check || true
	@echo "== a pod in a VM through containerd's CRI"
	$(GO) run ./hack/demo

test: deps build guest-image test-unit test-fuzz test-integration

# Tests named *Integration* and those under the integration build tag need
# root and QEMU and boot real VMs (TCG here); the rest need neither.
test-unit:
	$(GO) test -count=1 -skip Integration ./...

# Parsers of guest- and tenant-controlled data, each target briefly with its
# seed corpus (testdata/fuzz); `make fuzz` is the long run.
test-fuzz:
	hack/fuzz.sh 10s

fuzz:
	hack/fuzz.sh $(or $(FUZZTIME),5m)

# CI=true turns a missing prerequisite into a failure instead of a skip.
# The CRI-O tests take crio and pinns from KASA_TEST_CRIO_DIR (CRI-O is neither
# in Debian nor on the Go proxy; the project's CI places a build beside the clone).
# crictl and critest (cri-tools v1.30.0), built from the Go module proxy.
cri-tools:
	hack/install-cri-tools.sh bin

# containerd v2.4.2 (containerd, ctr, containerd-shim-runc-v2), built from the
# Go module proxy: the CRI tests run against it as well as Debian's 1.6.
.PHONY: containerd2
containerd2:
	hack/install-containerd2.sh bin/containerd2

test-integration: build guest-image cri-tools containerd2
	KASA_TEST_KERNEL=$(CURDIR)/$(GUEST)/vmlinuz $(GO) test -count=1 -run Integration -v ./agent/... ./hypervisor/... ./virtcontainers/...
	KASA_TEST_GUEST_DIR=$(CURDIR)/$(GUEST) KASA_TEST_CONTAINERD2=$(CURDIR)/bin/containerd2/containerd KASA_TEST_CRIO_DIR=$(KASA_TEST_CRIO_DIR) $(GO) test -count=1 -tags integration -timeout 60m -v ./test/integration/...

soak: build guest-image cri-tools
	KASA_SOAK=10m KASA_TEST_GUEST_DIR=$(CURDIR)/$(GUEST) $(GO) test -count=1 -tags integration -timeout 30m -run TestCRIExecSoak -v ./test/integration/

generate:
	hack/install-deps.sh --with-protoc
	hack/generate.sh

bench-boot: build guest-image
	KASA_TEST_GUEST_DIR=$(CURDIR)/$(GUEST) $(GO) run ./test/bench/boot

# Agent round trips and stream throughput: vhost-user-vsock beside virtio-serial, same guest.
bench-vsock: build guest-image
	KASA_TEST_GUEST_DIR=$(CURDIR)/$(GUEST) $(GO) run ./test/bench/vsock $(BENCH_VSOCK_FLAGS)

# ctr run --rm hello-world: Kasa beside runc, same containerd and image.
bench-run: build guest-image
	printf '[hypervisor.qemu]\nkernel = "%s"\ninitrd = "%s"\n' $(CURDIR)/$(GUEST)/vmlinuz $(CURDIR)/$(GUEST)/initrd.img > build/bench-kasa.toml
	$(GO) run ./test/bench/run -kasa-config $(CURDIR)/build/bench-kasa.toml $(BENCH_RUN_FLAGS)

# CRI pods through crictl: pod-ready latency, bursts of pods started at once,
# memory per idle pod; the kata handler (this build) beside runc, same
# containerd. BENCH_POD_FLAGS=-bursts=10,20,50 adds a burst of 50. Kasa pods
# start from a VM template as configured (on by default);
# BENCH_POD_FLAGS=-template=off measures cold boots, -template=on clones.
bench-pod: build guest-image cri-tools
	printf '[hypervisor.qemu]\nkernel = "%s"\ninitrd = "%s"\n' $(CURDIR)/$(GUEST)/vmlinuz $(CURDIR)/$(GUEST)/initrd.img > build/bench-kasa.toml
	$(GO) run ./test/bench/pod -shim-dir bin -kasa-config $(CURDIR)/build/bench-kasa.toml $(BENCH_POD_FLAGS)

clean:
	rm -rf bin build

FORCE:
