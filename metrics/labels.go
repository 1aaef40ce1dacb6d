package metrics

import "github.com/prometheus/client_golang/prometheus"

// PodLabels name a sandbox in its series.
type PodLabels struct {
	SandboxID, PodName, PodNamespace, PodUID string
}

// The CRI annotations that name the pod: containerd's, then CRI-O's.
var podAnnotations = []struct{ name, namespace, uid string }{
	{"io.kubernetes.cri.sandbox-name", "io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-uid"},
	{"io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid"},
}

// maxPodLabel is Kubernetes' longest name (a DNS subdomain).
const maxPodLabel = 253

// PodLabelsFor returns the labels of sandbox id from the sandbox
// container's annotations. A value that is not what Kubernetes allows in a
// name or uid (at most 253 of [A-Za-z0-9._-]) is left out, not cut.
func PodLabelsFor(id string, annotations map[string]string) PodLabels {
	l := PodLabels{SandboxID: id}
	for _, a := range podAnnotations {
		if l.PodName == "" && l.PodNamespace == "" && l.PodUID == "" {
			l.PodName, l.PodNamespace, l.PodUID = k8sName(annotations[a.name]), k8sName(annotations[a.namespace]), k8sName(annotations[a.uid])
		}
	}
	return l
}

func k8sName(s string) string {
	if len(s) > maxPodLabel {
		return ""
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return ""
		}
	}
	return s
}

func (l PodLabels) prometheus() prometheus.Labels {
	out := prometheus.Labels{LabelSandboxID: l.SandboxID}
	for k, v := range map[string]string{LabelPodName: l.PodName, LabelPodNamespace: l.PodNamespace, LabelPodUID: l.PodUID} {
		if v != "" {
			out[k] = v
		}
	}
	return out
}
