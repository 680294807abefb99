package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamvpn/roam/tunnel"
)

func listen(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	since := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	srvSt := tunnel.ServerStatus{Listen: "127.0.0.1:4433", Version: "roam test", Started: since,
		Sessions: []tunnel.SessionStatus{{Kind: "connect-ip", Owner: "id1", User: "alice", Remote: "127.0.0.1:5000",
			Addrs: []netip.Addr{netip.MustParseAddr("100.96.0.2")}, Since: since, RTT: time.Millisecond, TxBytes: 7}}}
	cliSt := tunnel.ClientStatus{Server: "vpn:4433", State: "connected", Migrations: 2,
		Paths: []tunnel.PathStatus{{Local: "1.2.3.4:5", Remote: "5.6.7.8:9", Active: true}}}
	for _, tt := range []struct {
		name string
		cfg  Config
		mode fs.FileMode
		want Reply
	}{
		{"server", Config{Server: func() tunnel.ServerStatus { return srvSt }}, 0o600, Reply{Server: &srvSt}},
		{"client 0660", Config{Client: func() tunnel.ClientStatus { return cliSt }, Mode: 0o660}, 0o660, Reply{Client: &cliSt}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Path = filepath.Join(dir, "sub", strings.ReplaceAll(tt.name, " ", "")+".sock")
			s := listen(t, tt.cfg)
			fi, err := os.Lstat(tt.cfg.Path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != tt.mode {
				t.Errorf("socket file mode %v, want a socket with %v", fi.Mode(), tt.mode)
			}
			got, err := Query(context.Background(), tt.cfg.Path)
			if err != nil {
				t.Fatal(err)
			}
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(tt.want)
			if string(gb) != string(wb) {
				t.Errorf("reply\n%s\nwant\n%s", gb, wb)
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if _, err := os.Lstat(tt.cfg.Path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("socket file still there after Close: %v", err)
			}
			if _, err := Query(context.Background(), tt.cfg.Path); err == nil {
				t.Error("Query after Close succeeded")
			}
			ents, _ := os.ReadDir(filepath.Dir(tt.cfg.Path))
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), ".tmp") {
					t.Errorf("temporary socket %s left behind", e.Name())
				}
			}
		})
	}
}

func TestUnknownRequest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	listen(t, Config{Path: path, Server: func() tunnel.ServerStatus { return tunnel.ServerStatus{} }})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "frobnicate\n")
	var r Reply
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.Server != nil || !strings.Contains(r.Error, `unknown request "frobnicate"`) {
		t.Errorf("reply %+v, want an error naming the request", r)
	}
	// A request line that never ends is cut off, not buffered forever.
	c2, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte(strings.Repeat("x", 4*maxRequest)))
	c2.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := c2.Read(make([]byte, 10)); err == nil {
		t.Errorf("read %d bytes for an overlong request, want the connection closed", n)
	}
}

func TestStaleAndLiveSockets(t *testing.T) {
	dir := t.TempDir()
	st := func() tunnel.ServerStatus { return tunnel.ServerStatus{Version: "v"} }

	// A stale socket (bound, then its listener gone without removal).
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(stale); err != nil {
		t.Fatal(err)
	}
	listen(t, Config{Path: stale, Server: st})
	if r, err := Query(context.Background(), stale); err != nil || r.Server.Version != "v" {
		t.Fatalf("after replacing a stale socket: %+v %v", r, err)
	}

	// A live socket is not taken over.
	if _, err := Listen(Config{Path: stale, Server: st}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Listen on a live socket: %v, want an in-use error", err)
	}

	// A regular file is never removed.
	file := filepath.Join(dir, "file.sock")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := Listen(Config{Path: file, Server: st}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a regular file: %v, want a not-a-socket error", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("the regular file was changed")
	}
}

func TestCloseLeavesAReplacedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	s := listen(t, Config{Path: path, Server: func() tunnel.ServerStatus { return tunnel.ServerStatus{} }})
	// Someone else's socket now lives at the path (ours was removed).
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Close removed a socket it did not create: %v", err)
	}
}

func TestListenConfigErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	st := func() tunnel.ServerStatus { return tunnel.ServerStatus{} }
	cst := func() tunnel.ClientStatus { return tunnel.ClientStatus{} }
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"neither", Config{Path: path}, "exactly one"},
		{"both", Config{Path: path, Server: st, Client: cst}, "exactly one"},
		{"no path", Config{Server: st}, "Path"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Listen(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Listen = %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestQueryErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Query(context.Background(), filepath.Join(dir, "missing.sock")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Query on a missing socket: %v, want ErrNotExist", err)
	}
	// A peer that answers garbage.
	path := filepath.Join(dir, "bad.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			// Read the request first, as the real server does: a
			// reply written before the client's request is read and
			// closed can break the client's write (EPIPE).
			bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, "{}\n")
			c.Close()
		}
	}()
	if _, err := Query(context.Background(), path); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Errorf("Query on an empty reply: %v", err)
	}
}

func TestDefaultPath(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	got := DefaultPath("server")
	want := "/run/user/1000/roam/server.sock"
	if os.Geteuid() == 0 {
		want = "/run/roam/server.sock"
	}
	if got != want {
		t.Errorf("DefaultPath(server) = %q, want %q", got, want)
	}
}
