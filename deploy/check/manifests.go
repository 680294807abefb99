package check

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Manifests is the decoded deploy/k8s folder, one slice per kind. Every
// object's Source is in Sources, keyed by Kind/namespace/name.
type Manifests struct {
	Namespaces  []*corev1.Namespace
	ConfigMaps  []*corev1.ConfigMap
	Secrets     []*corev1.Secret
	Deployments []*appsv1.Deployment
	Services    []*corev1.Service
	Sources     map[string]string // "Kind/ns/name" -> "file#doc"
}

// LoadManifests decodes every *.yaml file in dir (see DecodeManifests).
func LoadManifests(dir string) (*Manifests, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no *.yaml manifests", dir)
	}
	srcs := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		srcs[filepath.Base(f)] = b
	}
	return DecodeManifests(srcs)
}

// DecodeManifests decodes the YAML documents of each file (name -> content)
// strictly into the k8s.io/api type of its kind: an unknown or misspelt
// field, a duplicate key, a value of the wrong type or an unparsable
// quantity is an error naming file, document and field. Kinds other than
// Namespace, ConfigMap, Secret, Deployment (apps/v1) and Service are errors
// too, so a new manifest needs a decoder here.
func DecodeManifests(files map[string][]byte) (*Manifests, error) {
	m := &Manifests{Sources: map[string]string{}}
	var errs []error
	for _, name := range sortedKeys(files) {
		for i, doc := range splitYAML(files[name]) {
			where := fmt.Sprintf("%s#%d", name, i+1)
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
				continue
			}
			var obj interface {
				GetName() string
				GetNamespace() string
			}
			gv := tm.APIVersion + " " + tm.Kind
			switch gv {
			case "v1 Namespace":
				o := &corev1.Namespace{}
				m.Namespaces, obj = append(m.Namespaces, o), o
			case "v1 ConfigMap":
				o := &corev1.ConfigMap{}
				m.ConfigMaps, obj = append(m.ConfigMaps, o), o
			case "v1 Secret":
				o := &corev1.Secret{}
				m.Secrets, obj = append(m.Secrets, o), o
			case "apps/v1 Deployment":
				o := &appsv1.Deployment{}
				m.Deployments, obj = append(m.Deployments, o), o
			case "v1 Service":
				o := &corev1.Service{}
				m.Services, obj = append(m.Services, o), o
			default:
				errs = append(errs, fmt.Errorf("%s: apiVersion %q kind %q: not a kind this check decodes (expected v1 Namespace, ConfigMap, Secret, Service or apps/v1 Deployment)", where, tm.APIVersion, tm.Kind))
				continue
			}
			if err := decodeStrict(doc, obj); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", where, tm.Kind, err))
				continue
			}
			if obj.GetName() == "" {
				errs = append(errs, fmt.Errorf("%s: %s without metadata.name", where, tm.Kind))
			}
			m.Sources[tm.Kind+"/"+obj.GetNamespace()+"/"+obj.GetName()] = where
		}
	}
	return m, errors.Join(errs...)
}

