package check

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	k8sDir        = "../k8s"
	containerfile = "../container/Containerfile"
	serverTOML    = "../config/server.toml"
	clientTOML    = "../config/client.toml"
)

func read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestManifests(t *testing.T) {
	m, err := LoadManifests(k8sDir)
	if err != nil {
		t.Fatalf("decoding deploy/k8s:\n%v", err)
	}
	if err := m.Check(); err != nil {
		t.Fatalf("deploy/k8s:\n%v", err)
	}
	if len(m.Sources) != 5 {
		t.Errorf("decoded %d objects, want 5 (namespace, configmap, secret example, deployment, service): %v", len(m.Sources), m.Sources)
	}
}

// k8sFiles returns deploy/k8s's files with one replacement applied (old
// must occur in file).
func k8sFiles(t *testing.T, file, old, new string) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, p := range paths {
		files[filepath.Base(p)] = read(t, p)
	}
	src, ok := files[file]
	if !ok {
		t.Fatalf("no %s in %s", file, k8sDir)
	}
	if !strings.Contains(string(src), old) {
		t.Fatalf("%s does not contain %q: the test case is out of date", file, old)
	}
	files[file] = []byte(strings.Replace(string(src), old, new, 1))
	return files
}

// TestManifestRules breaks the real manifests one way at a time and expects
// the check to name the problem: every rule can fail.
func TestManifestRules(t *testing.T) {
	tests := []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "deployment.yaml", "  replicas: 1", "  replicas: 1\n  replica: 1", `unknown field "spec.replica"`},
		{"misspelt nested field", "deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", `unknown field "spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem"`},
		{"wrong type", "service.yaml", "port: 4433\n      targetPort: quic", "port: \"udp\"\n      targetPort: quic", "Service"},
		{"bad quantity", "deployment.yaml", "memory: 512Mi", "memory: 512MiB", "quantities must match"},
		{"duplicate key", "namespace.yaml", "  name: roam\n", "  name: roam\n  name: roam2\n", "already set"},
		{"unknown kind", "namespace.yaml", "kind: Namespace", "kind: Namespaces", "not a kind this check decodes"},
		{"root filesystem writable", "deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem must be true"},
		{"capability added", "deployment.yaml", `drop: ["ALL"]`, `drop: ["ALL"]
              add: ["NET_ADMIN"]`, "userspace NAT needs none"},
		{"capabilities kept", "deployment.yaml", `drop: ["ALL"]`, `drop: ["NET_RAW"]`, "capabilities.drop must hold ALL"},
		{"privilege escalation", "deployment.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation must be false"},
		{"root", "deployment.yaml", "            runAsNonRoot: true\n", "            runAsNonRoot: false\n", "runAsNonRoot must be true"},
		{"readiness path", "deployment.yaml", "path: /readyz", "path: /ready", `readinessProbe.httpGet.path "/ready"`},
		{"liveness port", "deployment.yaml", "path: /healthz\n              port: metrics", "path: /healthz\n              port: https", "livenessProbe.httpGet.port https"},
		{"no memory limit", "deployment.yaml", "              memory: 512Mi\n", "", "resources.limits.memory is missing"},
		{"latest image", "deployment.yaml", "roam:0.1.0", "roam:latest", "pin a version tag"},
		{"selector mismatch", "deployment.yaml", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: roam", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: roamx", "does not match the pod labels"},
		{"cluster traffic policy", "service.yaml", "\n  externalTrafficPolicy: Local", "\n  externalTrafficPolicy: Cluster", "expected Local"},
		{"cluster IP", "service.yaml", "type: LoadBalancer", "type: ClusterIP", "expected LoadBalancer"},
		{"no TCP port", "service.yaml", "    - name: https\n      protocol: TCP\n      port: 4433", "    - name: https\n      protocol: TCP\n      port: 443", "no port 4433/TCP"},
		{"target port protocol", "service.yaml", "targetPort: quic", "targetPort: https", "is no UDP container port"},
		{"wrong namespace", "service.yaml", "namespace: roam", "namespace: default", `expected metadata.namespace "roam"`},
		{"missing configmap", "deployment.yaml", "name: roam-server\n        - name: state-secret", "name: roam-srv\n        - name: state-secret", `ConfigMap "roam-srv" is not in deploy/k8s`},
		{"missing volume", "deployment.yaml", "        - name: run\n          emptyDir:", "        - name: runx\n          emptyDir:", "volumeMount run: no volume"},
		{"subPath not in secret", "deployment.yaml", "subPath: key.pem", "subPath: tls.key", `subPath "tls.key" is not a key`},
		{"kernel NAT in the pod", "configmap.yaml", `nat = "userspace"`, `nat = "kernel"`, "expected \"userspace\""},
		{"metrics on loopback", "configmap.yaml", `metrics = "0.0.0.0:9090"`, `metrics = "127.0.0.1:9090"`, "loopback is unreachable"},
		{"metrics port mismatch", "configmap.yaml", `metrics = "0.0.0.0:9090"`, `metrics = "0.0.0.0:9100"`, "not the container port metrics"},
		{"listen port mismatch", "configmap.yaml", `listen = "0.0.0.0:4433"`, `listen = "0.0.0.0:443"`, "not the container port quic"},
		{"state dir not mounted", "configmap.yaml", `state_dir = "/var/lib/roam"`, `state_dir = "/var/lib/roam-state"`, "expected the mount path of a writable emptyDir"},
		{"tokens not in secret", "configmap.yaml", `tokens = "/etc/roam/state/tokens"`, `tokens = "/etc/roam/state/tokens.txt"`, `"tokens.txt" is not a key`},
		{"status socket on root fs", "configmap.yaml", `status_socket = "/run/roam/server.sock"`, `status_socket = "/tmp/status.sock"`, "not on a mounted volume"},
		{"unknown config key", "configmap.yaml", `log_level = "info"`, `log_levle = "info"`, `key "server.log_levle": unknown key`},
		{"config syntax", "configmap.yaml", `log_level = "info"`, `log_level = "info`, "data.server.toml:"},
		{"secret projection missing", "deployment.yaml", "subPath: secret", "subPath: tokens", "secret is not projected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := k8sFiles(t, tt.file, tt.old, tt.new)
			m, err := DecodeManifests(files)
			if err == nil {
				err = m.Check()
			}
			if err == nil {
				t.Fatalf("no error; want one containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error does not contain %q:\n%v", tt.want, err)
			}
		})
	}
}

