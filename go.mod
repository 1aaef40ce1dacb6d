module github.com/kasa-runtime/kasa

go 1.26.0

require (
	github.com/BurntSushi/toml v1.5.0
	github.com/containerd/containerd v1.7.35
	github.com/containerd/log v0.1.0
	github.com/containerd/ttrpc v1.2.10
	github.com/mdlayher/vsock v1.4.0
	github.com/sirupsen/logrus v1.9.4
	golang.org/x/sys v0.49.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/containerd/errdefs v0.3.0 // indirect
	github.com/mdlayher/socket v0.8.0 // indirect
	github.com/stretchr/testify v1.11.1 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sync v0.24.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)
