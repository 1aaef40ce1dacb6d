// Command kasa is the operator's tool: check the host, show the effective
// configuration, serve the node's metrics, open a sandbox's debug console,
// print versions.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/kasa-runtime/kasa/agent/api"
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/version"
	"github.com/kasa-runtime/kasa/virtcontainers"
	"github.com/kasa-runtime/kasa/virtcontainers/hostcheck"
)

const usage = `kasa: operate the Kasa pod-per-VM runtime

usage: kasa [--config FILE] COMMAND

commands:
  check     check that this host can run Kasa sandboxes (QEMU, guest image,
            KVM or TCG fallback, the VMM's confinement: unprivileged uid,
            seccomp, virtiofsd; vsock, cgroups, tap + tc); exits 1 with one
            remedy line per failed requirement
  env       show which configuration file and config.d drop-ins are used,
            their warnings, and every effective setting with the file it
            came from (JSON: key, value, origin)
  selftest  boot a throwaway VM with the configuration, show what its agent
            reports beside the host, power it off (needs root)
  runtimeclass
            boot an idle sandbox as a pod gets one, measure what it costs the
            node (PSS of QEMU, virtiofsd and the runtime; QEMU's CPU) and
            print a RuntimeClass "kata" whose overhead.podFixed says so (needs
            root; kubectl apply -f the output)
  exec SANDBOX-ID
            open a root shell in the sandbox's guest (its VM, not the host)
            on this terminal, over the debug console; SANDBOX-ID may be a
            unique prefix (crictl pods shows it). Needs [agent.kata]
            debug_console_enabled = true when the pod started, and root.
            stdin may be a pipe: "echo 'uname -r' | kasa exec ID"
  reap      remove what dead shims left: the VM, mounts, taps, cgroup and
            state of every sandbox whose shim is gone (needs root; each
            shim's reaper and the next shim do it too)
  template create|list|remove [KEY...]
            VM templates ([factory] enable_template): create boots and saves
            the template of the configuration now (replacing any); list shows
            every template in template_path, its key, size and whether it is
            usable; remove deletes the configuration's template, or those
            named by KEY (running clones keep their own memory)
  metrics [SANDBOX-ID]
            print once what monitor serves (Prometheus text), or only that
            sandbox's series; needs root
  monitor [--listen ADDR] [--shim-timeout DURATION]
            serve Prometheus metrics at http://ADDR/metrics (default
            127.0.0.1:8090): every running sandbox's, gathered from its
            shim's socket /run/kasa/sbs/<id>/metrics.sock, and the node's
            (sandboxes running, starts and failed starts by step); a shim
            that does not answer within --shim-timeout (5s) is left out of
            that scrape; needs root; metric list: docs/metrics.md
  version   print the runtime and agent API versions

options:
  --config FILE   configuration file (default search: $KASA_CONF_FILE,
                  /etc/kasa/configuration.toml,
                  /usr/share/defaults/kasa/configuration.toml, built-in defaults);
                  the *.toml files of config.d beside it (/etc/kasa/config.d
                  for the built-in defaults) are merged over it in name order
  --debug         log the runtime's steps (warnings are always shown)

guest logs:
  the agent's and the guest kernel's log lines go to the shim's log, i.e.
  containerd's (journalctl -u containerd), with the sandbox id and
  source=agent or source=kernel; [agent.kata] enable_debug = true makes them
  verbose

running pods:
  containerd  runtime type io.containerd.kasa.v2 (containerd-shim-kasa-v2 on
              PATH); for CRI, RuntimeClass handler "kata" from
              /usr/share/kasa/containerd-kata.toml (containerd 1.x) or
              containerd2-kata.toml (2.x); hack/register-containerd.sh puts
              the right one in place
  CRI-O       runtime_type "vm", /usr/share/kasa/crio-kata.conf
  single      ctr run --runtime io.containerd.kasa.v2 IMAGE ID CMD
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kasa", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // printed below, to stdout for --help
	configPath := fs.String("config", "", "configuration file")
	debug := fs.Bool("debug", false, "log the runtime's own steps")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprint(stderr, usage)
		return 2
	}
	logrus.SetOutput(stderr)
	logrus.SetLevel(logrus.WarnLevel)
	if *debug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch cmd := fs.Arg(0); cmd {
	case "version":
		fmt.Fprintf(stdout, "kasa %s (commit %s), agent API v%d\n", version.Version, orUnknown(version.Commit), api.APIVersion)
		return 0
	case "check":
		return check(*configPath, stdout, stderr)
	case "env":
		return env(*configPath, stdout, stderr)
	case "selftest":
		return selftest(*configPath, stdout, stderr)
	case "runtimeclass":
		return runtimeclass(*configPath, stdout, stderr)
	case "exec":
		if fs.NArg() != 2 {
			fmt.Fprintf(stderr, "kasa exec: want one sandbox id (or a unique prefix)\n\n%s", usage)
			return 2
		}
		return execConsole(fs.Arg(1), os.Stdin, stdout, stderr)
	case "template":
		return templateCmd(*configPath, fs.Args()[1:], stdout, stderr)
	case "metrics":
		return printMetrics(fs.Args()[1:], stdout, stderr)
	case "monitor":
		return monitor(fs.Args()[1:], stdout, stderr)
	case "reap":
		reaped, err := virtcontainers.ReapOrphans(context.Background())
		for _, id := range reaped {
			fmt.Fprintf(stdout, "reaped sandbox %s\n", id)
		}
		if err != nil {
			fmt.Fprintf(stderr, "kasa: %v\n", err)
			return 1
		}
		return 0
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "kasa: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func loadConfig(path string, stderr io.Writer) (*configuration.Config, bool) {
	cfg, warnings, err := configuration.Load(path)
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if err != nil {
		fmt.Fprintf(stderr, "kasa: %v\n", err)
		return nil, false
	}
	return cfg, true
}

func check(path string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return 1
	}
	fmt.Fprintf(stdout, "configuration: %s\n", describeSource(cfg))
	results := hostcheck.Run(context.Background(), cfg)
	for _, r := range results {
		fmt.Fprintf(stdout, "%-5s %-16s %s\n", r.Status, r.Name, r.Detail)
	}
	if hostcheck.Failed(results) {
		fmt.Fprintln(stdout, "\nto fix:")
		for _, r := range results {
			if r.Status == hostcheck.Fail {
				fmt.Fprintf(stdout, "  %s: %s\n", r.Name, r.Remedy)
			}
		}
		return 1
	}
	fmt.Fprintln(stdout, "\nthis host can run Kasa sandboxes")
	return 0
}

func describeSource(cfg *configuration.Config) string {
	if cfg.Path == "" {
		return "built-in defaults"
	}
	return cfg.Path
}

func env(path string, stdout, stderr io.Writer) int {
	cfg, ok := loadConfig(path, stderr)
	if !ok {
		return 1
	}
	out := struct {
		Source   string                       `json:"source"`
		DropIns  []string                     `json:"drop_ins"`
		Settings []configuration.Setting      `json:"settings"`
		Template virtcontainers.TemplateState `json:"template"`
	}{describeSource(cfg), cfg.DropIns, cfg.Settings(), virtcontainers.TemplateStatus(cfg)}
	if out.DropIns == nil {
		out.DropIns = []string{}
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintf(stderr, "kasa: %v\n", err)
		return 1
	}
	return 0
}
