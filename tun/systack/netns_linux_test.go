package systack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun"
	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/flow/flowtest"
)

// The kernel tests run the Stack on a real TUN device (wireguard-go's,
// with virtio-net headers: the kernel's TSO bursts arrive split, writes
// are coalesced) in a network namespace the test creates; the
// applications are the namespace's kernel TCP, and Connect dials a test
// server on the host's loopback.

var (
	remote4 = netip.MustParseAddr("192.0.2.80")
	remote6 = netip.MustParseAddr("2001:db8::80")
	local4  = netip.MustParseAddr("10.9.0.2")
	local6  = netip.MustParseAddr("fd09::2")
)

const (
	testMTU = 1400 // as flowstack's kernel tests, for comparable benchmarks
	tunName = "roamsys0"
)

// needRoot skips the test when not root, or fails it when CI=true.
func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("needs root (TUN device, network namespace), and CI=true")
	}
	tb.Skip("needs root (TUN device, network namespace)")
}

var netnsCounter atomic.Int64

// inNetns runs fn on this goroutine's OS thread switched into ns.
func inNetns(tb testing.TB, ns netns.NsHandle, fn func()) {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("get netns: %v", err)
	}
	if err := netns.Set(ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		tb.Fatalf("enter netns: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			tb.Errorf("restore netns: %v (the thread stays locked and dies)", err)
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	}()
	fn()
}

// kernelModes are the modes the kernel tests run in.
var kernelModes = []Mode{ModeRedirect, ModeRewrite}

// forModes runs f as a subtest for each of kernelModes.
func forModes(t *testing.T, f func(t *testing.T, mode Mode)) {
	for _, m := range kernelModes {
		t.Run(m.String(), func(t *testing.T) { f(t, m) })
	}
}

// kernelHarness is a Stack on TUN roamsys0 in namespace
// "roamsys-<pid>-<n>" (loopback up; 10.9.0.2/24, fd09::2/64; routes to
// 192.0.2.0/24 and 2001:db8::/64 into the TUN), with a reader goroutine
// that sends the packets Stack.Read returns to passed and counts the TCP
// ones in passedTCP.
type kernelHarness struct {
	ns        netns.NsHandle
	ifName    string
	stack     *Stack
	wg        sync.WaitGroup
	passed    chan []byte
	passedTCP atomic.Int64
}

// harnessOpts are newKernelHarnessOpts's options.
type harnessOpts struct {
	// policy: the namespace routes everything into the TUN the way the
	// client does (tun.InstallRouting: full tunnel, policy rules,
	// reply-mark table) and uses strict reverse-path filtering, instead
	// of the two plain routes.
	policy bool
	// beforeNew, if set, runs on a thread in the namespace, after the
	// TUN is configured and before New.
	beforeNew func(ifName string)
	// newFails: New is expected to fail; the harness has no Stack then.
	newFails func(err error)
}

func newKernelHarness(tb testing.TB, cfg Config) *kernelHarness {
	tb.Helper()
	return newKernelHarnessOpts(tb, cfg, harnessOpts{})
}

// newKernelHarnessRouting is newKernelHarness with harnessOpts.policy.
func newKernelHarnessRouting(tb testing.TB, cfg Config, policy bool) *kernelHarness {
	tb.Helper()
	return newKernelHarnessOpts(tb, cfg, harnessOpts{policy: policy})
}