func TestContainerfile(t *testing.T) {
	if err := LintContainerfile(containerfile, read(t, containerfile)); err != nil {
		t.Fatalf("deploy/container/Containerfile:\n%v", err)
	}
}

func TestContainerfileRules(t *testing.T) {
	src := string(read(t, containerfile))
	tests := []struct {
		name, old, new, want string
	}{
		{"unpinned final", "FROM gcr.io/distroless/static-debian12:nonroot", "FROM gcr.io/distroless/static-debian12", "pin the image to a tag"},
		{"latest", "FROM gcr.io/distroless/static-debian12:nonroot", "FROM gcr.io/distroless/static-debian12:latest", "the tag latest is not a pin"},
		{"unpinned ARG", "ARG GO_VERSION=1.26", "ARG GO_VERSION", "ARG GO_VERSION has no default"},
		{"root user", "USER 65532:65532", "USER 0:0", "must run as a non-root user"},
		{"no user", "USER 65532:65532\n", "", "the final stage has no USER"},
		{"no udp", "EXPOSE 4433/udp 4433/tcp", "EXPOSE 4433/tcp", "missing 4433/udp"},
		{"no tcp", "EXPOSE 4433/udp 4433/tcp", "EXPOSE 4433/udp", "missing 4433/tcp"},
		{"no healthcheck", "HEALTHCHECK --interval", "# HEALTHCHECK --interval", "no HEALTHCHECK"},
		{"no generate", "RUN go generate ./web \\\n &&", "RUN true \\\n &&", "go generate ./web"},
		{"other package", "-o /out/roam ./cmd/roam", "-o /out/roam ./cmd/bench", "no build stage runs `go build ... ./cmd/roam`"},
		{"cgo", "&& CGO_ENABLED=0 go build", "&& go build", "without CGO_ENABLED=0"},
		{"shell entrypoint", `ENTRYPOINT ["/usr/local/bin/roam"]`, "ENTRYPOINT /usr/local/bin/roam", "use the exec form"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(src, tt.old) {
				t.Fatalf("Containerfile does not contain %q: the test case is out of date", tt.old)
			}
			err := LintContainerfile("Containerfile", []byte(strings.Replace(src, tt.old, tt.new, 1)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseContainerfile(t *testing.T) {
	tests := []struct {
		name, src string
		want      []Instruction
		wantErr   string
	}{
		{"continuation and comments", "ARG A=1\nFROM x:1 AS b\nRUN a \\\n  # inner comment\n  b\nfrom y:2\nuser 1\n",
			[]Instruction{{"ARG", "A=1", 1, -1}, {"FROM", "x:1 AS b", 2, 0}, {"RUN", "a  b", 3, 0}, {"FROM", "y:2", 6, 1}, {"USER", "1", 7, 1}}, ""},
		{"no FROM", "RUN true\n", nil, "before the first FROM"},
		{"empty", "# nothing\n", nil, "no FROM"},
		{"dangling continuation", "FROM x:1\nRUN a \\\n", nil, "line continuation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseContainerfile([]byte(tt.src))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v; want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("instruction %d: got %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestConfigs(t *testing.T) {
	if _, err := CheckConfig(serverTOML, read(t, serverTOML), "server"); err != nil {
		t.Errorf("%v", err)
	}
	cfg, err := CheckConfig(clientTOML, read(t, clientTOML), "client")
	if err != nil {
		t.Errorf("%v", err)
	}
	if cfg != nil && cfg.Table["server"] == nil {
		t.Errorf("client.toml: no server key decoded: %v", cfg.Table)
	}
}

func TestConfigRules(t *testing.T) {
	tests := []struct {
		name, role, src, want string
	}{
		{"ok", "server", "version = 1\n[server]\nnat = \"userspace\"\n", ""},
		{"no version", "server", "[server]\nnat = \"kernel\"\n", `key "version": expected version = 1`},
		{"version 2", "client", "version = 2\n[client]\nserver = \"a:1\"\n", `key "version"`},
		{"syntax names line", "server", "version = 1\n[server]\nnat = \"kernel\n", "x:3:"},
		{"unknown key", "server", "version = 1\n[server]\nlisten_addr = \"0.0.0.0:1\"\n", `key "server.listen_addr": unknown key`},
		{"client key in server", "server", "version = 1\n[server]\npin = \"x\"\n", `key "server.pin": unknown key`},
		{"wrong kind", "server", "version = 1\n[server]\nroute = \"10.0.0.0/8\"\n", `key "server.route": expected a array`},
		{"array of numbers", "server", "version = 1\n[server]\ndns = [1]\n", "expected an array of strings"},
		{"bad nat", "server", "version = 1\n[server]\nnat = \"iptables\"\n", "expected kernel or userspace"},
		{"bad listen", "server", "version = 1\n[server]\nlisten = \"4433\"\n", "expected IP:PORT"},
		{"bad dns", "server", "version = 1\n[server]\ndns = [\"dns.example\"]\n", "expected an IP address"},
		{"bad user key", "server", "version = 1\n[server.users.a]\nroute = [\"10.0.0.0/8\"]\n", `key "server.users.a.route": unknown key`},
		{"bad user route", "server", "version = 1\n[server.users.a]\nroutes = [\"10.0.0.0\"]\n", "expected a CIDR"},
		{"bad user ports", "server", "version = 1\n[server.users.a]\nports = [\"9-1\"]\n", "expected PORT or LO-HI"},
		{"port zero", "server", "version = 1\n[server.users.a]\nports = [\"0\"]\n", "expected PORT or LO-HI"},
		{"other table", "server", "version = 1\n[server]\n[client]\nserver = \"a:1\"\n", `key "client": unknown top-level`},
		{"no table", "client", "version = 1\n", "no [client] table"},
		{"client needs server", "client", "version = 1\n[client]\nmode = \"packet\"\n", `key "client.server": required`},
		{"client dns", "client", "version = 1\n[client]\nserver = \"a:1\"\ndns = \"on\"\n", "expected auto or off"},
		{"client mark kind", "client", "version = 1\n[client]\nserver = \"a:1\"\nmark = \"0x526f\"\n", `key "client.mark": expected a int`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := CheckConfig("x", []byte(tt.src), tt.role)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

func FuzzParseContainerfile(f *testing.F) {
	f.Add(read(f, containerfile))
	f.Add([]byte("FROM a\\\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		ins, err := ParseContainerfile(src)
		if err == nil && len(ins) == 0 {
			t.Fatal("no error and no instructions")
		}
		_ = LintContainerfile("fuzz", src) // must not panic
	})
}

func FuzzCheckConfig(f *testing.F) {
	f.Add(read(f, serverTOML), true)
	f.Add(read(f, clientTOML), false)
	f.Fuzz(func(t *testing.T, src []byte, server bool) {
		role := "client"
		if server {
			role = "server"
		}
		_, _ = CheckConfig("fuzz", src, role) // must not panic
	})
}
