package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/tuntest"
	"github.com/roamvpn/roam/tunnel"
)

// reloadClient is a tunnel client over a channel device (no TUN, no root).
type reloadClient struct {
	c       *tunnel.Client
	sockets atomic.Int32 // ListenPacket calls: 1 while the first connection lives
	done    chan error
}

// connect runs a client with token against the in-process server and waits
// until its tunnel is up; it returns the setup error if there is none.
func connect(t *testing.T, addr, pin, token string) (*reloadClient, error) {
	t.Helper()
	p, err := auth.ParsePin(pin)
	if err != nil {
		t.Fatal(err)
	}
	rc := &reloadClient{done: make(chan error, 1)}
	ready := make(chan struct{})
	c, err := tunnel.NewClient(tunnel.ClientConfig{
		Server: addr, Token: token, Pin: &p,
		ListenPacket: func(netip.Addr) (net.PacketConn, error) {
			rc.sockets.Add(1)
			return net.ListenPacket("udp", "127.0.0.1:0")
		},
		NewDevice:    func(dc tunnel.DeviceConfig) (datagram.Device, error) { return tuntest.NewChannelDevice(dc.MTU, 1), nil },
		OnReady:      func(tunnel.Info) { close(ready) },
		SetupTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	rc.c = c
	ctx, cancel := context.WithCancel(context.Background())
	go func() { rc.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-rc.done:
		case <-time.After(10 * time.Second):
			t.Errorf("client did not stop")
		}
	})
	select {
	case <-ready:
		return rc, nil
	case err := <-rc.done:
		rc.done <- err
		if err == nil {
			err = errors.New("client stopped before its tunnel was up")
		}
		return nil, err
	case <-time.After(10 * time.Second):
		t.Fatal("client tunnel not up within 10 s")
	}
	return nil, nil
}

