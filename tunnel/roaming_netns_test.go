package tunnel

// Roaming end-to-end tests: the real `roam` binary in network namespaces
// this file creates (names "roamt-<pid>-r<n>-c|s|i") and always deletes.
//
//	            ┌─ link 1: l1 10.232.1.2/24 ── c1 10.232.1.1/24 ─┐
//	client ─────┤                                                ├── server ── s0 10.232.3.1/24 ── i0 10.232.3.2/24 ── inet
//	            └─ link 2: l2 (down, no address) ── c2 10.232.2.1/24 ─┘
//
// The server listens on 10.232.0.1, an address on its lo, so it has the
// same address whichever link the client uses; the client reaches it by
// its default route. The client reaches the inet subnet only through the
// tunnel (--route 10.232.3.0/24), so its default route can move freely;
// the inet host has no route back except to the server (kernel NAT).
//
// The tests rely on the client's log lines msg="path changed",
// msg="connection lost" and msg=reconnected (issue 4) and never assert
// on timing: speed is measured by cmd/bench/roaming.sh.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

const (
	roamingServerAddr = "10.232.0.1:4433"
	roamingInetHost   = "10.232.3.2"
	roamingInetNet    = "10.232.3.0/24"
)

var roamingNsSeq atomic.Int32

// roamingTopo is the two-link world of one roaming test.
type roamingTopo struct {
	*topo
	bin     string
	state   string // the server's --state-dir (kept across restarts)
	tokFile string
	pin     string
}

// newRoamingTopo creates the namespaces and links; link 1 is up and holds
// the client's default route, link 2 is down and has no client address.
func newRoamingTopo(t *testing.T) *roamingTopo {
	t.Helper()
	bin, err := buildRoam()
	if err != nil {
		t.Fatal(err)
	}
	p := fmt.Sprintf("roamt-%d-r%d", os.Getpid(), roamingNsSeq.Add(1))
	rt := &roamingTopo{topo: &topo{t: t, c: p + "-c", s: p + "-s", i: p + "-i"}, bin: bin}
	for _, ns := range []string{rt.c, rt.s, rt.i} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
				for _, pid := range strings.Fields(string(out)) {
					exec.Command("kill", "-9", pid).Run()
				}
			}
			exec.Command("ip", "netns", "del", ns).Run()
		})
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	veth := func(a, aif, b, bif string) {
		run(t, "ip", "link", "add", aif, "netns", a, "type", "veth", "peer", "name", bif, "netns", b)
	}
	run(t, "ip", "-n", rt.s, "addr", "add", "10.232.0.1/32", "dev", "lo")
	veth(rt.c, "l1", rt.s, "c1")
	veth(rt.c, "l2", rt.s, "c2")
	veth(rt.s, "s0", rt.i, "i0")
	for _, a := range [][3]string{
		{rt.c, "l1", "10.232.1.2/24"},
		{rt.s, "c1", "10.232.1.1/24"},
		{rt.s, "c2", "10.232.2.1/24"},
		{rt.s, "s0", "10.232.3.1/24"},
		{rt.i, "i0", "10.232.3.2/24"},
	} {
		run(t, "ip", "-n", a[0], "addr", "add", a[2], "dev", a[1])
		run(t, "ip", "-n", a[0], "link", "set", a[1], "up")
	}
	run(t, "ip", "-n", rt.c, "route", "add", "default", "via", "10.232.1.1", "dev", "l1")

	rt.state = t.TempDir()
	rt.tokFile = filepath.Join(rt.state, "tokens")
	if err := os.WriteFile(rt.tokFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return rt
}

// switchLink moves the client from link `from` to link `to` the way a
// laptop leaving one network for another sees it: the old link goes down
// and loses its address, then the new link gets an address, comes up and
// takes the default route.
func (rt *roamingTopo) switchLink(from, to int) {
	t := rt.t
	t.Helper()
	f, n := fmt.Sprintf("l%d", from), fmt.Sprintf("l%d", to)
	run(t, "ip", "-n", rt.c, "link", "set", f, "down")
	run(t, "ip", "-n", rt.c, "addr", "flush", "dev", f)
	run(t, "ip", "-n", rt.c, "addr", "add", fmt.Sprintf("10.232.%d.2/24", to), "dev", n)
	run(t, "ip", "-n", rt.c, "link", "set", n, "up")
	run(t, "ip", "-n", rt.c, "route", "replace", "default", "via", fmt.Sprintf("10.232.%d.1", to), "dev", n)
}