// newKernelHarnessOpts is newKernelHarness with options. A Stack in a
// mode other than cfg.Mode (unless ModeAuto) fails the test.
func newKernelHarnessOpts(tb testing.TB, cfg Config, opts harnessOpts) *kernelHarness {
	tb.Helper()
	needRoot(tb)
	policy := opts.policy
	name := fmt.Sprintf("roamsys-%d-%d", os.Getpid(), netnsCounter.Add(1))
	h := &kernelHarness{passed: make(chan []byte, 1024)}
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			tb.Fatalf("get netns: %v", err)
		}
		defer orig.Close()
		h.ns, err = netns.NewNamed(name) // switches this thread into it
		if err != nil {
			tb.Fatalf("create netns %s: %v", name, err)
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				panic(fmt.Sprintf("restore netns: %v", err))
			}
		}()
		tb.Cleanup(func() {
			h.ns.Close()
			if err := netns.DeleteNamed(name); err != nil {
				tb.Errorf("delete netns %s: %v", name, err)
			}
		})
		if lo, err := netlink.LinkByName("lo"); err != nil {
			tb.Fatal(err)
		} else if err := netlink.LinkSetUp(lo); err != nil {
			tb.Fatalf("loopback up: %v", err)
		}
		dev, real, err := tun.Create(tunName, testMTU)
		if err != nil {
			tb.Fatalf("create TUN: %v", err)
		}
		if err := tun.ConfigureLink(real, []netip.Prefix{netip.PrefixFrom(local4, 24), netip.PrefixFrom(local6, 64)}, testMTU); err != nil {
			dev.Close()
			tb.Fatal(err)
		}
		link, err := netlink.LinkByName(real)
		if err != nil {
			dev.Close()
			tb.Fatal(err)
		}
		for _, p := range []string{"192.0.2.0/24", "2001:db8::/64"} {
			if policy {
				break
			}
			_, ipnet, _ := net.ParseCIDR(p)
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipnet}); err != nil {
				dev.Close()
				tb.Fatalf("route %s: %v", p, err)
			}
		}
		if policy {
			for _, f := range []string{"/proc/sys/net/ipv4/conf/all/rp_filter", "/proc/sys/net/ipv4/conf/" + real + "/rp_filter"} {
				if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
					dev.Close()
					tb.Fatalf("strict rp_filter: %v", err)
				}
			}
			rt, err := tun.InstallRouting(tun.RoutingConfig{TunName: real, Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}})
			if err != nil {
				dev.Close()
				tb.Fatalf("InstallRouting: %v", err)
			}
			tb.Cleanup(func() { rt.Close() }) // before the namespace goes (cleanups run last first)
		}
		// The kernel makes the IPv6 address usable (its local route)
		// from a work queue: until then connections to it are routed
		// into the TUN like any other in its prefix.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			rs, err := netlink.RouteGet(local6.AsSlice())
			if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
				break
			}
			if time.Now().After(deadline) {
				dev.Close()
				tb.Fatalf("%v never became a local address: %v %v", local6, rs, err)
			}
		}
		h.ifName = real
		if opts.beforeNew != nil {
			opts.beforeNew(real)
		}
		cfg.Dev, cfg.IfName = dev, real
		h.stack, err = New(cfg) // the listener goes into the namespace
		if opts.newFails != nil {
			if err == nil {
				h.stack.Close()
				tb.Fatalf("New succeeded in mode %v", h.stack.Mode())
			}
			dev.Close()
			opts.newFails(err)
			return
		}
		if err != nil {
			dev.Close()
			tb.Fatalf("New: %v", err)
		}
		if cfg.Mode != ModeAuto && h.stack.Mode() != cfg.Mode {
			h.stack.Close()
			tb.Fatalf("Stack runs in mode %v; want %v", h.stack.Mode(), cfg.Mode)
		}
	}()
	if h.stack == nil {
		return h
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		bs := h.stack.BatchSize()
		bufs, sizes := make([][]byte, bs), make([]int, bs)
		for i := range bufs {
			bufs[i] = make([]byte, datagram.BufSize)
		}
		for {
			n, err := h.stack.Read(bufs, sizes, datagram.Headroom)
			for i := range n {
				var p datagram.Packet
				var tp tcpPacket
				if parseTCP(bufs[i][datagram.Headroom:datagram.Headroom+sizes[i]], &p, &tp) == isTCP {
					h.passedTCP.Add(1)
				}
				select {
				case h.passed <- append([]byte(nil), bufs[i][datagram.Headroom:datagram.Headroom+sizes[i]]...):
				default:
				}
			}
			if err != nil && errors.Is(err, os.ErrClosed) {
				return
			}
		}
	}()
	tb.Cleanup(func() {
		h.stack.Close()
		h.wg.Wait()
	})
	return h
}