// waitFor waits until out contains want n times.
func waitFor(t *testing.T, out *syncBuffer, want string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("no %q (#%d) within 10 s in the server's output:\n%s", want, n, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSIGHUPReload: a SIGHUP makes the running server re-read its config
// file, tokens file, public keys and revocations. A token added is then
// accepted and one removed is refused, a user disabled in the file and a
// revoked signed token lose their sessions, a changed restart-only setting is logged, and the session
// of a token still valid keeps running on its first connection. A broken
// file is logged with its line and the old configuration keeps working.
func TestSIGHUPReload(t *testing.T) {
	const tokA, tokB, tokC = "reload-token-a-0123456789", "reload-token-b-0123456789", "reload-token-c-0123456789"
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(tokens, tokA+"\n"+tokB+"\n")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	config := filepath.Join(dir, "roam.toml")
	serverTable := func(public string, aliceDisabled bool) string {
		return fmt.Sprintf("version = 1\n[server]\nlisten = %q\nstate_dir = %q\ntokens = %q\nnat = \"userspace\"\nweb = false\npublic = %q\n"+
			"[server.users.alice]\ndisabled = %v\n", addr, filepath.Join(dir, "state"), tokens, public, aliceDisabled)
	}
	write(config, serverTable("127.0.0.1", false))

	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"server", "--config", config}, &out, &out) }()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("server exited %d: %s", code, out.String())
		}
	}()
	waitFor(t, &out, "roam client --server", 1)
	b, err := os.ReadFile(filepath.Join(dir, "state", "pin"))
	if err != nil {
		t.Fatal(err)
	}
	pin := strings.TrimSpace(string(b))
	// The server created the signing key; a token issued with it for
	// alice is accepted through the default public key file.
	key, created, err := auth.LoadOrCreateSigningKey(filepath.Join(dir, "state"))
	if err != nil || created {
		t.Fatalf("signing key: created %v, %v (the server should have made it)", created, err)
	}
	signed, err := auth.IssueToken(key, auth.Claims{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}

	carolTok, err := auth.IssueToken(key, auth.Claims{User: "carol"})
	if err != nil {
		t.Fatal(err)
	}

	a, err := connect(t, addr, pin, tokA)
	if err != nil {
		t.Fatalf("token A: %v", err)
	}
	alice, err := connect(t, addr, pin, signed)
	if err != nil {
		t.Fatalf("alice's signed token: %v", err)
	}
	if _, err := connect(t, addr, pin, tokC); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("token C before the reload: %v, want authentication failed", err)
	}
	carol, err := connect(t, addr, pin, carolTok)
	if err != nil {
		t.Fatalf("carol's signed token: %v", err)
	}

	// Add C, remove B, disable alice, revoke carol's token, change a
	// restart-only setting.
	write(tokens, tokA+"\n"+tokC+"\n")
	write(filepath.Join(dir, "state", "revoked"), "id "+auth.TokenID(carolTok)+" # lost laptop\n")
	write(config, serverTable("vpn.example.com", true))
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, &out, "configuration reloaded", 1)
	if !strings.Contains(out.String(), "changed settings need a restart") || !strings.Contains(out.String(), "restart_keys=public") {
		t.Errorf("no restart note for the changed public key:\n%s", out.String())
	}
	if _, err := connect(t, addr, pin, tokC); err != nil {
		t.Fatalf("token C after the reload: %v", err)
	}
	if _, err := connect(t, addr, pin, tokB); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("token B after the reload: %v, want authentication failed", err)
	}
	if !strings.Contains(out.String(), "revocations=1 users=1") {
		t.Errorf("the reload line does not count the revocation:\n%s", out.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for alice.c.Status().State == "connected" || carol.c.Status().State == "connected" {
		if time.Now().After(deadline) {
			t.Fatalf("still connected after the reload: alice (disabled) %s, carol (revoked) %s", alice.c.Status().State, carol.c.Status().State)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A broken file: logged with file and line, and nothing changes (C is
	// still accepted although the tokens file no longer has it).
	write(tokens, tokA+"\n")
	write(config, strings.Replace(serverTable("vpn.example.com", true), `nat = "userspace"`, `nat = "magic"`, 1))
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, &out, "reload failed", 1)
	if want := config + `:6: key \"server.nat\": invalid value \"magic\"`; !strings.Contains(out.String(), want) {
		t.Errorf("the failed reload does not name %s:\n%s", want, out.String())
	}
	if _, err := connect(t, addr, pin, tokC); err != nil {
		t.Fatalf("token C after a failed reload: %v", err)
	}

	// A broken tokens file is refused as well.
	write(config, serverTable("vpn.example.com", true))
	write(tokens, tokA+"\nshort\n")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, &out, "reload failed", 2)
	if !strings.Contains(out.String(), tokens) {
		t.Errorf("the failed reload does not name the tokens file:\n%s", out.String())
	}

	// A's session lived through all of it on its first connection.
	if st := a.c.Status(); st.State != "connected" || st.Reconnects != 0 || a.sockets.Load() != 1 {
		t.Fatalf("session A: state %s, %d reconnects, %d sockets; want connected on its first connection", st.State, st.Reconnects, a.sockets.Load())
	}
	select {
	case err := <-a.done:
		t.Fatalf("client A stopped: %v", err)
	default:
	}
}

// TestClientSIGHUP: a SIGHUP to a running client is logged, not fatal
// (without the handler it would end this test process).
func TestClientSIGHUP(t *testing.T) {
	var out syncBuffer
	stop := ignoreSIGHUP(slog.New(slog.NewTextHandler(&out, nil)))
	defer stop()
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, &out, "the client has nothing to reload", 1)
}

// TestServerAuthFiles: a token key or revocation file the server cannot
// use stops it at start with the file named.
func TestServerAuthFiles(t *testing.T) {
	dir := t.TempDir()
	badList := filepath.Join(dir, "revoked")
	os.WriteFile(badList, []byte("id tok-0123456789ab\nuser bad name\n"), 0o600)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"missing token key", []string{"--token-key", filepath.Join(dir, "missing.pub")}, filepath.Join(dir, "missing.pub")},
		{"bad revocation list", []string{"--revocations", badList}, badList + ": line 2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"server", "--state-dir", filepath.Join(dir, "state"), "--nat", "userspace", "--listen", "127.0.0.1:0"}, tt.args...)
			code, _, stderr := runArgs(t, context.Background(), args...)
			if code != 1 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 1 naming %q", code, stderr, tt.want)
			}
		})
	}
}