// linkRxBytes is the received byte counter of a link in namespace ns.
func (rt *roamingTopo) linkRxBytes(ns, name string) uint64 {
	var n uint64
	rt.in(ns, func() {
		l, err := netlink.LinkByName(name)
		if err != nil {
			rt.t.Fatalf("link %s in %s: %v", name, ns, err)
		}
		if st := l.Attrs().Statistics; st != nil {
			n = st.RxBytes
		}
	})
	return n
}

// roamingProc is a roam process whose exit the test can see without
// consuming proc.done twice.
type roamingProc struct {
	*proc
	exited chan struct{} // closed when the process has exited
	err    error         // its exit status; valid once exited is closed
}

func (rt *roamingTopo) startProc(ns string, args ...string) *roamingProc {
	rt.t.Helper()
	p := &roamingProc{proc: rt.start(ns, args...), exited: make(chan struct{})}
	go func() {
		p.err = <-p.done
		close(p.exited)
	}()
	return p
}

func (p *roamingProc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// waitLog waits until cond holds for the process output; it fails the
// test when the process exits first or d passes.
func (p *roamingProc) waitLog(t *testing.T, what string, d time.Duration, cond func(out string) bool) {
	t.Helper()
	if err := p.awaitLog(d, cond); err != nil {
		t.Fatalf("waiting for %s: %v\noutput of %s:\n%s", what, err, strings.Join(p.cmd.Args[4:], " "), p.out.String())
	}
}

func (p *roamingProc) awaitLog(d time.Duration, cond func(out string) bool) error {
	deadline := time.Now().Add(d)
	for {
		if cond(p.out.String()) {
			return nil
		}
		if p.hasExited() {
			if cond(p.out.String()) {
				return nil
			}
			return fmt.Errorf("the process exited (%v)", p.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logged counts the log lines of slog's text format with this message.
func logged(out, msg string) int {
	re := regexp.MustCompile(`(?m)\bmsg=(?:"` + regexp.QuoteMeta(msg) + `"|` + regexp.QuoteMeta(msg) + `)(?:\s|$)`)
	return len(re.FindAllStringIndex(out, -1))
}

// loggedLines returns the log lines with one of these messages.
func loggedLines(out string, msgs ...string) string {
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		for _, m := range msgs {
			if logged(line, m) > 0 {
				b.WriteString(line)
				b.WriteByte('\n')
				break
			}
		}
	}
	return b.String()
}

func (rt *roamingTopo) serverArgs() []string {
	return []string{rt.bin, "server", "--listen", roamingServerAddr, "--state-dir", rt.state, "--tokens", rt.tokFile}
}

// startServer starts the server and waits until it is ready.
func (rt *roamingTopo) startServer() *roamingProc {
	rt.t.Helper()
	srv := rt.startProc(rt.s, rt.serverArgs()...)
	srv.waitLog(rt.t, "the server's client line", 20*time.Second, func(out string) bool {
		return strings.Contains(out, "roam client --server")
	})
	pin, err := os.ReadFile(filepath.Join(rt.state, "pin"))
	if err != nil {
		rt.t.Fatal(err)
	}
	rt.pin = strings.TrimSpace(string(pin))
	return srv
}

// startClient starts a client dialing server and waits for the tunnel.
func (rt *roamingTopo) startClient(server string) *roamingProc {
	rt.t.Helper()
	cli := rt.startProc(rt.c, rt.bin, "client", "--server", server, "--token", testToken, "--pin", rt.pin,
		"--route", roamingInetNet)
	cli.waitLog(rt.t, "the client's tunnel", 20*time.Second, func(out string) bool {
		return strings.Contains(out, "tunnel up") && strings.Contains(rt.tunAddrs(), "100.96.")
	})
	return cli
}

// tunAddrs lists the global addresses of the client's roam0, sorted.
func (rt *roamingTopo) tunAddrs() string {
	out, err := exec.Command("ip", "-n", rt.c, "-o", "addr", "show", "dev", "roam0").Output()
	if err != nil {
		return ""
	}
	var addrs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || (f[2] != "inet" && f[2] != "inet6") || strings.HasPrefix(f[3], "fe80:") {
			continue
		}
		addrs = append(addrs, f[3])
	}
	slices.Sort(addrs)
	return strings.Join(addrs, " ")
}

// dialInner opens a TCP connection from the client through the tunnel.
func (rt *roamingTopo) dialInner(addr string) net.Conn {
	rt.t.Helper()
	var c net.Conn
	var err error
	rt.in(rt.c, func() { c, err = net.DialTimeout("tcp", addr, 15*time.Second) })
	if err != nil {
		rt.t.Fatalf("dial %s through the tunnel: %v", addr, err)
	}
	rt.t.Cleanup(func() { c.Close() })
	return c
}

// serveInet runs, in the inet namespace, an HTTP server whose /paced?n=N&rate=R
// sends pattern(N) at no more than R bytes/s, and a TCP echo on :7007.
func (rt *roamingTopo) serveInet() {
	t := rt.t
	t.Helper()
	var hl, el net.Listener
	var err error
	rt.in(rt.i, func() {
		if hl, err = net.Listen("tcp", roamingInetHost+":8080"); err != nil {
			t.Fatal(err)
		}
		if el, err = net.Listen("tcp", roamingInetHost+":7007"); err != nil {
			t.Fatal(err)
		}
	})
	hs := &http.Server{Handler: http.HandlerFunc(pacedHandler)}
	go hs.Serve(hl)
	t.Cleanup(func() { hs.Close() })
	go func() {
		for {
			c, err := el.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { el.Close() })
}

func pacedHandler(w http.ResponseWriter, r *http.Request) {
	n, err1 := strconv.Atoi(r.URL.Query().Get("n"))
	rate, err2 := strconv.Atoi(r.URL.Query().Get("rate"))
	if err1 != nil || err2 != nil || n < 0 || rate < 0 {
		http.Error(w, "want /paced?n=BYTES&rate=BYTES_PER_SECOND", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(n))
	src := pattern(n)
	buf := make([]byte, 64<<10)
	start := time.Now()
	for sent := 0; sent < n; {
		k, _ := io.ReadFull(src, buf[:min(len(buf), n-sent)])
		if _, err := w.Write(buf[:k]); err != nil {
			return
		}
		sent += k
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))))
		}
	}
}

