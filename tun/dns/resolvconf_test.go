package dns

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const hostFile = "# host's own\nnameserver 192.168.1.1\nsearch lan\n"

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// fileCfg is a file-backend config for path.
func fileCfg(t *testing.T, path string, servers ...string) Config {
	return Config{Servers: addrs(servers...), IfName: "roam0", FullTunnel: true, ResolvConf: path, Backend: File, Logger: testLog(t)}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("%s exists (%v)", path, err)
	}
}

func TestResolvConf(t *testing.T) {
	tests := []struct {
		name string
		// setup creates the starting state in dir and returns the path to
		// manage and a check that the state is back to it.
		setup func(t *testing.T, dir string) (string, func(t *testing.T))
	}{
		{"regular file", func(t *testing.T, dir string) (string, func(t *testing.T)) {
			p := filepath.Join(dir, "resolv.conf")
			if err := os.WriteFile(p, []byte(hostFile), 0o640); err != nil {
				t.Fatal(err)
			}
			return p, func(t *testing.T) {
				if got := read(t, p); got != hostFile {
					t.Fatalf("restored %q", got)
				}
				if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
					t.Fatalf("mode %v", fi.Mode())
				}
			}
		}},
		{"symlink to a stub file", func(t *testing.T, dir string) (string, func(t *testing.T)) {
			stub := filepath.Join(dir, "stub-resolv.conf")
			if err := os.WriteFile(stub, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "resolv.conf")
			if err := os.Symlink(stub, p); err != nil {
				t.Fatal(err)
			}
			return p, func(t *testing.T) {
				if tg, err := os.Readlink(p); err != nil || tg != stub {
					t.Fatalf("not the symlink again: %q %v", tg, err)
				}
				if got := read(t, stub); got != "nameserver 127.0.0.53\n" {
					t.Fatalf("stub changed: %q", got)
				}
			}
		}},
		{"no file", func(t *testing.T, dir string) (string, func(t *testing.T)) {
			p := filepath.Join(dir, "resolv.conf")
			return p, func(t *testing.T) { mustNotExist(t, p) }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p, check := tt.setup(t, dir)
			stubBefore := ""
			if tg, err := os.Readlink(p); err == nil {
				stubBefore = read(t, tg)
			}
			h, err := Configure(fileCfg(t, p, "100.96.0.1", "fd00:96::1"))
			if err != nil {
				t.Fatal(err)
			}
			if h.Backend() != File {
				t.Fatalf("backend %v", h.Backend())
			}
			fi, err := os.Lstat(p)
			if err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("%s is not a regular file now: %v %v", p, fi, err)
			}
			got := read(t, p)
			if !strings.HasPrefix(got, Header+"\n") || !strings.Contains(got, "\nnameserver 100.96.0.1\nnameserver fd00:96::1\n") {
				t.Fatalf("written:\n%s", got)
			}
			if strings.Contains(got, "192.168.1.1") || strings.Contains(got, "127.0.0.53") {
				t.Fatalf("the old resolver is still listed:\n%s", got)
			}
			if stubBefore != "" {
				if tg, _ := filepath.EvalSymlinks(p + BackupSuffix); read(t, tg) != stubBefore {
					t.Fatal("stub changed while configured")
				}
			}
			if _, err := os.Lstat(p + BackupSuffix); err != nil {
				t.Fatalf("no backup: %v", err)
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			if err := h.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			check(t)
			mustNotExist(t, p+BackupSuffix)
			mustNotExist(t, p+".roam-tmp")
		})
	}
}

func TestResolvConfContent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	cfg := fileCfg(t, p, "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
	cfg.Domains = []string{"corp.example", "example"}
	h, err := Configure(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	got := read(t, p)
	for _, want := range []string{"\nnameserver 10.0.0.3\n", "\n# nameserver 10.0.0.4 (beyond", "\nsearch corp.example example\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	if ns := parseNameservers([]byte(got)); len(ns) != 3 {
		t.Errorf("nameservers %v", ns)
	}
}

// A client that crashed left Roam's file and the backup: the next
// Configure restores first, so the backup it takes is the host's file.
func TestResolvConfCrashRecovery(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte(hostFile), 0o644)
	if _, err := Configure(fileCfg(t, p, "100.96.0.1")); err != nil { // never closed: the "crash"
		t.Fatal(err)
	}
	h, err := Configure(fileCfg(t, p, "100.96.0.9"))
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, p+BackupSuffix); got != hostFile {
		t.Fatalf("backup after recovery = %q, want the host's file", got)
	}
	if got := read(t, p); !strings.Contains(got, "100.96.0.9") || strings.Contains(got, "100.96.0.1\n") {
		t.Fatalf("file %q", got)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, p); got != hostFile {
		t.Fatalf("restored %q", got)
	}
}

// A stale backup next to a file that is not Roam's (someone rewrote it
// after a crash) is dropped: the current file is the truth.
func TestResolvConfStaleBackup(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("nameserver 192.0.2.1\n"), 0o644)
	os.WriteFile(p+BackupSuffix, []byte("nameserver 198.51.100.1\n"), 0o644)
	h, err := Configure(fileCfg(t, p, "100.96.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, p); got != "nameserver 192.0.2.1\n" {
		t.Fatalf("restored %q", got)
	}
	mustNotExist(t, p+BackupSuffix)
}

