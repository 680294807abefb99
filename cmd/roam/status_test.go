package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamvpn/roam/tunnel"
	"github.com/roamvpn/roam/tunnel/control"
)

var (
	statusT0    = time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	statusTestS = tunnel.ServerStatus{
		Listen: "127.0.0.1:4433", Version: "roam test", Started: statusT0.Add(-time.Hour),
		Sessions: []tunnel.SessionStatus{
			{Kind: "connect-ip", Owner: "tok-0123456789ab", User: "alice", Remote: "192.0.2.7:50000",
				Addrs: []netip.Addr{netip.MustParseAddr("100.96.0.2"), netip.MustParseAddr("fd00:96::2")},
				Since: statusT0.Add(-90 * time.Second), RTT: 12345 * time.Microsecond,
				TxPackets: 10, TxBytes: 1536, RxPackets: 3, RxBytes: 300, Flows: 2},
			{Kind: "webtransport", Owner: "tok-ba9876543210", Remote: "[2001:db8::1]:443",
				Since: statusT0.Add(-5 * time.Second)},
		},
	}
	statusTestC = tunnel.ClientStatus{
		Server: "vpn.example.com:4433", State: "connected", Since: statusT0.Add(-3 * time.Minute),
		Addrs:  []netip.Prefix{netip.MustParsePrefix("100.96.0.2/32"), netip.MustParsePrefix("fd00:96::2/128")},
		Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")},
		DNS:    []netip.Addr{netip.MustParseAddr("100.96.0.1")},
		Paths:  []tunnel.PathStatus{{Local: "192.168.1.5:40000", Remote: "203.0.113.1:4433", Active: true}, {Local: "10.0.0.5:40001", Remote: "203.0.113.1:4433"}},
		RTT:    25 * time.Millisecond, Migrations: 2, Reconnects: 1, Flows: 3,
		TxPackets: 5, TxBytes: 3 << 20, RxPackets: 7, RxBytes: 700,
	}
)

const wantServerTable = `server roam test  listen 127.0.0.1:4433  up 1h0m0s  sessions 2
KIND          USER   TOKEN             REMOTE             ADDRS                  SINCE  RTT     TX          RX       FLOWS
connect-ip    alice  tok-0123456789ab  192.0.2.7:50000    100.96.0.2,fd00:96::2  1m30s  12.3ms  1.5KiB/10p  300B/3p  2
webtransport  -      tok-ba9876543210  [2001:db8::1]:443  -                      5s     -       0B/0p       0B/0p    0
`

const wantClientTable = `client      connected for 3m0s
server      vpn.example.com:4433
addrs       100.96.0.2/32, fd00:96::2/128
routes      0.0.0.0/0
dns         100.96.0.1
paths       192.168.1.5:40000 -> 203.0.113.1:4433 (active)
            10.0.0.5:40001 -> 203.0.113.1:4433
rtt         25ms
migrations  2
reconnects  1
flows       3
tx          3.0MiB/5p
rx          700B/7p
`

func TestStatusTables(t *testing.T) {
	var b bytes.Buffer
	printServerStatus(&b, &statusTestS, statusT0)
	if b.String() != wantServerTable {
		t.Errorf("server table:\n%s\nwant:\n%s", b.String(), wantServerTable)
	}
	b.Reset()
	printClientStatus(&b, &statusTestC, statusT0)
	if b.String() != wantClientTable {
		t.Errorf("client table:\n%s\nwant:\n%s", b.String(), wantClientTable)
	}
	b.Reset()
	printServerStatus(&b, &tunnel.ServerStatus{Version: "v"}, statusT0)
	if want := "server v  listen (not listening)  sessions 0\n"; b.String() != want {
		t.Errorf("idle server: %q, want %q", b.String(), want)
	}
}

func TestStatusSize(t *testing.T) {
	for _, tt := range []struct {
		b    uint64
		want string
	}{{0, "0B"}, {1023, "1023B"}, {1024, "1.0KiB"}, {1536, "1.5KiB"}, {5 << 30, "5.0GiB"}, {1 << 62, "4096.0PiB"}} {
		if got := size(tt.b); got != tt.want {
			t.Errorf("size(%d) = %q, want %q", tt.b, got, tt.want)
		}
	}
}