// dial connects from inside the namespace.
func (h *kernelHarness) dial(tb testing.TB, dst netip.AddrPort) (*net.TCPConn, error) {
	var c net.Conn
	var err error
	inNetns(tb, h.ns, func() {
		d := net.Dialer{Timeout: 30 * time.Second}
		c, err = d.Dial("tcp", dst.String())
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// listenLoopback serves TCP on the host's 127.0.0.1 until the test ends.
func listenLoopback(tb testing.TB, serve func(c *net.TCPConn)) string {
	tb.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// pattern is a deterministic byte stream for connection conn, direction dir.
func pattern(conn int, dir byte) io.Reader {
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], uint64(conn))
	seed[8] = dir
	return rand.NewChaCha8(seed)
}

// TestKernelTUN: in both modes, through the Stack, a connection of the
// namespace's kernel carries 8 MiB both ways byte-exact (an echo, over
// IPv4 and IPv6), half-closes work in both orders, a Connect that fails
// resets the application's connection, and Read passes none of the
// connections' packets to the caller. In redirect mode no packet of them
// crosses the TUN.
func TestKernelTUN(t *testing.T) { forModes(t, testKernelTUN) }

func testKernelTUN(t *testing.T, mode Mode) {
	type key struct{ src, dst netip.AddrPort }
	var mu sync.Mutex
	seen := map[key]bool{}
	echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() })
	// Port 9: the server sends first and half-closes, then reads to EOF.
	halfDone := make(chan string, 2)
	half := listenLoopback(t, func(c *net.TCPConn) {
		c.Write([]byte("server speaks first"))
		c.CloseWrite()
		b, err := io.ReadAll(c)
		if err != nil {
			halfDone <- "error: " + err.Error()
			return
		}
		halfDone <- string(b)
	})
	h := newKernelHarness(t, Config{Mode: mode, Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		mu.Lock()
		seen[key{src, dst}] = true
		mu.Unlock()
		target := echo
		switch dst.Port() {
		case 1:
			return nil, &flow.Error{Kind: flow.Refused, Dst: dst.String()}
		case 2:
			return nil, &flow.Error{Kind: flow.Unreachable, Dst: dst.String()}
		case 9:
			target = half
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			return nil, &flow.Error{Kind: flow.Classify(err), Dst: dst.String(), Err: err}
		}
		return flowtest.NewConnStream(c), nil
	}})
	const size = 8 << 20
	for i, remote := range []netip.Addr{remote4, remote6} {
		t.Run(fmt.Sprintf("echo 8MiB %v", remote), func(t *testing.T) {
			dst := netip.AddrPortFrom(remote, 7)
			c, err := h.dial(t, dst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			wrote := make(chan error, 1)
			go func() {
				_, err := io.Copy(c, io.LimitReader(pattern(i, 'u'), size))
				c.CloseWrite()
				wrote <- err
			}()
			if err := expectStream(c, pattern(i, 'u'), size); err != nil {
				t.Fatalf("echo: %v", err)
			}
			if err := <-wrote; err != nil {
				t.Fatalf("write: %v", err)
			}
			src := netip.MustParseAddrPort(c.LocalAddr().String())
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			mu.Lock()
			defer mu.Unlock()
			if !seen[key{src, dst}] {
				t.Errorf("Connect not called with src %v dst %v; got %v", src, dst, seen)
			}
		})
		t.Run(fmt.Sprintf("half-close %v", remote), func(t *testing.T) {
			c, err := h.dial(t, netip.AddrPortFrom(remote, 9))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			b, err := io.ReadAll(c)
			if err != nil || string(b) != "server speaks first" {
				t.Fatalf("read to EOF: %q, %v", b, err)
			}
			if _, err := c.Write([]byte("the application answers after EOF")); err != nil {
				t.Fatalf("write after EOF: %v", err)
			}
			c.CloseWrite()
			select {
			case got := <-halfDone:
				if got != "the application answers after EOF" {
					t.Fatalf("server read %q", got)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("server did not get the application's data and FIN")
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("read after both FINs: %d, %v; want EOF", n, err)
			}
		})
		for _, port := range []uint16{1, 2} {
			t.Run(fmt.Sprintf("connect fails, port %d, %v", port, remote), func(t *testing.T) {
				// The local handshake completes before Connect; a RST
				// that arrives before the dialer checks SO_ERROR fails
				// the dial itself.
				c, err := h.dial(t, netip.AddrPortFrom(remote, port))
				if errors.Is(err, syscall.ECONNRESET) {
					return
				}
				if err != nil {
					t.Fatalf("dial: %v; want success or ECONNRESET", err)
				}
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, err = c.Read(make([]byte, 1))
				if !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("read: %v; want ECONNRESET", err)
				}
			})
		}
	}
	st := h.stack.Stats()
	t.Logf("stats: %+v", st)
	if st.FlowsOpened != 4 || st.FlowsRefused != 2 || st.FlowsUnreachable != 2 || st.AcceptUnknown != 0 {
		t.Errorf("stats %+v; want 4 opened, 2 refused, 2 unreachable", st)
	}
	if n := h.passedTCP.Load(); n != 0 {
		t.Errorf("Read passed %d TCP packets to the caller; want none", n)
	}
	switch mode {
	case ModeRewrite:
		if st.PacketsToListener == 0 || st.PacketsToApp == 0 || st.DropNoEntry != 0 || st.WriteErrors != 0 || st.NATOpened != 8 {
			t.Errorf("stats %+v; want packets rewritten both ways, 8 NAT entries, no drops", st)
		}
	case ModeRedirect:
		if st.PacketsToListener != 0 || st.PacketsToApp != 0 || st.NATOpened != 0 {
			t.Errorf("stats %+v; want no packets rewritten, no NAT entries", st)
		}
		if n := h.tableRedirects(t); n != 8 {
			t.Errorf("the nftables rules redirected %d SYNs; want 8", n)
		}
	}
	if st.BytesUp < 2*size || st.BytesDown < 2*size {
		t.Errorf("BytesUp %d BytesDown %d; want at least %d each", st.BytesUp, st.BytesDown, 2*size)
	}
}

