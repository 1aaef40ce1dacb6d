package api

// The VM template contract between the runtime and the agent (see
// docs/architecture.md, "VM templates"). A template VM boots with
// TemplateParam on its kernel command line and without the devices that
// belong to one pod (vsock, shared filesystem, NICs). Its agent prints
// TemplateReadyLine on the console once nothing but those devices is
// missing, then polls the PCI bus for them. The runtime saves the VM at that
// point; every clone restored from it has its own devices in the slots the
// template left empty, and its agent finds them on its next bus scan.
const (
	// TemplateParam marks a template boot on the guest kernel command line.
	TemplateParam = "kasa.template=1"
	// TemplateReadyLine is printed on the console when the template may be saved.
	TemplateReadyLine = "kasa-agent: template ready"
)
