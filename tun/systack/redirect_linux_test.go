package systack

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun"
	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/flow/flowtest"
)

// nft opens an nftables connection to the harness's namespace.
func (h *kernelHarness) nft(tb testing.TB) *nftables.Conn {
	tb.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(h.ns)))
	if err != nil {
		tb.Fatalf("nftables: %v", err)
	}
	return c
}

// tables returns the names of the namespace's inet tables.
func (h *kernelHarness) tables(tb testing.TB) map[string]bool {
	tb.Helper()
	ts, err := h.nft(tb).ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		tb.Fatalf("list tables: %v", err)
	}
	m := map[string]bool{}
	for _, t := range ts {
		m[t.Name] = true
	}
	return m
}

// redirectRules returns the rules of the Stack's table: for each, the
// port it redirects to and its counter's packets.
func (h *kernelHarness) redirectRules(tb testing.TB) (ports []uint16, packets uint64) {
	tb.Helper()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: tun.RedirectTableName(h.ifName)}
	rules, err := h.nft(tb).GetRules(t, &nftables.Chain{Name: "output", Table: t})
	if err != nil {
		tb.Fatalf("rules of %s: %v", t.Name, err)
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Counter:
				packets += e.Packets
			case *expr.Immediate:
				if len(e.Data) == 2 {
					ports = append(ports, binary.BigEndian.Uint16(e.Data))
				}
			}
		}
	}
	return ports, packets
}

// tableRedirects returns how many connections the Stack's nftables rules
// redirected.
func (h *kernelHarness) tableRedirects(tb testing.TB) uint64 {
	_, n := h.redirectRules(tb)
	return n
}

// echoConnect is a Connect that dials the loopback server addr.
func echoConnect(addr string, calls *atomic.Int64) func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
	return func(ctx context.Context, _, _ netip.AddrPort) (flow.Stream, error) {
		if calls != nil {
			calls.Add(1)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return flowtest.NewConnStream(c), nil
	}
}

// pingEcho writes a message on c and expects it back.
func pingEcho(tb testing.TB, c *net.TCPConn) {
	tb.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping")); err != nil {
		tb.Fatalf("write: %v", err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		tb.Fatalf("echo: %q, %v", b, err)
	}
}

// leaveStaleTable creates, in the calling thread's namespace, the
// redirect table for ifName (redirecting to port) without an owner, as
// a crashed run on a kernel without NFT_TABLE_F_OWNER leaves it.
func leaveStaleTable(tb testing.TB, ifName string, port uint16) {
	tb.Helper()
	c, err := nftables.New()
	if err != nil {
		tb.Fatal(err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tun.RedirectTableName(ifName)})
	ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	for _, proto := range []byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: redirectRule(ifName, proto, port)})
	}
	if err := c.Flush(); err != nil {
		tb.Fatalf("stale table: %v", err)
	}
}

// TestKernelTUNRedirectOwnedTable: redirect mode's table belongs to the
// Stack's nftables socket (NFT_TABLE_F_OWNER): another socket cannot
// delete it, and the kernel deletes it when the socket closes, as when
// the process dies, so a crash leaves no redirect to a dead port.
func TestKernelTUNRedirectOwnedTable(t *testing.T) {
	var r *redirectTable
	h := newKernelHarnessOpts(t, Config{Mode: ModeRewrite, Connect: echoConnect("127.0.0.1:1", nil)}, harnessOpts{
		beforeNew: func(ifName string) {
			var err error
			if r, err = installRedirect(ifName, 1, true); err != nil {
				t.Fatal(err)
			}
		},
	})
	name := tun.RedirectTableName(h.ifName)
	if !r.owned {
		if errors.Is(r.ownErr, unix.EOPNOTSUPP) {
			t.Skipf("the kernel cannot own tables (Linux 5.12+): %v", r.ownErr)
		}
		t.Fatalf("table not owned: %v", r.ownErr)
	}
	// New in rewrite mode tried to delete it as stale, and could not.
	if got := h.tables(t); !got[name] {
		t.Fatalf("tables %v: want the owned %s", got, name)
	}
	c := h.nft(t)
	c.DelTable(r.table)
	if err := c.Flush(); !errors.Is(err, unix.EPERM) {
		t.Errorf("another socket deleting the owned table: %v; want EPERM", err)
	}
	r.mu.Lock()
	r.conn.CloseLasting() // as the process dying would
	r.conn = nil
	r.mu.Unlock()
	if got := h.tables(t); got[name] {
		t.Errorf("tables %v: %s outlived its socket", got, name)
	}
}