// expectStream reads r to EOF and checks it is exactly n bytes of want.
func expectStream(r io.Reader, want io.Reader, n int64) error {
	got, exp := make([]byte, 32<<10), make([]byte, 32<<10)
	var total int64
	for {
		k, err := r.Read(got)
		if k > 0 {
			if total+int64(k) > n {
				return fmt.Errorf("more than the %d bytes expected", n)
			}
			io.ReadFull(want, exp[:k])
			if !bytes.Equal(got[:k], exp[:k]) {
				return fmt.Errorf("bytes %d..%d differ", total, total+int64(k))
			}
			total += int64(k)
		}
		if err == io.EOF {
			if total != n {
				return fmt.Errorf("EOF after %d bytes, want %d", total, n)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", total, err)
		}
	}
}

// TestKernelTUNPolicyRouting: with the client's own routing in the
// namespace (full tunnel through policy rules, strict rp_filter), in
// redirect mode the redirected connections reach the loopback listener,
// and in rewrite mode the rewritten packets are accepted from the TUN and
// the listener's answers leave through it, over IPv4 and IPv6: 1 MiB
// echoes byte-exact.
func TestKernelTUNPolicyRouting(t *testing.T) { forModes(t, testKernelTUNPolicyRouting) }

func testKernelTUNPolicyRouting(t *testing.T, mode Mode) {
	echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() })
	h := newKernelHarnessRouting(t, Config{Mode: mode, Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", echo)
		if err != nil {
			return nil, err
		}
		return flowtest.NewConnStream(c), nil
	}}, true)
	const size = 1 << 20
	for i, remote := range []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8:77::7")} {
		t.Run(remote.String(), func(t *testing.T) {
			c, err := h.dial(t, netip.AddrPortFrom(remote, 443))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go func() {
				io.Copy(c, io.LimitReader(pattern(i, 'p'), size))
				c.CloseWrite()
			}()
			if err := expectStream(c, pattern(i, 'p'), size); err != nil {
				t.Fatalf("echo: %v", err)
			}
		})
	}
	if st := h.stack.Stats(); st.FlowsOpened != 2 || st.DropNoEntry != 0 || st.SYNUnanswered != 0 {
		t.Errorf("stats %+v", st)
	}
	if n := h.passedTCP.Load(); n != 0 {
		t.Errorf("Read passed %d TCP packets to the caller; want none", n)
	}
}

