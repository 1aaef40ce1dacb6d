package api

// The VM template contract between the runtime and the agent (see
// docs/architecture.md, "VM templates"). A template VM boots with
// TemplateParam on its kernel command line and without the devices that
// belong to one pod (vsock, shared filesystem, NICs). Its agent prints
// TemplateReadyLine on the console once nothing but those devices is
// missing, then waits for CloneKickLine on the console's input. The runtime
// saves the VM at that point; a clone restored from it has its own devices
// in the slots the template left empty, and once it runs again the runtime
// writes CloneKickLine to its console. Only then does the agent scan the PCI
// bus: a scan that began before the save could have passed an empty slot
// that holds a clone's device now.
const (
	// TemplateParam marks a template boot on the guest kernel command line.
	TemplateParam = "kasa.template=1"
	// TemplateReadyLine is printed on the console when the template may be saved.
	TemplateReadyLine = "kasa-agent: template ready"
	// CloneKickLine is written to a clone's console input (without its
	// newline) once the clone runs with its own devices.
	CloneKickLine = "kasa-clone"
)