// TestKernelTUNStaleTable: a table of the Stack's name left by a crashed
// run (here: redirecting to port 1, where nothing listens) is replaced by
// New in redirect mode (its rules then point at the listeners) and deleted
// in rewrite mode; either way connections work.
func TestKernelTUNStaleTable(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c) })
		h := newKernelHarnessOpts(t, Config{Mode: mode, Connect: echoConnect(echo, nil)}, harnessOpts{
			beforeNew: func(ifName string) { leaveStaleTable(t, ifName, 1) },
		})
		switch mode {
		case ModeRedirect:
			ports, _ := h.redirectRules(t)
			if p := h.stack.port; fmt.Sprint(ports) != fmt.Sprint([]uint16{p, p}) {
				t.Errorf("table redirects to %v; want the listener's %d (IPv4, IPv6)", ports, p)
			}
		case ModeRewrite:
			if got := h.tables(t); got[tun.RedirectTableName(h.ifName)] {
				t.Errorf("tables %v: the stale %s is still there", got, tun.RedirectTableName(h.ifName))
			}
		}
		for _, remote := range []netip.Addr{remote4, remote6} {
			c, err := h.dial(t, netip.AddrPortFrom(remote, 7))
			if err != nil {
				t.Fatal(err)
			}
			pingEcho(t, c)
			c.Close()
		}
	})
}

// TestKernelTUNRedirectMaxFlows: in redirect mode Config.MaxFlows bounds
// the connections the Stack serves (the kernel has completed their
// handshake: one over the limit is reset and counted, without a Connect),
// and a flow that ends makes room again.
func TestKernelTUNRedirectMaxFlows(t *testing.T) {
	var calls atomic.Int64
	echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c) })
	h := newKernelHarness(t, Config{Mode: ModeRedirect, MaxFlows: 2, Connect: echoConnect(echo, &calls)})
	dst := netip.AddrPortFrom(remote4, 7)
	var open []*net.TCPConn
	for range 2 {
		c, err := h.dial(t, dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pingEcho(t, c)
		open = append(open, c)
	}
	for _, remote := range []netip.Addr{remote4, remote6} { // both listeners
		c, err := h.dial(t, netip.AddrPortFrom(remote, 7))
		if err == nil {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("connection to %v over MaxFlows: %v; want ECONNRESET", remote, err)
		}
	}
	if st := h.stack.Stats(); st.DropTableFull != 2 || calls.Load() != 2 {
		t.Fatalf("DropTableFull %d, %d Connects; want 2, 2", st.DropTableFull, calls.Load())
	}
	// One flow ends: a new connection gets its place.
	open[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for h.stack.cnt.flows.Load() > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d flows counted 10 s after one ended; want 1", h.stack.cnt.flows.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, err := h.dial(t, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pingEcho(t, c)
}

// TestKernelTUNRedirectDirectDial: in redirect mode, a local process
// that connects to a listener itself (no original destination) is reset
// without a Connect, over IPv4 and IPv6; the listeners' port on the
// host's own addresses is closed.
func TestKernelTUNRedirectDirectDial(t *testing.T) {
	var calls atomic.Int64
	h := newKernelHarness(t, Config{Mode: ModeRedirect, Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
		calls.Add(1)
		return nil, errors.New("no flows in this test")
	}})
	// Local connections to the TUN's own addresses (IPv6: routed to the
	// TUN device, as far as the OUTPUT hook's oifname goes) are not
	// redirected.
	for _, addr := range []netip.Addr{local4, local6} {
		if c, err := h.dial(t, netip.AddrPortFrom(addr, h.stack.port)); !errors.Is(err, syscall.ECONNREFUSED) {
			if err == nil {
				c.Close()
			}
			t.Errorf("dial %v: %v; want ECONNREFUSED", addr, err)
		}
	}
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	for _, addr := range addrs {
		c, err := h.dial(t, netip.AddrPortFrom(addr, h.stack.port))
		if errors.Is(err, syscall.ECONNRESET) {
			continue
		}
		if err != nil {
			t.Fatalf("dial %v: %v", addr, err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("dial %v: read: %v; want ECONNRESET", addr, err)
		}
		c.Close()
	}
	if st := h.stack.Stats(); st.AcceptUnknown != uint64(len(addrs)) || calls.Load() != 0 {
		t.Errorf("stats %+v, %d Connects; want %d unknown, no Connect", st, calls.Load(), len(addrs))
	}
}

// TestKernelTUNAutoFallback: when the nftables table cannot be created,
// ModeAuto runs in rewrite mode and says so, and ModeRedirect fails New
// (leaving the device open).
func TestKernelTUNAutoFallback(t *testing.T) {
	orig := installRedirect
	t.Cleanup(func() { installRedirect = orig })
	installRedirect = func(string, uint16, bool) (*redirectTable, error) {
		return nil, errors.New("systack: test: no nftables")
	}
	echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c) })
	t.Run("auto", func(t *testing.T) {
		var logs lockedBuf
		h := newKernelHarness(t, Config{
			Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
			Connect: echoConnect(echo, nil),
		})
		if h.stack.Mode() != ModeRewrite {
			t.Fatalf("mode %v; want rewrite", h.stack.Mode())
		}
		if l := logs.String(); !strings.Contains(l, "redirect mode unavailable") || !strings.Contains(l, "test: no nftables") ||
			!strings.Contains(l, "mode=rewrite") {
			t.Errorf("logs %q; want the fallback and its reason", l)
		}
		c, err := h.dial(t, netip.AddrPortFrom(remote6, 7))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pingEcho(t, c)
	})
	t.Run("redirect", func(t *testing.T) {
		newKernelHarnessOpts(t, Config{Mode: ModeRedirect, Connect: echoConnect(echo, nil)}, harnessOpts{
			newFails: func(err error) {
				if !strings.Contains(err.Error(), "test: no nftables") {
					t.Errorf("New: %v; want the table's error", err)
				}
			},
		})
	})
}

