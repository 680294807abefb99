package tunnel

// Network-namespace end-to-end test: the real `roam` binary, real TUN
// devices on both ends and kernel NAT (nftables masquerade), in three
// namespaces this test creates and always deletes:
//
//	client ──veth 10.231.1.0/24, fd31:1::/64── server ──veth 10.231.2.0/24, fd31:2::/64── inet
//
// The client has no route to the inet subnet except through the tunnel, and
// the inet host has no route back to the client or the tunnel pools, so
// every reply it sends must go to the server's own address (NAT).

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
)

// requireRoot fails the test in CI (CI=true) and skips it elsewhere when
// the test cannot create namespaces, TUN devices and nftables tables.
func requireRoot(t *testing.T, tools ...string) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (network namespaces, TUN, nftables)"
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil && why == "" {
			why = fmt.Sprintf("needs %s on PATH", tool)
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI=true, so this is a failure, not a skip", why)
	}
	t.Skip(why)
}

// topo is the three-namespace world of one test.
type topo struct {
	t       *testing.T
	c, s, i string // namespace names
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	p := fmt.Sprintf("roamt-%d-%d", os.Getpid(), time.Now().UnixNano()%100000)
	tp := &topo{t: t, c: p + "-c", s: p + "-s", i: p + "-i"}
	for _, ns := range []string{tp.c, tp.s, tp.i} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			// kill anything left in the namespace, then delete it
			if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
				for _, pid := range strings.Fields(string(out)) {
					exec.Command("kill", "-9", pid).Run()
				}
			}
			exec.Command("ip", "netns", "del", ns).Run()
		})
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	veth := func(a, aif, aaddr4, aaddr6, b, bif, baddr4, baddr6 string) {
		run(t, "ip", "link", "add", aif, "netns", a, "type", "veth", "peer", "name", bif, "netns", b)
		run(t, "ip", "-n", a, "addr", "add", aaddr4, "dev", aif)
		run(t, "ip", "-n", a, "addr", "add", aaddr6, "dev", aif, "nodad")
		run(t, "ip", "-n", a, "link", "set", aif, "up")
		run(t, "ip", "-n", b, "addr", "add", baddr4, "dev", bif)
		run(t, "ip", "-n", b, "addr", "add", baddr6, "dev", bif, "nodad")
		run(t, "ip", "-n", b, "link", "set", bif, "up")
	}
	veth(tp.c, "eth-s", "10.231.1.2/24", "fd31:1::2/64", tp.s, "eth-c", "10.231.1.1/24", "fd31:1::1/64")
	veth(tp.s, "eth-i", "10.231.2.1/24", "fd31:2::1/64", tp.i, "eth-s", "10.231.2.2/24", "fd31:2::2/64")
	return tp
}

// in runs fn with the calling goroutine's thread in namespace ns. Sockets
// created inside fn stay in ns after fn returns.
func (tp *topo) in(ns string, fn func()) {
	tp.t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tp.t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		tp.t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		tp.t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
	}()
	fn()
}

