package hostcheck

import (
	"github.com/kasa-runtime/kasa/configuration"
	"github.com/kasa-runtime/kasa/virtcontainers"
)

// checkTemplate says whether sandboxes start from a VM template, and which.
func checkTemplate(cfg *configuration.Config) Result {
	st := virtcontainers.TemplateStatus(cfg)
	r := Result{Name: "VM template", Status: Info}
	if !st.Enabled {
		r.Detail = "off (" + st.Status + "): every sandbox boots cold"
		return r
	}
	r.Detail = "on: key " + st.Key + " in " + st.Path + ": " + st.Status
	if st.Key == "" {
		r.Status = Warn
		r.Detail = "on, but no template can be made: " + st.Status + "; sandboxes boot cold"
	}
	return r
}