// decodeStrict decodes one YAML document into obj the way the API server
// does in strict mode: YAML to JSON (duplicate keys are errors), then JSON
// with case-sensitive field names (encoding/json alone would accept
// readOnlyRootFileSystem for readOnlyRootFilesystem) and unknown or
// duplicate fields as errors naming the field's full path.
func decodeStrict(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowUnknownFields, kjson.DisallowDuplicateFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// splitYAML splits a multi-document YAML file on "---" lines, dropping
// documents that hold only comments or blanks.
func splitYAML(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range bytes.Split(append([]byte("\n"), b...), []byte("\n---")) {
		empty := true
		for _, l := range bytes.Split(d, []byte("\n")) {
			if t := bytes.TrimSpace(l); len(t) > 0 && t[0] != '#' {
				empty = false
			}
		}
		if !empty {
			docs = append(docs, d)
		}
	}
	return docs
}

// Check applies the rules of docs/operator.md ("Kubernetes") to the set:
// everything in namespace roam; one Deployment whose selector matches its
// pods; a non-root, read-only, capability-free container (userspace NAT);
// readiness on /readyz and liveness on /healthz of the metrics port;
// requests and limits for cpu and memory; every mount backed by a volume
// and every ConfigMap/Secret volume by an object in the set (the Secret
// roam-state by its example); a LoadBalancer Service with
// externalTrafficPolicy Local carrying 4433/UDP and 4433/TCP to container
// ports of the same protocol; and the ConfigMap's server.toml consistent
// with all of it (nat, ports, paths under the right mounts).
func (m *Manifests) Check() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	const ns = "roam"
	if len(m.Namespaces) != 1 || m.Namespaces[0].Name != ns {
		bad("expected exactly one Namespace, named %q", ns)
	}
	for key := range m.Sources {
		if !strings.HasPrefix(key, "Namespace/") && strings.Split(key, "/")[1] != ns {
			bad("%s (%s): expected metadata.namespace %q", key, m.Sources[key], ns)
		}
	}
	if len(m.Deployments) != 1 {
		return errors.Join(append(errs, fmt.Errorf("expected exactly one Deployment, found %d", len(m.Deployments)))...)
	}
	d := m.Deployments[0]
	where := m.Sources["Deployment/"+d.Namespace+"/"+d.Name]
	pod := d.Spec.Template
	if d.Spec.Selector == nil || len(d.Spec.Selector.MatchLabels) == 0 {
		bad("%s: spec.selector.matchLabels is empty", where)
	} else if !labelsMatch(d.Spec.Selector.MatchLabels, pod.Labels) {
		bad("%s: spec.selector %v does not match the pod labels %v", where, d.Spec.Selector.MatchLabels, pod.Labels)
	}
	if len(pod.Spec.Containers) != 1 {
		return errors.Join(append(errs, fmt.Errorf("%s: expected one container, found %d", where, len(pod.Spec.Containers)))...)
	}
	c := pod.Spec.Containers[0]
	cw := fmt.Sprintf("%s: container %s", where, c.Name)
	if tag := c.Image[strings.LastIndex(c.Image, "/")+1:]; !strings.Contains(tag, ":") && !strings.Contains(c.Image, "@") || strings.HasSuffix(c.Image, ":latest") {
		bad("%s: image %q: pin a version tag or digest", cw, c.Image)
	}
	psc := pod.Spec.SecurityContext
	sc := c.SecurityContext
	switch {
	case sc == nil:
		bad("%s: no securityContext", cw)
	default:
		// The container's value, where set, overrides the pod's.
		nonRoot := sc.RunAsNonRoot
		if nonRoot == nil && psc != nil {
			nonRoot = psc.RunAsNonRoot
		}
		if !isTrue(nonRoot) {
			bad("%s: securityContext.runAsNonRoot must be true", cw)
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			bad("%s: securityContext.readOnlyRootFilesystem must be true", cw)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			bad("%s: securityContext.allowPrivilegeEscalation must be false", cw)
		}
		if isTrue(sc.Privileged) {
			bad("%s: securityContext.privileged must not be set", cw)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			bad("%s: securityContext.capabilities.drop must hold ALL", cw)
		} else if len(sc.Capabilities.Add) > 0 {
			bad("%s: securityContext.capabilities.add %v: userspace NAT needs none", cw, sc.Capabilities.Add)
		}
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		bad("%s: pod securityContext.seccompProfile.type must be RuntimeDefault", where)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		bad("%s: pod securityContext.runAsUser 0 is root", where)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			bad("%s: resources.requests.%s is missing", cw, r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			bad("%s: resources.limits.%s is missing", cw, r)
		}
	}
	ports := map[string]corev1.ContainerPort{}
	for _, p := range c.Ports {
		ports[p.Name] = p
	}
	// portOf resolves a probe's or Service's target port (a name, or a
	// number of the given protocol) to the container port.
	portOf := func(ip intstr.IntOrString, proto corev1.Protocol) (corev1.ContainerPort, bool) {
		if ip.Type == intstr.String {
			cp, ok := ports[ip.StrVal]
			return cp, ok
		}
		for _, cp := range ports {
			if cp.ContainerPort == ip.IntVal && protocolOf(cp.Protocol) == proto {
				return cp, true
			}
		}
		return corev1.ContainerPort{}, false
	}
	probe := func(what string, p *corev1.Probe, path string) {
		switch {
		case p == nil:
			bad("%s: no %s", cw, what)
		case p.HTTPGet == nil:
			bad("%s: %s: expected httpGet %s on the metrics port", cw, what, path)
		default:
			if p.HTTPGet.Path != path {
				bad("%s: %s.httpGet.path %q: expected %s", cw, what, p.HTTPGet.Path, path)
			}
			if cp, ok := portOf(p.HTTPGet.Port, corev1.ProtocolTCP); !ok || cp.Name != "metrics" || protocolOf(cp.Protocol) != corev1.ProtocolTCP {
				bad("%s: %s.httpGet.port %s: expected the TCP container port named metrics", cw, what, p.HTTPGet.Port.String())
			}
		}
	}
	probe("readinessProbe", c.ReadinessProbe, "/readyz")
	probe("livenessProbe", c.LivenessProbe, "/healthz")

	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = v
		switch {
		case v.ConfigMap != nil:
			if m.configMap(v.ConfigMap.Name) == nil {
				bad("%s: volume %s: ConfigMap %q is not in deploy/k8s", where, v.Name, v.ConfigMap.Name)
			}
		case v.Secret != nil:
			if m.secret(v.Secret.SecretName) == nil {
				bad("%s: volume %s: Secret %q has no example in deploy/k8s", where, v.Name, v.Secret.SecretName)
			}
		}
	}
	mounts := map[string]corev1.VolumeMount{} // mountPath -> mount
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok {
			bad("%s: volumeMount %s: no volume of that name", cw, vm.Name)
			continue
		}
		mounts[vm.MountPath] = vm
		if vm.SubPath != "" {
			if !m.volumeHasKey(v, vm.SubPath) {
				bad("%s: volumeMount %s: subPath %q is not a key of the volume's %s", cw, vm.MountPath, vm.SubPath, volumeSource(v))
			}
		}
	}

	// The Service.
	if len(m.Services) != 1 {
		bad("expected exactly one Service, found %d", len(m.Services))
	}
	for _, s := range m.Services {
		sw := m.Sources["Service/"+s.Namespace+"/"+s.Name]
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			bad("%s: spec.type %q: expected LoadBalancer", sw, s.Spec.Type)
		}
		if s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
			bad("%s: spec.externalTrafficPolicy %q: expected Local (client addresses must reach the server unchanged)", sw, s.Spec.ExternalTrafficPolicy)
		}
		if !labelsMatch(s.Spec.Selector, pod.Labels) || len(s.Spec.Selector) == 0 {
			bad("%s: spec.selector %v does not select the Deployment's pods %v", sw, s.Spec.Selector, pod.Labels)
		}
		seen := map[corev1.Protocol]bool{}
		for _, p := range s.Spec.Ports {
			proto := protocolOf(p.Protocol)
			cp, ok := portOf(p.TargetPort, proto)
			if !ok || protocolOf(cp.Protocol) != proto {
				bad("%s: port %s (%d/%s): targetPort %s is no %s container port", sw, p.Name, p.Port, proto, p.TargetPort.String(), proto)
			}
			if p.Port == 4433 {
				seen[proto] = true
			}
		}
		for _, proto := range []corev1.Protocol{corev1.ProtocolUDP, corev1.ProtocolTCP} {
			if !seen[proto] {
				bad("%s: no port 4433/%s", sw, proto)
			}
		}
	}

	// The config file and what it must agree with.
	var cfgMount *corev1.VolumeMount
	for _, vm := range mounts {
		if strings.HasSuffix(vm.MountPath, ".toml") {
			vm := vm
			cfgMount = &vm
		}
	}
	if i := slices.Index(c.Args, "--config"); i < 0 || i+1 >= len(c.Args) {
		bad("%s: args %v: expected --config FILE", cw, c.Args)
	} else if cfgMount == nil || cfgMount.MountPath != c.Args[i+1] {
		bad("%s: --config %s is not a mounted file", cw, c.Args[i+1])
	} else if cm := m.configMap(volumes[cfgMount.Name].ConfigMap.Name); cm != nil {
		cmw := m.Sources["ConfigMap/"+cm.Namespace+"/"+cm.Name]
		cfg, err := CheckConfig(cmw+" data."+cfgMount.SubPath, []byte(cm.Data[cfgMount.SubPath]), "server")
		if err != nil {
			errs = append(errs, err)
		}
		if cfg != nil {
			errs = append(errs, m.checkServerConfig(cmw, cfg.Table, ports, mounts, volumes)...)
		}
	}
	return errors.Join(errs...)
}