// TestKernelTUNRedirectNoLoopback6: without ::1 (IPv6 disabled on lo)
// redirect mode runs IPv4 only, and says why in the log.
func TestKernelTUNRedirectNoLoopback6(t *testing.T) {
	echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c) })
	var logs lockedBuf
	h := newKernelHarnessOpts(t, Config{
		Mode:    ModeRedirect,
		Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
		Connect: echoConnect(echo, nil),
	}, harnessOpts{
		beforeNew: func(string) {
			// A thread's /proc/sys/net is its own namespace's.
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6", []byte("1"), 0); err != nil {
				t.Fatalf("disable IPv6 on lo: %v", err)
			}
		},
	})
	if h.stack.v6 || len(h.stack.lns) != 1 {
		t.Fatalf("v6 %v with %d listeners; want IPv4 only", h.stack.v6, len(h.stack.lns))
	}
	if l := logs.String(); !strings.Contains(l, "no listener on ::1") || !strings.Contains(l, "err=") {
		t.Errorf("logs %q; want the IPv4-only warning and its reason", l)
	}
	c, err := h.dial(t, netip.AddrPortFrom(remote4, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pingEcho(t, c)
}

// TestKernelTUNConnectLimits: in both modes, a Connect that outlives
// ConnectTimeout resets the application's connection, and with
// MaxPending 1 a second connection waits for the first's Connect.
func TestKernelTUNConnectLimits(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		echo := listenLoopback(t, func(c *net.TCPConn) { io.Copy(c, c) })
		release := make(chan struct{})
		var releaseOnce sync.Once
		releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
		t.Cleanup(releaseAll) // registered first, so it runs after the harness's: Close cancels ctx
		var calls atomic.Int64
		h := newKernelHarness(t, Config{
			Mode:           mode,
			MaxPending:     1,
			ConnectTimeout: time.Second,
			Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
				calls.Add(1)
				switch dst.Port() {
				case 1: // never answers
					<-ctx.Done()
					return nil, ctx.Err()
				case 2: // waits to be released
					select {
					case <-release:
					case <-ctx.Done():
						return nil, ctx.Err()
					}
				}
				return echoConnect(echo, nil)(ctx, src, dst)
			},
		})
		// Timeout: the application gets a RST after ConnectTimeout.
		c, err := h.dial(t, netip.AddrPortFrom(remote4, 1))
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read: %v; want ECONNRESET after the Connect timeout", err)
		}
		c.Close()
		if st := h.stack.Stats(); st.FlowsFailed != 1 || st.FlowsPending != 0 {
			t.Fatalf("stats %+v; want 1 failed", st)
		}
		// MaxPending 1: the second connection's Connect waits for the
		// first's.
		calls.Store(0)
		first, err := h.dial(t, netip.AddrPortFrom(remote4, 2))
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		second, err := h.dial(t, netip.AddrPortFrom(remote6, 3)) // the kernel completes the handshake
		if err != nil {
			t.Fatal(err)
		}
		defer second.Close()
		time.Sleep(300 * time.Millisecond)
		if n := calls.Load(); n != 1 {
			t.Fatalf("%d Connects while the first is pending; want 1", n)
		}
		releaseAll()
		pingEcho(t, first)
		pingEcho(t, second)
		if n := calls.Load(); n != 2 {
			t.Fatalf("%d Connects; want 2", n)
		}
	})
}