// TestKernelTUNInbound: in both modes, a TCP connection opened from the
// tunnel side toward a listener of the namespace is carried as packets: a
// SYN the caller writes is answered by the kernel with a SYN-ACK that Read
// returns to the caller unchanged (IPv4 and IPv6). In redirect mode the
// SYN-ACK leaves through the TUN but is no new connection, so the nat
// chain does not see it.
func TestKernelTUNInbound(t *testing.T) { forModes(t, testKernelTUNInbound) }

func testKernelTUNInbound(t *testing.T, mode Mode) {
	h := newKernelHarness(t, Config{Mode: mode, Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		return nil, errors.New("no flows in this test")
	}})
	for _, tt := range []struct{ host, peer netip.Addr }{{local4, remote4}, {local6, remote6}} {
		t.Run(tt.host.String(), func(t *testing.T) {
			var ln net.Listener
			var err error
			inNetns(t, h.ns, func() { ln, err = net.Listen("tcp", netip.AddrPortFrom(tt.host, 0).String()) })
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			hostAP := netip.MustParseAddrPort(ln.Addr().String())
			peer := netip.AddrPortFrom(tt.peer, 40000)
			syn := buildTCP(tcpSpec{src: peer, dst: hostAP, flags: flagSYN, seq: 1000})
			deadline := time.After(10 * time.Second)
			for {
				buf := make([]byte, datagram.Headroom, datagram.Headroom+len(syn))
				if _, err := h.stack.Write([][]byte{append(buf, syn...)}, datagram.Headroom); err != nil {
					t.Fatalf("write SYN: %v", err)
				}
				select {
				case pkt := <-h.passed:
					var p datagram.Packet
					var tp tcpPacket
					if parseTCP(pkt, &p, &tp) != isTCP {
						continue // something else the kernel sent (router solicitation, ...)
					}
					if tp.srcPort() != hostAP.Port() || tp.dstPort() != peer.Port() || tp.flags&(flagSYN|flagACK) != flagSYN|flagACK ||
						binary.BigEndian.Uint32(tp.th[8:]) != 1001 {
						t.Fatalf("got TCP %v:%d -> %v:%d flags %#x; want the SYN-ACK", p.Src, tp.srcPort(), p.Dst, tp.dstPort(), tp.flags)
					}
					return
				case <-time.After(time.Second):
				case <-deadline:
					t.Fatal("no SYN-ACK passed to the caller")
				}
			}
		})
	}
	if st := h.stack.Stats(); (mode == ModeRewrite && st.PacketsPassed < 2) || st.NATOpened != 0 || st.AcceptUnknown != 0 {
		t.Errorf("stats %+v; want the SYN-ACKs passed and no NAT entries", st)
	}
	if mode == ModeRedirect {
		if n := h.tableRedirects(t); n != 0 {
			t.Errorf("the nftables rules redirected %d SYNs; want none", n)
		}
	}
}