// checkServerConfig checks the ConfigMap's [server] table against the pod.
func (m *Manifests) checkServerConfig(where string, t map[string]any, ports map[string]corev1.ContainerPort, mounts map[string]corev1.VolumeMount, volumes map[string]corev1.Volume) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(where+": "+format, args...)) }
	if t["nat"] != "userspace" {
		bad("server.nat %v: expected \"userspace\" (the pod has no NET_ADMIN and no /dev/net/tun)", t["nat"])
	}
	portIs := func(key, portName string) {
		s, _ := t[key].(string)
		ap, err := netip.ParseAddrPort(s)
		cp, ok := ports[portName]
		switch {
		case err != nil:
			bad("server.%s %q: expected IP:PORT", key, s)
		case !ok || int32(ap.Port()) != cp.ContainerPort:
			bad("server.%s %q: port is not the container port %s (%d)", key, s, portName, cp.ContainerPort)
		case ap.Addr().IsLoopback():
			bad("server.%s %q: loopback is unreachable from the kubelet and the Service", key, s)
		}
	}
	portIs("listen", "quic")
	portIs("metrics", "metrics")
	if _, ok := ports["https"]; ok && ports["https"].ContainerPort != ports["quic"].ContainerPort {
		bad("the https container port must have the quic port's number (the server serves TCP on the UDP port's number)")
	}
	// mountFor returns the mount a path lies in (the deepest).
	mountFor := func(p string) (corev1.VolumeMount, bool) {
		var best corev1.VolumeMount
		found := false
		for mp, vm := range mounts {
			if (p == mp || strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best.MountPath) {
				best, found = vm, true
			}
		}
		return best, found
	}
	if sd, ok := t["state_dir"].(string); !ok {
		bad("server.state_dir is not set (the default is not on a mounted volume)")
	} else if vm, ok := mountFor(sd); !ok || vm.MountPath != sd || volumes[vm.Name].EmptyDir == nil || vm.ReadOnly {
		bad("server.state_dir %q: expected the mount path of a writable emptyDir (the server writes its pin there)", sd)
	} else {
		for _, f := range []string{"cert.pem", "key.pem", "secret"} {
			fm, ok := mounts[path.Join(sd, f)]
			if !ok || volumes[fm.Name].Secret == nil || fm.SubPath != f {
				bad("server.state_dir %q: %s is not projected into it from the Secret (a new one would be generated and lost with the pod)", sd, f)
			}
		}
	}
	fileKeys := []string{"tokens", "revocations", "status_socket"}
	var files []string
	for _, k := range fileKeys {
		if s, ok := t[k].(string); ok {
			files = append(files, k+"="+s)
		}
	}
	for _, s := range strs(t["token_key"]) {
		files = append(files, "token_key="+s)
	}
	for _, kv := range files {
		k, p, _ := strings.Cut(kv, "=")
		vm, ok := mountFor(p)
		if !ok {
			bad("server.%s %q: not on a mounted volume (the root file system is read-only)", k, p)
			continue
		}
		v := volumes[vm.Name]
		if k == "status_socket" {
			if v.EmptyDir == nil || vm.ReadOnly {
				bad("server.%s %q: expected a writable emptyDir", k, p)
			}
			continue
		}
		rel := strings.TrimPrefix(p, strings.TrimSuffix(vm.MountPath, "/")+"/")
		if vm.SubPath != "" {
			rel = vm.SubPath
		}
		if !m.volumeHasKey(v, rel) {
			bad("server.%s %q: %q is not a key of the volume's %s", k, p, rel, volumeSource(v))
		}
	}
	return errs
}

func (m *Manifests) configMap(name string) *corev1.ConfigMap {
	for _, c := range m.ConfigMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (m *Manifests) secret(name string) *corev1.Secret {
	for _, s := range m.Secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// volumeHasKey reports whether a ConfigMap or Secret volume's object in the
// set holds key (in data or stringData).
func (m *Manifests) volumeHasKey(v corev1.Volume, key string) bool {
	switch {
	case v.ConfigMap != nil:
		if c := m.configMap(v.ConfigMap.Name); c != nil {
			_, ok := c.Data[key]
			return ok
		}
	case v.Secret != nil:
		if s := m.secret(v.Secret.SecretName); s != nil {
			_, ok := s.StringData[key]
			_, ok2 := s.Data[key]
			return ok || ok2
		}
	}
	return false
}

func volumeSource(v corev1.Volume) string {
	switch {
	case v.ConfigMap != nil:
		return "ConfigMap " + v.ConfigMap.Name
	case v.Secret != nil:
		return "Secret " + v.Secret.SecretName
	}
	return "volume " + v.Name
}

func labelsMatch(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// protocolOf is p with Kubernetes' default (TCP) filled in.
func protocolOf(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func isTrue(b *bool) bool { return b != nil && *b }