// TestKernelTUNRedirectEarlySYN: with conntrack active in the namespace
// (the client's reply-mark table), a connection whose SYN left before New
// created the table has a conntrack entry without NAT: its SYN and the
// retransmits reach the caller as packets (to go through the tunnel as in
// packet mode), and the table redirects nothing.
func TestKernelTUNRedirectEarlySYN(t *testing.T) {
	dst := netip.MustParseAddrPort("198.51.100.9:81")
	dialed := make(chan error, 1)
	var calls atomic.Int64
	h := newKernelHarnessOpts(t, Config{Mode: ModeRedirect, Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
		calls.Add(1)
		return nil, errors.New("no flows in this test")
	}}, harnessOpts{
		policy: true,
		beforeNew: func(string) {
			ns, err := netns.Get() // this thread's: the harness's namespace
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				defer ns.Close()
				// The thread stays locked, in the namespace, and ends
				// with the goroutine.
				runtime.LockOSThread()
				if err := netns.Set(ns); err != nil {
					dialed <- err
					return
				}
				d := net.Dialer{Timeout: 2500 * time.Millisecond}
				c, err := d.Dial("tcp", dst.String())
				if err == nil {
					c.Close()
					err = errors.New("dial succeeded")
				} else {
					err = nil
				}
				dialed <- err
			}()
			waitSynSent(t, dst)
		},
	})
	if err := <-dialed; err != nil {
		t.Fatalf("dial: %v; want a timeout (nothing answers the packets)", err)
	}
	syns := 0
	for len(h.passed) > 0 {
		pkt := <-h.passed
		var p datagram.Packet
		var tp tcpPacket
		if parseTCP(pkt, &p, &tp) == isTCP && p.Dst == dst.Addr() && tp.dstPort() == dst.Port() && tp.flags&(flagSYN|flagACK) == flagSYN {
			syns++
		}
	}
	if syns < 2 {
		t.Errorf("%d SYNs to %v passed to the caller; want the first and a retransmit", syns, dst)
	}
	if n := h.tableRedirects(t); n != 0 || calls.Load() != 0 {
		t.Errorf("%d redirects, %d Connects; want none", n, calls.Load())
	}
}

// waitSynSent waits until a socket of the calling thread's namespace is in
// SYN_SENT toward dst (IPv4), and a little more for its SYN to leave.
func waitSynSent(tb testing.TB, dst netip.AddrPort) {
	tb.Helper()
	a := dst.Addr().As4()
	want := fmt.Sprintf("%08X:%04X 02", binary.NativeEndian.Uint32(a[:]), dst.Port())
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			tb.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		found := false
		for sc.Scan() {
			if strings.Contains(sc.Text(), want) {
				found = true
			}
		}
		f.Close()
		if found {
			time.Sleep(50 * time.Millisecond)
			return
		}
	}
	tb.Fatalf("no socket in SYN_SENT to %v", dst)
}