// proc is a roam process in a namespace, its stdout and stderr captured.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (tp *topo) start(ns string, args ...string) *proc {
	tp.t.Helper()
	p := &proc{out: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		tp.t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	tp.t.Cleanup(func() {
		p.cmd.Process.Kill()
		if tp.t.Failed() {
			tp.t.Logf("output of %s:\n%s", strings.Join(args, " "), p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("%v exited with %v\n%s", p.cmd.Args, err, p.out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%v did not exit within 15 s of SIGTERM\n%s", p.cmd.Args, p.out.String())
	}
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// buildRoam builds the roam binary once per test binary.
var buildRoam = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "roam-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "roam")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/roam").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// pattern is the deterministic content the inet HTTP server serves.
func pattern(n int) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{114, 111, 97, 109}), int64(n))
}

func TestNetnsKernelNAT(t *testing.T) {
	requireRoot(t, "ip", "ping", "nft", "go")
	bin, err := buildRoam()
	if err != nil {
		t.Fatal(err)
	}
	tp := newTopo(t)

	// Services on the inet host: HTTP (50 MB body) and UDP echo; both
	// record who they saw.
	const size = 50 << 20
	h := sha256.New()
	io.Copy(h, pattern(size))
	want := h.Sum(nil)
	var mu sync.Mutex
	var seen []string
	var hl net.Listener
	var ul net.PacketConn
	tp.in(tp.i, func() {
		if hl, err = net.Listen("tcp", "10.231.2.2:8080"); err != nil {
			t.Fatal(err)
		}
		if ul, err = net.ListenPacket("udp", ":7007"); err != nil {
			t.Fatal(err)
		}
	})
	defer hl.Close()
	defer ul.Close()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.RemoteAddr)
		mu.Unlock()
		w.Header().Set("Content-Length", fmt.Sprint(size))
		io.Copy(w, pattern(size))
	})}
	go hs.Serve(hl)
	defer hs.Close()
	udpSeen := make(chan string, 100)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			udpSeen <- from.String() + " " + string(buf[:n])
			ul.WriteTo(buf[:n], from)
		}
	}()

	// Server and client, exactly as a user runs them.
	state := t.TempDir()
	tokFile := filepath.Join(state, "tokens")
	os.WriteFile(tokFile, []byte("# test\n"+testToken+"\n"), 0o600)
	srv := tp.start(tp.s, bin, "server", "--listen", "10.231.1.1:4433", "--state-dir", state, "--tokens", tokFile)
	waitFor(t, "the server's client line", 10*time.Second, func() bool { return strings.Contains(srv.out.String(), "roam client --server") })
	pin := strings.TrimSpace(string(must(os.ReadFile(filepath.Join(state, "pin")))))
	// The same checks in both client modes: packet (everything as
	// datagrams) and flow (TCP as streams the server dials, the rest as
	// datagrams), flow on gVisor and on the system stack.
	for _, mode := range []string{"packet", "flow", "flow-system"} {
		ok := t.Run(mode, func(t *testing.T) {
			args := []string{"client", "--server", "10.231.1.1:4433", "--token", testToken, "--pin", pin, "--mode", mode}
			if mode == "flow-system" {
				args = append(args[:len(args)-1], "flow", "--stack", "system")
			}
			cli := tp.start(tp.c, append([]string{bin}, args...)...)
			waitFor(t, "the client's tunnel", 10*time.Second, func() bool {
				out, _ := exec.Command("ip", "-n", tp.c, "-o", "addr", "show", "dev", "roam0").Output()
				return strings.Contains(string(out), "100.96.") && strings.Contains(cli.out.String(), "tunnel up")
			})
			if mode == "flow-system" && !strings.Contains(cli.out.String(), "system stack started") {
				t.Fatalf("the client did not start the system stack:\n%s", cli.out.String())
			}
			// The client's tunnel address, for the NAT check below.
			addrOut := run(t, "ip", "-n", tp.c, "-o", "-4", "addr", "show", "dev", "roam0")
			tunAddr := strings.Split(strings.Fields(addrOut)[3], "/")[0]

			t.Run("ping4", func(t *testing.T) {
				run(t, "ip", "netns", "exec", tp.c, "ping", "-c", "3", "-i", "0.2", "-W", "3", "10.231.2.2")
			})
			t.Run("ping6", func(t *testing.T) {
				run(t, "ip", "netns", "exec", tp.c, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "3", "fd31:2::2")
			})
			t.Run("http-50MB", func(t *testing.T) {
				var conn net.Conn
				tp.in(tp.c, func() {
					conn, err = net.DialTimeout("tcp", "10.231.2.2:8080", 10*time.Second)
				})
				if err != nil {
					t.Fatalf("dial through the tunnel: %v", err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(120 * time.Second))
				fmt.Fprintf(conn, "GET /big HTTP/1.1\r\nHost: inet\r\nConnection: close\r\n\r\n")
				start := time.Now()
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatal(err)
				}
				h := sha256.New()
				n, err := io.Copy(h, resp.Body)
				if err != nil {
					t.Fatalf("after %d bytes: %v", n, err)
				}
				if n != size || !bytes.Equal(h.Sum(nil), want) {
					t.Fatalf("got %d bytes, sha256 %x; want %d bytes %x", n, h.Sum(nil), size, want)
				}
				t.Logf("50 MB in %v (%.0f Mbit/s)", time.Since(start), float64(size*8)/time.Since(start).Seconds()/1e6)
				mu.Lock()
				defer mu.Unlock()
				for _, s := range seen {
					if !strings.HasPrefix(s, "10.231.2.1:") {
						t.Fatalf("the inet host saw %s, want the server's address 10.231.2.1 (tunnel address %s)", s, tunAddr)
					}
				}
			})
			t.Run("udp-echo", func(t *testing.T) {
				for _, dst := range []string{"10.231.2.2:7007", "[fd31:2::2]:7007"} {
					var c net.Conn
					tp.in(tp.c, func() { c, err = net.Dial("udp", dst) })
					if err != nil {
						t.Fatal(err)
					}
					c.SetDeadline(time.Now().Add(5 * time.Second))
					msg := "echo via " + dst
					c.Write([]byte(msg))
					buf := make([]byte, 100)
					n, err := c.Read(buf)
					c.Close()
					if err != nil || string(buf[:n]) != msg {
						t.Fatalf("udp echo %s: %q, %v", dst, buf[:n], err)
					}
					got := <-udpSeen
					if !strings.HasPrefix(got, "10.231.2.1:") && !strings.HasPrefix(got, "[fd31:2::1]:") {
						t.Fatalf("the inet host saw %q, want the server's address", got)
					}
				}
			})
			t.Run("inbound-tcp", func(t *testing.T) {
				// A connection opened toward the client (from the server
				// host, to the client's tunnel address) works in both modes;
				// in flow mode it goes as packets, not as a flow.
				var ln net.Listener
				tp.in(tp.c, func() { ln, err = net.Listen("tcp", net.JoinHostPort(tunAddr, "2222")) })
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				go func() {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					defer c.Close()
					io.Copy(c, c)
				}()
				var c net.Conn
				tp.in(tp.s, func() { c, err = net.DialTimeout("tcp", net.JoinHostPort(tunAddr, "2222"), 10*time.Second) })
				if err != nil {
					t.Fatalf("dial the client's tunnel address %s from the server: %v", tunAddr, err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				payload := make([]byte, 1<<20)
				for i := range payload {
					payload[i] = byte(i * 7)
				}
				go func() {
					c.Write(payload)
					c.(*net.TCPConn).CloseWrite()
				}()
				got, err := io.ReadAll(c)
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("echo from the client: %d of %d bytes, err %v", len(got), len(payload), err)
				}
			})
			t.Run("spoofed-source", func(t *testing.T) {
				if mode != "packet" {
					t.Skip("a property of the server; checked once, in packet mode")
				}
				var pc net.PacketConn
				tp.in(tp.c, func() { pc, err = net.ListenPacket("udp", "10.231.1.2:0") })
				if err != nil {
					t.Fatal(err)
				}
				p, err := auth.ParsePin(pin)
				if err != nil {
					t.Fatal(err)
				}
				conn, qsid, assign := rawSessionOn(t, pc, "10.231.1.1:4433", p)
				mine := assign.Addresses[0].Prefix.Addr()
				inet := netip.MustParseAddr("10.231.2.2")
				for len(udpSeen) > 0 {
					<-udpSeen
				}
				for _, src := range []string{"100.96.0.250", "10.231.1.2", "10.231.2.2"} {
					pkt := buildUDP4(netip.MustParseAddr(src), inet, 40000, 7007, []byte("spoofed from "+src))
					conn.SendDatagram(append(datagram.AppendPrefix(nil, qsid, 0), pkt...))
				}
				pkt := buildUDP4(mine, inet, 40000, 7007, []byte("genuine"))
				conn.SendDatagram(append(datagram.AppendPrefix(nil, qsid, 0), pkt...))
				select {
				case got := <-udpSeen:
					if !strings.HasSuffix(got, " genuine") {
						t.Fatalf("the inet host received %q", got)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the genuine packet never reached the inet host")
				}
				select {
				case got := <-udpSeen:
					t.Fatalf("the inet host received %q", got)
				case <-time.After(500 * time.Millisecond):
				}
				conn.CloseWithError(0, "")
			})

			// Clean exit removes everything both sides added.
			cli.stop(t)
			if out, _ := exec.Command("ip", "-n", tp.c, "link", "show", "roam0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
				t.Errorf("client TUN still present after exit: %s", out)
			}
			if out := run(t, "ip", "-n", tp.c, "rule", "show"); strings.Contains(out, "lookup 21103") || strings.Contains(out, "0x526f") {
				t.Errorf("client policy rules left behind:\n%s", out)
			}
			if out := run(t, "ip", "-n", tp.c, "-6", "rule", "show"); strings.Contains(out, "lookup 21103") || strings.Contains(out, "0x526f") {
				t.Errorf("client IPv6 policy rules left behind:\n%s", out)
			}
			if out := run(t, "ip", "-n", tp.c, "route", "show", "table", "all"); strings.Contains(out, "roam0") || strings.Contains(out, "table 21103") {
				t.Errorf("client routes left behind:\n%s", out)
			}
		})
		if !ok {
			break
		}
	}

	srv.stop(t)
	if out, _ := exec.Command("ip", "-n", tp.s, "link", "show", "roam0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("server TUN still present after exit: %s", out)
	}
	if out := run(t, "ip", "netns", "exec", tp.s, "nft", "list", "tables"); strings.Contains(out, "roam") {
		t.Errorf("nftables table left behind:\n%s", out)
	}
	if out := run(t, "ip", "netns", "exec", tp.s, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(out) != "0" {
		t.Errorf("net.ipv4.ip_forward not restored: %s", out)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