// download is one paced HTTP transfer through the tunnel, read by its own
// goroutine. reached[i] is closed when marks[i] bytes have arrived.
type download struct {
	size     int
	start    time.Time
	got      atomic.Int64
	reached  []chan struct{}
	done     chan struct{}
	err      error         // valid after done
	sum      []byte        // sha256 of the body; valid after done
	maxStall time.Duration // longest wait for one read; valid after done
	stalls   []string      // reads that waited over 300 ms: "at T: D"; valid after done
	elapsed  time.Duration // valid after done
}

func startDownload(conn net.Conn, size, rate int, marks ...int64) *download {
	d := &download{size: size, start: time.Now(), done: make(chan struct{})}
	for range marks {
		d.reached = append(d.reached, make(chan struct{}))
	}
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	go func() {
		defer close(d.done)
		start := d.start
		defer func() { d.elapsed = time.Since(start) }()
		fmt.Fprintf(conn, "GET /paced?n=%d&rate=%d HTTP/1.1\r\nHost: inet\r\nConnection: close\r\n\r\n", size, rate)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			d.err = err
			return
		}
		defer resp.Body.Close()
		h := sha256.New()
		buf := make([]byte, 32<<10)
		next := 0
		last := time.Now()
		for {
			k, err := resp.Body.Read(buf)
			now := time.Now()
			d.maxStall = max(d.maxStall, now.Sub(last))
			if w := now.Sub(last); w > 300*time.Millisecond {
				d.stalls = append(d.stalls, fmt.Sprintf("%v at %v (%d MiB)", w.Round(time.Millisecond), last.Sub(start).Round(time.Millisecond), d.got.Load()>>20))
			}
			last = now
			h.Write(buf[:k])
			n := d.got.Add(int64(k))
			for next < len(marks) && n >= marks[next] {
				close(d.reached[next])
				next++
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				d.err = err
				return
			}
		}
		d.sum = h.Sum(nil)
	}()
	return d
}