// If another program replaces Roam's file while the tunnel is up, Close
// keeps that program's file.
func TestResolvConfReplacedMeanwhile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte(hostFile), 0o644)
	h, err := Configure(fileCfg(t, p, "100.96.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("nameserver 203.0.113.1\n"), 0o644)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, p); got != "nameserver 203.0.113.1\n" {
		t.Fatalf("file %q", got)
	}
	mustNotExist(t, p+BackupSuffix)
}

func TestResolvConfBackupPath(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "resolv.conf")
	os.WriteFile(p, []byte(hostFile), 0o644)
	cfg := fileCfg(t, p, "100.96.0.1")
	cfg.BackupPath = filepath.Join(dir, "state", "resolv.conf.saved")
	os.Mkdir(filepath.Dir(cfg.BackupPath), 0o700)
	h, err := Configure(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if read(t, cfg.BackupPath) != hostFile {
		t.Fatal("backup not at BackupPath")
	}
	mustNotExist(t, p+BackupSuffix)
	h.Close()
	if read(t, p) != hostFile {
		t.Fatal("not restored")
	}
}

func TestConfigureErrors(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no servers", Config{ResolvConf: p, Backend: File}, "Servers is empty"},
		{"unspecified server", Config{Servers: addrs("0.0.0.0"), ResolvConf: p, Backend: File}, "Servers[0]"},
		{"bad domain", Config{Servers: addrs("10.0.0.1"), Domains: []string{"a b"}, ResolvConf: p, Backend: File}, "Domains[0]"},
		{"directory", Config{Servers: addrs("10.0.0.1"), ResolvConf: filepath.Dir(p), Backend: File}, "refusing to replace"},
		{"no such directory", Config{Servers: addrs("10.0.0.1"), ResolvConf: filepath.Join(p, "x", "resolv.conf"), Backend: File}, "x/resolv.conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := Configure(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if h != nil {
				t.Fatal("handle with error")
			}
		})
	}
	mustNotExist(t, p)
}

// The file `ip netns exec` bind-mounts cannot be renamed over; it is
// written in place and restored in place.
func TestResolvConfMountPoint(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "netns-resolv.conf")
	p := filepath.Join(dir, "resolv.conf")
	os.WriteFile(src, []byte(hostFile), 0o644)
	os.WriteFile(p, nil, 0o644)
	if out, err := exec.Command("mount", "--bind", src, p).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", p).Run() })
	h, err := Configure(fileCfg(t, p, "100.96.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, src); !strings.HasPrefix(got, Header) {
		t.Fatalf("not written through the mount: %q", got)
	}
	// A crash and restart must cope with the mount too.
	h2, err := Configure(fileCfg(t, p, "100.96.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	_ = h
	if err := h2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, src); got != hostFile {
		t.Fatalf("restored %q", got)
	}
	mustNotExist(t, p+BackupSuffix)
}

func TestHostResolver(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content, want, err string
	}{
		{"first of several", "# c\nsearch x\nnameserver 127.0.0.53\nnameserver 10.0.0.1\n", "127.0.0.53", ""},
		{"IPv6", "nameserver fd00::53\n", "fd00::53", ""},
		{"none", "search x\n", "", "no nameserver line"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, string(rune('a'+i)))
			os.WriteFile(p, []byte(tt.content), 0o644)
			got, err := HostResolver(p)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), p) {
					t.Fatalf("err %v", err)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("%v %v", got, err)
			}
		})
	}
	if _, err := HostResolver(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("no error for a missing file")
	}
}

// The D-Bus backend needs a running systemd-resolved in this network
// namespace. It changes the host's resolver for a dummy link, so it runs
// only when asked (ROAM_TEST_RESOLVED=1), never in CI by default.
func TestResolvedLive(t *testing.T) {
	if os.Getenv("ROAM_TEST_RESOLVED") != "1" {
		t.Skip("set ROAM_TEST_RESOLVED=1 to test against the host's systemd-resolved (changes a dummy link only)")
	}
	needRoot(t)
	if ok, why := resolvedInUse(DefaultResolvConf); !ok {
		t.Skipf("systemd-resolved not in use: %s", why)
	}
	const link = "roamdnst0"
	if out, err := exec.Command("ip", "link", "add", link, "type", "dummy").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	defer exec.Command("ip", "link", "del", link).Run()
	exec.Command("ip", "link", "set", link, "up").Run()
	h, err := Configure(Config{Servers: addrs("192.0.2.53"), IfName: link, FullTunnel: true, Backend: Resolved, Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("resolvectl", "status", link).CombinedOutput()
	if !bytes.Contains(out, []byte("192.0.2.53")) || !bytes.Contains(out, []byte("~.")) {
		t.Errorf("resolvectl status %s:\n%s", link, out)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("resolvectl", "status", link).CombinedOutput()
	if bytes.Contains(out, []byte("192.0.2.53")) {
		t.Errorf("not reverted:\n%s", out)
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (bind mounts), and CI=true")
	}
	t.Skip("needs root")
}

// Roam's own file without a backup is not saved as "the previous file":
// Close removes it instead of bringing the stale servers back.
func TestResolvConfLeftoverWithoutBackup(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte(Header+"\nnameserver 100.96.0.1\n"), 0o644)
	h, err := Configure(fileCfg(t, p, "100.96.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, p)
	mustNotExist(t, p+BackupSuffix)
}