// cpuTime returns the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkKernelTUN is flowstack's BenchmarkKernelTUN for the system
// stack (root only): the namespace's kernel TCP uploads to or downloads
// from a loopback server through the Stack, 1 MiB per op. The process CPU
// includes the application's and the server's socket calls and the
// kernel's TCP work done in the process's syscalls (both kernel sockets
// of each flow, and the TUN), so compare it with flowstack's number, not
// with zero.
func BenchmarkKernelTUN(b *testing.B) {
	for _, mode := range kernelModes {
		for _, dir := range []string{"upload", "download"} {
			b.Run(mode.String()+"/"+dir, func(b *testing.B) { benchmarkKernelTUN(b, mode, dir) })
		}
	}
}

func benchmarkKernelTUN(b *testing.B, mode Mode, dir string) {
	const chunk = 1 << 20
	addr := listenLoopback(b, func(c *net.TCPConn) {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		if n := int(binary.BigEndian.Uint32(hdr[:])); n > 0 {
			buf := make([]byte, chunk)
			for range n {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
			c.CloseWrite()
			return
		}
		io.Copy(io.Discard, c)
		c.Write([]byte{1})
	})
	h := newKernelHarness(b, Config{Mode: mode, Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return flowtest.NewConnStream(c), nil
	}})
	c, err := h.dial(b, netip.AddrPortFrom(remote4, 5201))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	b.SetBytes(chunk)
	var hdr [8]byte
	if dir == "download" {
		binary.BigEndian.PutUint32(hdr[:], uint32(b.N))
	}
	buf := make([]byte, chunk)
	cpu0, t0 := cpuTime(), time.Now()
	b.ResetTimer()
	c.Write(hdr[:])
	if dir == "upload" {
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.CloseWrite()
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			b.Fatal(err)
		}
	} else if n, err := io.CopyBuffer(io.Discard, c, buf); err != nil || n != int64(b.N)*chunk {
		b.Fatalf("downloaded %d bytes, %v; want %d", n, err, int64(b.N)*chunk)
	}
	b.StopTimer()
	cpu, wall := cpuTime()-cpu0, time.Since(t0)
	gbit := float64(b.N) * chunk * 8 / 1e9
	b.ReportMetric(cpu.Seconds()/gbit, "cpu-s/Gbit")
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
	st := h.stack.Stats()
	b.ReportMetric(float64(st.PacketsToListener+st.PacketsToApp)/float64(b.N), "rewrites/op")
}

// TestKernelTUNClose: in both modes, Close resets the applications' open
// connections (IPv4 and IPv6) and the upstream streams, Read and Write
// then report os.ErrClosed, and the nftables table is gone.
func TestKernelTUNClose(t *testing.T) { forModes(t, testKernelTUNClose) }

func testKernelTUNClose(t *testing.T, mode Mode) {
	upstreamEnded := make(chan error, 2)
	echo := listenLoopback(t, func(c *net.TCPConn) {
		_, err := io.Copy(c, c)
		upstreamEnded <- err
	})
	h := newKernelHarness(t, Config{Mode: mode, Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", echo)
		if err != nil {
			return nil, err
		}
		return flowtest.NewConnStream(c), nil
	}})
	var conns []*net.TCPConn
	for _, remote := range []netip.Addr{remote4, remote6} {
		c, err := h.dial(t, netip.AddrPortFrom(remote, 7))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("echo: %q, %v", b, err)
		}
		conns = append(conns, c)
	}
	if got, want := h.tables(t), mode == ModeRedirect; got[tun.RedirectTableName(h.ifName)] != want {
		t.Errorf("before Close: tables %v; want %s: %v", got, tun.RedirectTableName(h.ifName), want)
	}
	if err := h.stack.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := h.tables(t); got[tun.RedirectTableName(h.ifName)] {
		t.Errorf("after Close: tables %v; want no %s", got, tun.RedirectTableName(h.ifName))
	}
	if err := h.stack.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("connection %d: read after Close: %v; want ECONNRESET (stats %+v)", i, err, h.stack.Stats())
		}
	}
	for range conns {
		select {
		case <-upstreamEnded:
		case <-time.After(10 * time.Second):
			t.Fatal("an upstream connection stayed open after Close")
		}
	}
	if _, err := h.stack.Write([][]byte{make([]byte, 64)}, datagram.Headroom); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	if _, err := h.stack.Read([][]byte{make([]byte, 2048)}, []int{0}, datagram.Headroom); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
}