// await waits for mark i; it fails the test if the transfer ends first.
func (d *download) await(t *testing.T, i int) {
	t.Helper()
	select {
	case <-d.reached[i]:
	case <-d.done:
		t.Fatalf("the transfer ended after %d of %d bytes before reaching mark %d (%v); lower the rate", d.got.Load(), d.size, i, d.err)
	case <-time.After(2 * time.Minute):
		t.Fatalf("transfer stuck at %d of %d bytes", d.got.Load(), d.size)
	}
}

// check waits for the end of the transfer and verifies it byte for byte.
func (d *download) check(t *testing.T, what string) {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("%s: transfer stuck at %d of %d bytes", what, d.got.Load(), d.size)
	}
	if d.err != nil {
		t.Fatalf("%s: the inner TCP connection failed after %d of %d bytes: %v", what, d.got.Load(), d.size, d.err)
	}
	h := sha256.New()
	io.Copy(h, pattern(d.size))
	if n := d.got.Load(); n != int64(d.size) || !bytes.Equal(d.sum, h.Sum(nil)) {
		t.Fatalf("%s: got %d bytes sha256 %x, want %d bytes %x", what, n, d.sum, d.size, h.Sum(nil))
	}
	t.Logf("%s: %d MiB byte-exact in %v, longest read stall %v; stalls over 300 ms: %v", what, d.size>>20,
		d.elapsed.Round(time.Millisecond), d.maxStall.Round(time.Millisecond), d.stalls)
}

// alive fails the test if the client process has exited.
func (p *roamingProc) alive(t *testing.T) {
	t.Helper()
	if p.hasExited() {
		t.Fatalf("the client exited (%v):\n%s", p.err, p.out.String())
	}
}

// TestNetnsRoamingLinkSwitch: a long download through the tunnel survives
// the client losing link 1 and getting link 2 (new address, new default
// route) in the middle of it.
func TestNetnsRoamingLinkSwitch(t *testing.T) {
	requireRoot(t, "ip", "nft", "go")
	t.Parallel()
	rt := newRoamingTopo(t)
	rt.serveInet()
	rt.startServer()
	cli := rt.startClient(roamingServerAddr)
	addrs := rt.tunAddrs()

	const size, rate = 64 << 20, 16 << 20 // ~4 s
	conn := rt.dialInner(roamingInetHost + ":8080")
	d := startDownload(conn, size, rate, size/4)
	d.await(t, 0)
	at := d.got.Load()
	rx0 := rt.linkRxBytes(rt.c, "l2")
	rt.switchLink(1, 2)
	t.Logf("moved from link 1 to link 2 after %d MiB of %d", at>>20, size>>20)
	d.check(t, "download across the link switch")
	if got := rt.linkRxBytes(rt.c, "l2") - rx0; got < uint64(size-at)/2 {
		t.Errorf("link 2 received only %d bytes of the %d-byte rest of the transfer", got, size-at)
	}
	cli.alive(t)
	if got := rt.tunAddrs(); got != addrs {
		t.Errorf("roam0 addresses changed from %q to %q", addrs, got)
	}
	// The product logs the migration once ("path changed"), or at worst
	// reconnects ("reconnected"); the inner TCP connection survived either way.
	err := cli.awaitLog(10*time.Second, func(out string) bool {
		return logged(out, "path changed") > 0 || logged(out, "reconnected") > 0
	})
	out := cli.out.String()
	switch {
	case logged(out, "path changed") > 0 && logged(out, "reconnected") == 0:
		t.Logf("the client migrated the QUIC connection:\n%s", loggedLines(out, "path changed"))
	case logged(out, "reconnected") > 0:
		t.Logf("the client RECONNECTED instead of migrating (the transfer survived anyway):\n%s",
			loggedLines(out, "path changed", "connection lost", "reconnected"))
	default:
		t.Errorf("the client logged neither \"path changed\" nor \"reconnected\" after the link switch (%v)", err)
	}
}