// statusSockets serves the test statuses on sockets in a fresh directory
// and points the default paths there.
func statusSockets(t *testing.T, server, client bool) (spath, cpath string) {
	t.Helper()
	dir := t.TempDir()
	spath, cpath = filepath.Join(dir, "server.sock"), filepath.Join(dir, "client.sock")
	oldPath, oldNow := statusPath, statusNow
	statusPath = func(kind string) string { return filepath.Join(dir, kind+".sock") }
	statusNow = func() time.Time { return statusT0 }
	t.Cleanup(func() { statusPath, statusNow = oldPath, oldNow })
	if server {
		s, err := control.Listen(control.Config{Path: spath, Server: func() tunnel.ServerStatus { return statusTestS }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
	}
	if client {
		s, err := control.Listen(control.Config{Path: cpath, Client: func() tunnel.ClientStatus { return statusTestC }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
	}
	return spath, cpath
}

func TestStatusCommand(t *testing.T) {
	tests := []struct {
		name           string
		server, client bool
		stale          bool     // a socket file no one listens on at the server path
		args           []string // after "status"; SOCK is replaced by the server socket
		code           int
		stdout         string // exact, if set
		stderr         string // contained
	}{
		{name: "server table", server: true, args: []string{"--socket", "SOCK"}, stdout: wantServerTable},
		{name: "default paths, server only", server: true, stdout: wantServerTable},
		{name: "default paths, client only", client: true, stdout: wantClientTable},
		{name: "default paths, both", server: true, client: true, stdout: wantServerTable + "\n" + wantClientTable},
		{name: "no sockets", code: 1, stderr: "no status socket at "},
		{name: "missing --socket", args: []string{"--socket", "SOCK"}, code: 1, stderr: "server.sock (is roam running"},
		{name: "stale socket", stale: true, args: []string{"--socket", "SOCK"}, code: 1, stderr: "stale socket"},
		{name: "extra argument", args: []string{"sessions"}, code: 2, stderr: `unexpected argument "sessions"`},
		{name: "bad flag", args: []string{"--nope"}, code: 2, stderr: "--nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spath, _ := statusSockets(t, tt.server, tt.client)
			if tt.stale {
				ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: spath, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				ln.SetUnlinkOnClose(false)
				ln.Close()
			}
			args := []string{"status"}
			for _, a := range tt.args {
				args = append(args, strings.ReplaceAll(a, "SOCK", spath))
			}
			code, stdout, stderr := runArgs(t, context.Background(), args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.code, stderr)
			}
			if tt.code == 0 && stdout != tt.stdout {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout, tt.stdout)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tt.stderr)
			}
		})
	}
}

func TestStatusJSON(t *testing.T) {
	for _, tt := range []struct {
		name           string
		server, client bool
	}{{"server", true, false}, {"client", false, true}, {"both", true, true}} {
		t.Run(tt.name, func(t *testing.T) {
			statusSockets(t, tt.server, tt.client)
			code, stdout, stderr := runArgs(t, context.Background(), "status", "--json")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var got control.Reply
			dec := json.NewDecoder(strings.NewReader(stdout))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("stdout is not a status reply: %v\n%s", err, stdout)
			}
			var want control.Reply
			if tt.server {
				want.Server = &statusTestS
			}
			if tt.client {
				want.Client = &statusTestC
			}
			// Times come back in the local zone; compare as JSON.
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			if !bytes.Equal(gb, wb) {
				t.Errorf("got\n%s\nwant\n%s", gb, wb)
			}
			if tt.server && !strings.Contains(stdout, `"rtt_ns": 12345000`) {
				t.Errorf("JSON does not carry the RTT in ns:\n%s", stdout)
			}
		})
	}
}

// TestStatusRealServer runs `roam server` in-process with --status-socket
// and --metrics and checks both answer, then that the socket is gone after
// the server exits.
func TestStatusRealServer(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "server.sock")
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("status-test-token-0123456789\n"), 0o600)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"server", "--listen", addr, "--state-dir", dir, "--tokens", tokens, "--nat", "userspace",
			"--web=false", "--status-socket", sock, "--metrics", maddr}, &out, &out)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("server exited %d: %s", code, out.String())
		}
		if _, err := os.Lstat(sock); !os.IsNotExist(err) {
			t.Errorf("status socket still there after exit: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	var stdout, stderr string
	for code := 1; code != 0 || !strings.Contains(stdout, "listen "+addr); {
		if time.Now().After(deadline) {
			t.Fatalf("roam status: exit %d %q %q\nserver: %s", code, stdout, stderr, out.String())
		}
		time.Sleep(50 * time.Millisecond)
		code, stdout, stderr = runArgs(t, context.Background(), "status", "--socket", sock)
	}
	if !strings.HasPrefix(stdout, "server roam ") || !strings.Contains(stdout, "sessions 0") {
		t.Errorf("roam status = %q", stdout)
	}
	if !strings.Contains(out.String(), "metrics listener") {
		t.Errorf("no metrics listener in the log:\n%s", out.String())
	}
	for _, path := range []string{"/readyz", "/healthz", "/metrics"} {
		c, err := net.Dial("tcp", maddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET " + path + " HTTP/1.0\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b bytes.Buffer
		b.ReadFrom(c)
		c.Close()
		if !strings.HasPrefix(b.String(), "HTTP/1.0 200") {
			t.Errorf("GET %s: %.80q", path, b.String())
		}
		if path == "/metrics" && !strings.Contains(b.String(), "roam_server_sessions_active 0") {
			t.Errorf("/metrics has no roam_server_sessions_active 0")
		}
	}
}
