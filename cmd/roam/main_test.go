package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func runArgs(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string // must appear in the one-line message
	}{
		{[]string{"server", "--pool4", "10.0.0.0/33"}, "--pool4"},
		{[]string{"server", "--pool4", "fd00::/64"}, "IPv4 CIDR"},
		{[]string{"server", "--pool6", "10.0.0.0/8"}, "--pool6"},
		{[]string{"server", "--nat", "magic"}, "--nat"},
		{[]string{"server", "--listen", "nonsense"}, "--listen"},
		{[]string{"server", "--cert", "x.pem"}, "--key"},
		{[]string{"server", "--route", "1.2.3"}, "--route"},
		{[]string{"server", "--tun", "averyveryverylongname"}, "--tun"},
		{[]string{"server", "--log-level", "loud", "--nat", "userspace"}, "--log-level"},
		{[]string{"server", "--bogus"}, "--bogus"},
		{[]string{"client"}, "--server"},
		{[]string{"client", "--server", "host"}, "--server"},
		{[]string{"client", "--server", "h:1"}, "--token"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--pin", "md5:00"}, "--pin"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--route", "x"}, "--route"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--table", "254"}, "--table"},
		{[]string{"server", "--dns", "dns.example"}, "--dns"},
		{[]string{"server", "--dns", "0.0.0.0"}, "--dns"},
		{[]string{"server", "--dns-forward", "127.0.0.53"}, "--dns-forward"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--dns", "maybe"}, "--dns"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--resolv-conf", "resolv.conf"}, "--resolv-conf"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--stack", "lwip"}, "--stack"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--fec", "on"}, "--fec"},
		{[]string{"client", "--server", "h:1", "--token", "t", "--fec", "16:0"}, "--fec"},
		{[]string{"server", "--fec=maybe"}, "--fec"},
		{[]string{"frobnicate"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := runArgs(t, context.Background(), tt.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (stderr %q)", code, stderr)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("want one line mentioning %q, got %q", tt.want, stderr)
			}
		})
	}
}

// startServer runs `roam server` in-process with userspace NAT on a free
// loopback port and returns its address and pin.
func startServer(t *testing.T, token string) (addr, pin string) {
	t.Helper()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte(token+"\n"), 0o600)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = pc.LocalAddr().String()
	pc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"server", "--listen", addr, "--state-dir", dir, "--tokens", tokens, "--nat", "userspace", "--log-level", "warn"}, &out, &out)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("server exited %d: %s", code, out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "roam client --server") {
		if time.Now().After(deadline) {
			t.Fatalf("server did not print its client line: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, err := os.ReadFile(filepath.Join(dir, "pin"))
	if err != nil {
		t.Fatal(err)
	}
	return addr, strings.TrimSpace(string(b))
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestClientErrors(t *testing.T) {
	const token = "cmd-test-token-0123456789"
	addr, pin := startServer(t, token)
	t.Run("wrong token", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		code, _, stderr := runArgs(t, ctx, "client", "--server", addr, "--token", "not-the-right-token-at-all", "--pin", pin)
		if code != 1 || !strings.Contains(stderr, "authentication failed") {
			t.Fatalf("exit %d, stderr %q; want 1 and 'authentication failed'", code, stderr)
		}
	})
	t.Run("wrong pin", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		bad := "sha256:" + strings.Repeat("ab", 32)
		code, _, stderr := runArgs(t, ctx, "client", "--server", addr, "--token", token, "--pin", bad)
		if code != 1 || !strings.Contains(stderr, "pin mismatch") {
			t.Fatalf("exit %d, stderr %q; want 1 and a pin mismatch", code, stderr)
		}
	})
}

// TestServerNoFlags: `roam server` with no flags at all starts and prints a
// ready-to-paste client line. As root it runs unprivileged (nobody) in a
// namespace of its own, so it takes the userspace-NAT default and touches
// nothing on the host.
func TestServerNoFlags(t *testing.T) {
	dir, err := os.MkdirTemp("", "roam-noflags-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	bin := filepath.Join(dir, "roam")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := []string{"HOME=" + dir, "XDG_STATE_HOME=" + filepath.Join(dir, "state"), "PATH=" + os.Getenv("PATH")}
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		ns := fmt.Sprintf("roamt-cmd-%d", os.Getpid())
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
		args := append([]string{"netns", "exec", ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i"}, env...)
		cmd = exec.Command("ip", append(args, bin, "server")...)
	} else {
		if c, err := net.ListenPacket("udp", "0.0.0.0:4433"); err != nil {
			t.Skipf("UDP port 4433 is busy here (%v); as root this test runs in its own namespace", err)
		} else {
			c.Close()
		}
		cmd = exec.Command(bin, "server")
		cmd.Env = env
	}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer cmd.Process.Kill()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "--pin sha256:") {
		if time.Now().After(deadline) {
			t.Fatalf("no client line within 15 s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	line := out.String()[strings.Index(out.String(), "roam client --server"):]
	line = strings.TrimSpace(strings.SplitN(line, "\n", 2)[0])
	f := strings.Fields(line)
	if len(f) != 8 || f[2] != "--server" || f[4] != "--token" || f[6] != "--pin" || len(f[5]) < 16 || !strings.HasSuffix(f[3], ":4433") {
		t.Fatalf("client line is not ready to paste: %q", line)
	}
	if _, _, err := parseClientFlags(f[2:], &bytes.Buffer{}); err != nil {
		t.Fatalf("the printed line does not parse: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("server exit: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop on SIGTERM")
	}
}