// TestNetnsRoamingLinkSwitchRepeated: the client moves between the two
// links six times (about once a second) during one download; the
// download survives, and every move is a migration of the same
// connection (quic-go v0.64 servers allowed two per connection, and the
// client reconnected on the third).
func TestNetnsRoamingLinkSwitchRepeated(t *testing.T) {
	requireRoot(t, "ip", "nft", "go")
	t.Parallel()
	rt := newRoamingTopo(t)
	rt.serveInet()
	rt.startServer()
	cli := rt.startClient(roamingServerAddr)
	addrs := rt.tunAddrs()

	const switches = 6
	const size, rate = 128 << 20, 16 << 20 // ~8 s
	conn := rt.dialInner(roamingInetHost + ":8080")
	var marks []int64
	for i := 1; i <= switches; i++ {
		marks = append(marks, int64(i*size/(switches+1)))
	}
	d := startDownload(conn, size, rate, marks...)
	from := 1
	for i := range switches {
		d.await(t, i)
		rt.switchLink(from, 3-from)
		t.Logf("at %v, after %d MiB: moved from link %d to link %d", time.Since(d.start).Round(time.Millisecond), d.got.Load()>>20, from, 3-from)
		from = 3 - from
	}
	d.check(t, "download across six link switches")
	cli.alive(t)
	if got := rt.tunAddrs(); got != addrs {
		t.Errorf("roam0 addresses changed from %q to %q", addrs, got)
	}
	out := cli.out.String()
	moved, lost := logged(out, "path changed"), logged(out, "connection lost")
	t.Logf("client events: %d path changed, %d connection lost, %d reconnected:\n%s",
		moved, lost, logged(out, "reconnected"),
		loggedLines(out, "path changed", "connection lost", "reconnected"))
	if moved != switches || lost != 0 {
		t.Errorf("%d migrations and %d lost connections for %d link switches, want %d and 0", moved, lost, switches, switches)
	}
}

// udpRelay forwards the client's UDP datagrams to the server from an
// outbound socket it can replace, like a NAT that rebinds the client to
// a new source port.
type udpRelay struct {
	rt     *roamingTopo
	front  *net.UDPConn
	target *net.UDPAddr
	mu     sync.Mutex
	peer   netip.AddrPort // the client
	ports  []*relayPort   // every outbound socket so far; the last one is in use
	wg     sync.WaitGroup
}

// relayPort is one outbound socket of the relay: one NAT mapping.
type relayPort struct {
	conn    *net.UDPConn
	port    int
	opened  time.Time
	tx, rx  atomic.Int64 // datagrams to and from the server
	firstRx atomic.Int64 // unix nanoseconds of the first datagram from the server
}

func (p *relayPort) String() string {
	s := fmt.Sprintf("port %d: %d datagrams to the server, %d from it", p.port, p.tx.Load(), p.rx.Load())
	if f := p.firstRx.Load(); f != 0 {
		s += fmt.Sprintf(", the first %v after the port opened", time.Unix(0, f).Sub(p.opened).Round(time.Millisecond))
	}
	return s
}