// TestKernelTUNFirewall: with a firewall in the namespace that drops TCP
// arriving on the TUN (as a default-deny INPUT policy with loopback
// allowed does), in rewrite mode the listener never answers, and the
// retransmitted SYNs are counted and warned about once; in redirect mode
// nothing arrives on the TUN and the connection works.
func TestKernelTUNFirewall(t *testing.T) { forModes(t, testKernelTUNFirewall) }

func testKernelTUNFirewall(t *testing.T, mode Mode) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs nft on PATH, and CI=true")
		}
		t.Skip("needs nft on PATH")
	}
	var logs lockedBuf
	echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c) })
	h := newKernelHarness(t, Config{
		Mode:   mode,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Connect: func(ctx context.Context, _, _ netip.AddrPort) (flow.Stream, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", echo)
			if err != nil {
				return nil, err
			}
			return flowtest.NewConnStream(c), nil
		},
	})
	inNetns(t, h.ns, func() {
		rules := fmt.Sprintf("table inet roamsys_fw {\n chain input {\n type filter hook input priority 0; policy accept;\n iifname %q meta l4proto tcp drop\n }\n}\n", tunName)
		cmd := exec.Command(nft, "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft %s: %v: %s", rules, err, out)
		}
	})
	if mode == ModeRedirect {
		c, err := h.dial(t, netip.AddrPortFrom(remote4, 80))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 4)
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("echo: %q, %v", b, err)
		}
		if logs.String() != "" {
			t.Errorf("logged %q", logs.String())
		}
		return
	}
	inNetns(t, h.ns, func() {
		d := net.Dialer{Timeout: 2500 * time.Millisecond} // the first SYN and its retransmit after 1 s
		if c, err := d.Dial("tcp", netip.AddrPortFrom(remote4, 80).String()); err == nil {
			c.Close()
			t.Fatal("dial through the firewall succeeded")
		}
	})
	if st := h.stack.Stats(); st.SYNUnanswered == 0 {
		t.Fatalf("stats %+v; want unanswered SYNs", st)
	}
	if !strings.Contains(logs.String(), "does not answer") {
		t.Fatalf("no warning logged: %q", logs.String())
	}
}

// lockedBuf is a bytes.Buffer safe for concurrent use (a log sink).
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestKernelTUNConcurrent: in both modes, 64 connections at once (half
// IPv4, half IPv6), 256 KiB echoed byte-exact on each.
func TestKernelTUNConcurrent(t *testing.T) { forModes(t, testKernelTUNConcurrent) }

func testKernelTUNConcurrent(t *testing.T, mode Mode) {
	echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() })
	h := newKernelHarness(t, Config{Mode: mode, Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", echo)
		if err != nil {
			return nil, err
		}
		return flowtest.NewConnStream(c), nil
	}})
	const conns, size = 64, 256 << 10
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		remote := remote4
		if i%2 == 1 {
			remote = remote6
		}
		wg.Go(func() {
			c, err := h.dial(t, netip.AddrPortFrom(remote, uint16(1000+i)))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			go func() {
				io.Copy(c, io.LimitReader(pattern(100+i, 'c'), size))
				c.CloseWrite()
			}()
			if err := expectStream(c, pattern(100+i, 'c'), size); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := h.stack.Stats()
	wantNAT := uint64(conns)
	if mode == ModeRedirect {
		wantNAT = 0
	}
	if st.FlowsOpened != conns || st.NATOpened != wantNAT || st.FlowErrors != 0 || st.DropNoEntry != 0 || st.DropTableFull != 0 {
		t.Errorf("stats %+v; want %d flows, %d NAT entries, no errors or drops", st, conns, wantNAT)
	}
}
