package shimv2

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/configuration"
)

// [runtime] enable_debug makes the shim log at debug level.
func TestRuntimeEnableDebugRaisesShimLogLevel(t *testing.T) {
	old := logrus.GetLevel()
	t.Cleanup(func() { logrus.SetLevel(old) })
	for _, debug := range []bool{false, true} {
		logrus.SetLevel(logrus.InfoLevel)
		conf := filepath.Join(t.TempDir(), "configuration.toml")
		body := "[hypervisor.qemu]\n[runtime]\nenable_debug = false\n"
		if debug {
			body = "[hypervisor.qemu]\n[runtime]\nenable_debug = true\n"
		}
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Setenv(configuration.EnvConfigFile, conf)
		if _, err := loadConfig(context.Background(), &taskAPI.CreateTaskRequest{}, &specs.Spec{}); err != nil {
			t.Fatal(err)
		}
		if got := logrus.GetLevel() == logrus.DebugLevel; got != debug {
			t.Errorf("enable_debug = %v: shim log level %v", debug, logrus.GetLevel())
		}
	}
}