func (rt *roamingTopo) newUDPRelay(listen, target string) *udpRelay {
	t := rt.t
	t.Helper()
	r := &udpRelay{rt: rt, target: net.UDPAddrFromAddrPort(netip.MustParseAddrPort(target))}
	var err error
	rt.in(rt.s, func() {
		r.front, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(listen)))
	})
	if err != nil {
		t.Fatal(err)
	}
	r.rebind()
	r.wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := r.front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.peer = from
			back := r.ports[len(r.ports)-1]
			r.mu.Unlock()
			if _, err := back.conn.Write(buf[:n]); err == nil { // a failed send is a lost datagram
				back.tx.Add(1)
			}
		}
	})
	t.Cleanup(func() {
		r.front.Close()
		r.mu.Lock()
		r.ports[len(r.ports)-1].conn.Close()
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// rebind replaces the outbound socket, closing the old one so the old
// mapping is gone, and returns the old and the new one.
func (r *udpRelay) rebind() (old, cur *relayPort) {
	var nb *net.UDPConn
	var err error
	r.rt.in(r.rt.s, func() { nb, err = net.DialUDP("udp", nil, r.target) })
	if err != nil {
		r.rt.t.Fatal(err)
	}
	cur = &relayPort{conn: nb, port: nb.LocalAddr().(*net.UDPAddr).Port, opened: time.Now()}
	r.mu.Lock()
	if len(r.ports) > 0 {
		old = r.ports[len(r.ports)-1]
	}
	r.ports = append(r.ports, cur)
	r.mu.Unlock()
	r.wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, err := nb.Read(buf)
			if err != nil {
				return
			}
			if cur.rx.Add(1) == 1 {
				cur.firstRx.Store(time.Now().UnixNano())
			}
			r.mu.Lock()
			peer := r.peer
			r.mu.Unlock()
			r.front.WriteToUDPAddrPort(buf[:n], peer)
		}
	})
	if old != nil {
		old.conn.Close()
	}
	return old, cur
}

// TestNetnsRoamingNATRebinding: the server sees the client's source port
// change twice in the middle of a download; the download completes.
func TestNetnsRoamingNATRebinding(t *testing.T) {
	requireRoot(t, "ip", "nft", "go")
	t.Parallel()
	rt := newRoamingTopo(t)
	rt.serveInet()
	rt.startServer()
	relay := rt.newUDPRelay("10.232.1.1:5555", roamingServerAddr)
	cli := rt.startClient("10.232.1.1:5555")

	const size, rate = 32 << 20, 6 << 20 // ~5 s; the relay runs in this (maybe -race) process
	conn := rt.dialInner(roamingInetHost + ":8080")
	d := startDownload(conn, size, rate, size/3, 2*size/3)
	for i := range 2 {
		d.await(t, i)
		old, cur := relay.rebind()
		t.Logf("at %v, after %d MiB: the relay now sends from port %d instead of %d",
			time.Since(d.start).Round(time.Millisecond), d.got.Load()>>20, cur.port, old.port)
	}
	d.check(t, "download across two NAT rebindings")
	relay.mu.Lock()
	ports := slices.Clone(relay.ports)
	relay.mu.Unlock()
	for _, p := range ports {
		t.Logf("relay %v", p)
	}
	if ports[len(ports)-1].rx.Load() == 0 {
		t.Errorf("the server never sent to the client's last source port")
	}
	cli.alive(t)
	if ev := loggedLines(cli.out.String(), "path changed", "connection lost", "reconnected"); ev != "" {
		t.Logf("client events (the server alone should have followed the rebinding):\n%s", ev)
	} else {
		t.Logf("no client events: the server followed the rebinding by itself")
	}
}

// TestNetnsRoamingServerRestart: the server crashes (SIGKILL) while an
// idle inner TCP connection is open and comes back within 10 s with the
// same state; the client reconnects by itself, keeps its addresses, and
// the inner connection still works.
func TestNetnsRoamingServerRestart(t *testing.T) {
	requireRoot(t, "ip", "nft", "go")
	t.Parallel()
	rt := newRoamingTopo(t)
	rt.serveInet()
	srv := rt.startServer()
	pin := rt.pin
	cli := rt.startClient(roamingServerAddr)
	addrs := rt.tunAddrs()

	conn := rt.dialInner(roamingInetHost + ":7007")
	rd := bufio.NewReader(conn)
	echo := func(msg string, d time.Duration) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(d))
		if _, err := fmt.Fprintln(conn, msg); err != nil {
			t.Fatalf("inner TCP connection: write %q: %v", msg, err)
		}
		line, err := rd.ReadString('\n')
		if err != nil || line != msg+"\n" {
			t.Fatalf("inner TCP connection: echo of %q: got %q, %v", msg, line, err)
		}
	}
	echo("before the server restart", 10*time.Second)

	srv.cmd.Process.Kill() // a crash: no CONNECTION_CLOSE, no cleanup
	select {
	case <-srv.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not die of SIGKILL")
	}
	killed := time.Now()
	leftTun, _ := exec.Command("ip", "-n", rt.s, "-br", "link", "show", "roam0").CombinedOutput()
	leftNft, _ := exec.Command("ip", "netns", "exec", rt.s, "nft", "list", "tables").CombinedOutput()
	t.Logf("left behind by the crash: roam0: %s nft tables: %s", strings.TrimSpace(string(leftTun)), strings.TrimSpace(string(leftNft)))
	time.Sleep(2 * time.Second)

	srv2 := rt.startProc(rt.s, rt.serverArgs()...)
	if err := srv2.awaitLog(20*time.Second, func(out string) bool { return strings.Contains(out, "roam client --server") }); err != nil {
		t.Errorf("PRODUCT BUG: the server restarted after a crash with the same arguments does not come up: %v\n%s", err, srv2.out.String())
		// WORKAROUND for the bug above, so that the rest can be tested:
		// remove what the crashed server left behind and start again.
		srv2.cmd.Process.Kill()
		exec.Command("ip", "-n", rt.s, "link", "del", "roam0").Run()
		for _, line := range strings.Split(string(leftNft), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "table" && strings.Contains(f[2], "roam") {
				exec.Command("ip", "netns", "exec", rt.s, "nft", "delete", "table", f[1], f[2]).Run()
			}
		}
		srv2 = rt.startProc(rt.s, rt.serverArgs()...)
		srv2.waitLog(t, "the restarted server (after removing leftovers)", 20*time.Second, func(out string) bool {
			return strings.Contains(out, "roam client --server")
		})
	}
	t.Logf("server back %v after the crash", time.Since(killed).Round(time.Millisecond))
	if p, _ := os.ReadFile(filepath.Join(rt.state, "pin")); strings.TrimSpace(string(p)) != pin {
		t.Fatalf("the restarted server has a new pin %q, want %q", p, pin)
	}

	cli.waitLog(t, "the client's reconnect", 30*time.Second, func(out string) bool { return logged(out, "reconnected") > 0 })
	t.Logf("client events:\n%s", loggedLines(cli.out.String(), "path changed", "connection lost", "reconnected"))
	if got := rt.tunAddrs(); got != addrs {
		t.Errorf("roam0 addresses changed from %q to %q", addrs, got)
	}
	echo("after the server restart", 30*time.Second)
	cli.alive(t)
}

// TestNetnsRoamingIdle: a tunnel idle for more than twice the QUIC idle
// timeout still carries a ping, without reconnecting.
func TestNetnsRoamingIdle(t *testing.T) {
	requireRoot(t, "ip", "nft", "ping", "go")
	t.Parallel()
	rt := newRoamingTopo(t)
	rt.startServer()
	cli := rt.startClient(roamingServerAddr)
	ping := func() error {
		var err error
		for range 5 {
			var out []byte
			out, err = exec.Command("ip", "netns", "exec", rt.c, "ping", "-c", "1", "-W", "1", roamingInetHost).CombinedOutput()
			if err == nil {
				return nil
			}
			err = fmt.Errorf("%v: %s", err, out)
		}
		return err
	}
	if err := ping(); err != nil {
		t.Fatalf("ping through the fresh tunnel: %v", err)
	}
	idle := 2*DefaultIdleTimeout + 5*time.Second
	select {
	case <-cli.exited:
		t.Fatalf("the client exited while idle (%v):\n%s", cli.err, cli.out.String())
	case <-time.After(idle):
	}
	if err := ping(); err != nil {
		t.Fatalf("ping after %v idle: %v\nclient:\n%s", idle, err, cli.out.String())
	}
	out := cli.out.String()
	if logged(out, "reconnected") > 0 || logged(out, "connection lost") > 0 {
		t.Errorf("the idle tunnel reconnected:\n%s", loggedLines(out, "path changed", "connection lost", "reconnected"))
	}
	cli.alive(t)
}
