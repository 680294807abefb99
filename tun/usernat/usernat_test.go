package usernat

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // substring; empty = no error
	}{
		{"defaults", func(c *Config) { c.MTU = 0 }, ""},
		{"v4 only", func(c *Config) { c.Gateway6 = netip.Addr{}; c.MTU = 576 }, ""},
		{"no prefixes", func(c *Config) { c.Prefixes = nil }, ""},
		{"mtu small", func(c *Config) { c.MTU = 500 }, "Config.MTU 500"},
		{"mtu big", func(c *Config) { c.MTU = 70000 }, "Config.MTU 70000"},
		{"mtu v6", func(c *Config) { c.MTU = 1000 }, "too small for IPv6"},
		{"no gateway", func(c *Config) { c.Gateway4, c.Gateway6 = netip.Addr{}, netip.Addr{} }, "both unset"},
		{"gw4 is v6", func(c *Config) { c.Gateway4 = testGW6 }, "Config.Gateway4"},
		{"gw6 is v4", func(c *Config) { c.Gateway6 = testGW4 }, "Config.Gateway6"},
		{"gw outside pool", func(c *Config) { c.Gateway4 = netip.MustParseAddr("10.1.0.1") }, "lies in none of Config.Prefixes"},
		{"bad prefix", func(c *Config) { c.Prefixes = append(c.Prefixes, netip.Prefix{}) }, "Config.Prefixes[2]"},
		{"negative timeout", func(c *Config) { c.DialTimeout = -1 }, "Config.DialTimeout"},
		{"negative idle", func(c *Config) { c.UDPIdleTimeout = -1 }, "Config.UDPIdleTimeout"},
		{"negative flows", func(c *Config) { c.MaxFlows = -1 }, "Config.MaxFlows"},
		{"dns", func(c *Config) { c.DNS = netip.MustParseAddrPort("127.0.0.53:53") }, ""},
		{"dns port 0", func(c *Config) { c.DNS = netip.MustParseAddrPort("127.0.0.53:0") }, "Config.DNS"},
		{"dns unspecified", func(c *Config) { c.DNS = netip.MustParseAddrPort("0.0.0.0:53") }, "Config.DNS"},
		{"dns is a gateway", func(c *Config) { c.DNS = netip.AddrPortFrom(testGW4, 53) }, "lies in the client pool"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.mod(&cfg)
			s, err := New(cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if mtu, _ := s.MTU(); mtu != cfg.MTU && !(cfg.MTU == 0 && mtu == DefaultMTU) {
					t.Errorf("MTU() = %d", mtu)
				}
				s.Close()
				return
			}
			if err == nil {
				s.Close()
				t.Fatalf("New succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not contain %q", err, tt.wantErr)
			}
		})
	}
}

// stream is a deterministic pseudo-random byte stream.
func stream(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

func TestTCPGateway(t *testing.T) {
	const size = 10 << 20
	if testing.Short() {
		t.Skip("10 MB transfer")
	}
	for _, tt := range []struct {
		name     string
		listen   string
		gateway  netip.Addr
		listenIP string
	}{
		{"ipv4", "tcp4", testGW4, "127.0.0.1:0"},
		{"ipv6", "tcp6", testGW6, "[::1]:0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, testConfig())
			ln, err := net.Listen(tt.listen, tt.listenIP)
			if err != nil {
				t.Skipf("listen %s: %v", tt.listenIP, err)
			}
			defer ln.Close()
			up, down := stream(1, size), stream(2, size)

			srvErr := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					srvErr <- err
					return
				}
				defer c.Close()
				got, err := io.ReadAll(c) // until the client's half-close
				if err != nil {
					srvErr <- err
					return
				}
				if sha256.Sum256(got) != sha256.Sum256(up) {
					srvErr <- errors.New("server: upload corrupted")
					return
				}
				// The client has closed its write side; reply anyway.
				_, err = c.Write(down)
				srvErr <- err
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			c, err := h.cnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(tt.gateway, port))
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			if _, err := c.Write(up); err != nil {
				t.Fatalf("write: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("CloseWrite: %v", err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if err := <-srvErr; err != nil {
				t.Fatal(err)
			}
			if len(got) != size || sha256.Sum256(got) != sha256.Sum256(down) {
				t.Fatalf("download corrupted: %d bytes", len(got))
			}
			st := h.nat.Stats()
			if st.TCPFlowsOpened != 1 {
				t.Errorf("TCPFlowsOpened = %d, want 1", st.TCPFlowsOpened)
			}
			t.Logf("stats: %+v", st)
		})
	}
}

func TestTCPBidirectional(t *testing.T) {
	// Both directions at once, several connections in parallel.
	h := newHarness(t, testConfig())
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // echo server with half-close
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := h.cnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(testGW4, port))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			data := stream(uint64(10+i), 1<<20)
			go func() {
				c.Write(data)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data) {
				errs <- errors.New("echo mismatch")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestTCPRefused(t *testing.T) {
	h := newHarness(t, testConfig())
	for _, tt := range []struct {
		name, network, addr string
		gw                  netip.Addr
	}{
		{"ipv4", "tcp4", "127.0.0.1:0", testGW4},
		{"ipv6", "tcp6", "[::1]:0", testGW6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen(tt.network, tt.addr)
			if err != nil {
				t.Skip(err)
			}
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			ln.Close() // now refused
			before := h.nat.Stats().DialFailures
			// Bounded by the client's SYN retries if no RST came; the
			// error must be "refused", not a timeout.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := h.cnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(tt.gw, port))
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded, want refused")
			}
			if !strings.Contains(err.Error(), "refused") {
				t.Fatalf("dial error %v, want connection refused", err)
			}
			if got := h.nat.Stats().DialFailures; got != before+1 {
				t.Errorf("DialFailures = %d, want %d", got, before+1)
			}
		})
	}
}

func TestTCPDialTimeoutResets(t *testing.T) {
	cfg := testConfig()
	cfg.DialTimeout = 50 * time.Millisecond
	cfg.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		<-ctx.Done() // a destination that never answers
		return nil, ctx.Err()
	}
	h := newHarness(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := h.cnet.DialContextTCPAddrPort(ctx, netip.MustParseAddrPort("192.0.2.77:80"))
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial error %v, want connection refused (RST)", err)
	}
}

func TestTCPResetPropagates(t *testing.T) {
	h := newHarness(t, testConfig())
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST
	}()
	c, err := h.cnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(testGW4, uint16(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		// The host's RST can overtake the client's connect: it then
		// fails with refused or reset, which is just as right.
		if !strings.Contains(err.Error(), "refused") && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("dial: %v, want success, refused or reset", err)
		}
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	_, err = io.ReadAll(c)
	if err == nil {
		t.Fatal("read ended cleanly, want a reset")
	}
}

func TestUDPEcho(t *testing.T) {
	h := newHarness(t, testConfig())
	for _, tt := range []struct {
		name, network, addr string
		gw                  netip.Addr
	}{
		{"ipv4", "udp4", "127.0.0.1:0", testGW4},
		{"ipv6", "udp6", "[::1]:0", testGW6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pc, err := net.ListenPacket(tt.network, tt.addr)
			if err != nil {
				t.Skip(err)
			}
			defer pc.Close()
			go func() {
				buf := make([]byte, 65536)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
			port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
			c, err := h.cnet.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(tt.gw, port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 65536)
			// Includes datagrams larger than the MTU (fragmented both ways).
			for i, size := range []int{0, 1, 100, 1300, 4000, 20000} {
				msg := stream(uint64(100+i), size)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("write %d: %v", size, err)
				}
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("read %d: %v", size, err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("size %d: echo mismatch (%d bytes back)", size, n)
				}
			}
		})
	}
	if st := h.nat.Stats(); st.UDPFlowsOpened != 2 {
		t.Errorf("UDPFlowsOpened = %d, want 2 (one per family)", st.UDPFlowsOpened)
	}
}

func TestUDPIdleTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.UDPIdleTimeout = 100 * time.Millisecond
	h := newHarness(t, cfg)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := h.cnet.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(testGW4, uint16(pc.LocalAddr().(*net.UDPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := pc.ReadFrom(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "UDP flow to expire", func() bool {
		st := h.nat.Stats()
		return st.UDPFlowsOpened == 1 && st.UDPFlowsActive == 0
	})
	// A new datagram opens a new flow.
	c.Write([]byte("y"))
	if _, _, err := pc.ReadFrom(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if got := h.nat.Stats().UDPFlowsOpened; got != 2 {
		t.Errorf("UDPFlowsOpened = %d, want 2", got)
	}
}

// waitFor polls cond for up to 10 s (a bound, not a timing assertion).
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ping sends an echo request from the client stack to dst and waits for the
// reply. wireguard netstack's PingConn.ReadFrom only waits for a
// notification, and gVisor's ICMP endpoint notifies only when its queue goes
// from empty to non-empty: a reply that arrives before ReadFrom is blocked is
// never seen by that PingConn. So a reader is started first, and if the reply
// still slips past it the attempt is repeated with a fresh PingConn.
func ping(t *testing.T, h *harness, dst netip.Addr, seq int) {
	t.Helper()
	for attempt := 1; attempt <= 5; attempt++ {
		err := pingOnce(h, dst, seq, time.Duration(attempt)*10*time.Millisecond)
		if err == nil {
			return
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("ping %v: %v", dst, err)
		}
	}
	t.Fatalf("ping %v: no reply in 5 attempts (stats %+v)", dst, h.nat.Stats())
}

func pingOnce(h *harness, dst netip.Addr, seq int, settle time.Duration) error {
	pc, err := h.cnet.DialPingAddr(netip.Addr{}, dst)
	if err != nil {
		return err
	}
	defer pc.Close()
	var typ icmp.Type = ipv4.ICMPTypeEcho
	proto := 1
	if dst.Is6() {
		typ, proto = ipv6.ICMPTypeEchoRequest, 58
	}
	data := []byte("roam usernat ping")
	got := make(chan error, 1)
	pc.SetReadDeadline(time.Now().Add(settle + 2*time.Second))
	go func() {
		buf := make([]byte, 1500)
		n, err := pc.Read(buf)
		if err != nil {
			got <- err
			return
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			got <- err
			return
		}
		if e, ok := m.Body.(*icmp.Echo); !ok || e.Seq != seq || !bytes.Equal(e.Data, data) {
			got <- fmt.Errorf("unexpected reply %+v", m.Body)
			return
		}
		got <- nil
	}()
	time.Sleep(settle) // let Read block first (see ping)
	req, _ := (&icmp.Message{Type: typ, Body: &icmp.Echo{Seq: seq, Data: data}}).Marshal(nil)
	if _, err := pc.Write(req); err != nil {
		return err
	}
	return <-got
}

func TestPingGateway(t *testing.T) {
	h := newHarness(t, testConfig())
	for _, gw := range []netip.Addr{testGW4, testGW6} {
		t.Run(gw.String(), func(t *testing.T) {
			ping(t, h, gw, 7)
		})
	}
	if st := h.nat.Stats(); st.EchoSent != 0 {
		t.Errorf("EchoSent = %d, want 0 (the stack answers the gateways)", st.EchoSent)
	}
}

// hostICMP reports which ICMP socket kinds this process may open.
func hostICMP(v6 bool) (ping, raw bool) {
	pn, rn, any := "udp4", "ip4:icmp", "0.0.0.0"
	if v6 {
		pn, rn, any = "udp6", "ip6:ipv6-icmp", "::"
	}
	if c, err := icmp.ListenPacket(pn, any); err == nil {
		c.Close()
		ping = true
	}
	if c, err := icmp.ListenPacket(rn, any); err == nil {
		c.Close()
		raw = true
	}
	return
}

// hostAddr returns an address of this host that is neither loopback nor
// link-local (traffic to it never leaves the host), or false.
func hostAddr(v6 bool) (netip.Addr, bool) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		ip = ip.Unmap()
		if ip.Is6() == v6 && ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() && !testPool4.Contains(ip) && !testPool6.Contains(ip) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// TestPingReoriginated pings one of this host's own addresses through the
// whole path: Write intercepts the echo request, a host ICMP socket re-sends
// it (the kernel answers it locally; nothing leaves the host), and the reply
// comes back to the client stack as a packet from the original destination.
// Loopback destinations cannot be used here: the NAT refuses them, and the
// client stack would drop a reply from 127.0.0.1 as martian.
func TestPingReoriginated(t *testing.T) {
	for _, tt := range []struct {
		name string
		v6   bool
	}{
		{"ipv4", false},
		{"ipv6", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dst, ok := hostAddr(tt.v6)
			if !ok {
				t.Skip("this host has no non-loopback address of this family; TestEchoProxyLoopback covers the proxy")
			}
			if p, r := hostICMP(tt.v6); !p && !r {
				requireRoot(t, "no ping socket allowed (net.ipv4.ping_group_range) and no CAP_NET_RAW")
				t.Skip("no ICMP socket available")
			}
			h := newHarness(t, testConfig())
			ping(t, h, dst, 1)
			ping(t, h, dst, 2)
			// ping may repeat an attempt (see there): at least 2 each way.
			st := h.nat.Stats()
			if st.EchoSent < 2 || st.EchoReplies < 2 || st.EchoDrops != 0 {
				t.Errorf("EchoSent %d EchoReplies %d EchoDrops %d, want >= 2, >= 2, 0", st.EchoSent, st.EchoReplies, st.EchoDrops)
			}
		})
	}
}

func TestPingNoSocket(t *testing.T) {
	cfg := testConfig()
	cfg.echoListen = func(network, address string) (icmpConn, error) {
		return nil, syscall.EPERM
	}
	h := newHarness(t, cfg)
	pkt := buildEchoRequestPacket(false, testClient4, netip.MustParseAddr("192.0.2.99"), 1, 1, []byte("x"))
	for range 3 {
		h.nat.Write([][]byte{pkt}, 0)
	}
	if st := h.nat.Stats(); st.EchoDrops != 3 || st.EchoSent != 0 {
		t.Errorf("EchoDrops %d EchoSent %d, want 3 and 0", st.EchoDrops, st.EchoSent)
	}
}

func TestFlowLimit(t *testing.T) {
	cfg := testConfig()
	cfg.MaxFlows = 1
	h := newHarness(t, cfg)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dst := netip.AddrPortFrom(testGW4, uint16(ln.Addr().(*net.TCPAddr).Port))
	c1, err := h.cnet.DialContextTCPAddrPort(context.Background(), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c2, err := h.cnet.DialContextTCPAddrPort(ctx, dst); err == nil {
		c2.Close()
		t.Fatal("second flow accepted beyond MaxFlows=1")
	}
	// UDP is dropped as well.
	u, err := h.cnet.DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("10.77.0.1:9"))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write([]byte("x"))
	waitFor(t, "FlowLimitDrops >= 2", func() bool { return h.nat.Stats().FlowLimitDrops >= 2 })
}

func TestCloseClientFlows(t *testing.T) {
	h := newHarness(t, testConfig())
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := h.cnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(testGW4, uint16(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-accepted
	defer sc.Close()
	waitFor(t, "flow registered", func() bool { return h.nat.Stats().TCPFlowsActive == 1 })
	if n := h.nat.CloseClientFlows(testClient6); n != 0 {
		t.Errorf("CloseClientFlows(other address) = %d", n)
	}
	if n := h.nat.CloseClientFlows(testClient4); n != 1 {
		t.Errorf("CloseClientFlows = %d, want 1", n)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Errorf("client read after CloseClientFlows: %v, want reset", err)
	}
	sc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := sc.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Errorf("host read after CloseClientFlows: %v, want reset", err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	s, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, 2000)}
		_, err := s.Read(bufs, []int{0}, 0)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Read block (not required for correctness)
	s.Close()
	if err := <-errc; !isClosed(err) {
		t.Fatalf("Read after Close: %v, want os.ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Write([][]byte{{0x45}}, 0); !isClosed(err) {
		t.Fatalf("Write after Close: %v, want os.ErrClosed", err)
	}
	if _, err := s.Read([][]byte{make([]byte, 100)}, []int{0}, 0); !isClosed(err) {
		t.Fatalf("Read after Close: %v", err)
	}
}

func TestReadBatchAndSmallBuffer(t *testing.T) {
	s, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	echo := func(seq int) []byte {
		return append(make([]byte, testHeadroom), buildEchoRequestPacket(false, testClient4, testGW4, 9, uint16(seq), []byte("batch"))...)
	}
	// Three echo requests to the gateway: the stack answers each, and one
	// Read returns all three.
	if n, err := s.Write([][]byte{echo(0), echo(1), echo(2)}, testHeadroom); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	waitFor(t, "3 replies queued", func() bool { return len(s.link.q) == 3 })
	bufs := [][]byte{make([]byte, testHeadroom+1500), make([]byte, testHeadroom+1500), make([]byte, testHeadroom+1500), make([]byte, testHeadroom+1500)}
	sizes := make([]int, len(bufs))
	n, err := s.Read(bufs, sizes, testHeadroom)
	if n != 3 || err != nil {
		t.Fatalf("Read = %d, %v; want 3 packets", n, err)
	}
	for i := range n {
		p := bufs[i][testHeadroom : testHeadroom+sizes[i]]
		var info pktInfo
		(&addrRules{}).classify(p, &info)
		if p[0]>>4 != 4 || p[20] != icmpv4EchoReply || info.src != testGW4 || info.dst != testClient4 || int(p[27]) != i {
			t.Errorf("packet %d is not echo reply %d from the gateway: % x", i, i, p)
		}
	}
	// A buffer too small for the packet: dropped and counted, Read keeps
	// waiting; Close ends it.
	s.Write([][]byte{echo(3)}, testHeadroom)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Read([][]byte{make([]byte, testHeadroom+10)}, sizes, testHeadroom)
		errc <- err
	}()
	waitFor(t, "DropBufferTooSmall", func() bool { return s.Stats().DropBufferTooSmall == 1 })
	s.Close()
	if err := <-errc; !isClosed(err) {
		t.Fatalf("Read: %v, want os.ErrClosed", err)
	}
	if st := s.Stats(); st.PacketsOut != 3 {
		t.Errorf("PacketsOut = %d, want 3", st.PacketsOut)
	}
}

func TestGoroutinesAfterClose(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		h := newHarness(t, testConfig())
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
		// Leave a TCP flow and a UDP flow open; Close must end them.
		c, err := h.cnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(testGW4, uint16(ln.Addr().(*net.TCPAddr).Port)))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.ReadFull(c, make([]byte, 5))
		pc, _ := net.ListenPacket("udp4", "127.0.0.1:0")
		defer pc.Close()
		u, err := h.cnet.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(testGW4, uint16(pc.LocalAddr().(*net.UDPAddr).Port)))
		if err != nil {
			t.Fatal(err)
		}
		u.Write([]byte("x"))
		pc.SetReadDeadline(time.Now().Add(10 * time.Second))
		pc.ReadFrom(make([]byte, 10))
		ping(t, h, testGW4, 1)
		st := h.nat.Stats()
		if st.TCPFlowsActive != 1 || st.UDPFlowsActive != 1 {
			t.Errorf("active flows tcp %d udp %d, want 1 and 1", st.TCPFlowsActive, st.UDPFlowsActive)
		}
		h.close()
		c.Close()
		u.Close()
		if st := h.nat.Stats(); st.TCPFlowsActive != 0 || st.UDPFlowsActive != 0 {
			t.Errorf("after Close: active flows tcp %d udp %d", st.TCPFlowsActive, st.UDPFlowsActive)
		}
	}()
	checkGoroutines(t, base)
}

// TestReadNoAllocs checks that moving queued packets out through Read does
// not allocate, for both kinds of queued packets.
func TestReadNoAllocs(t *testing.T) {
	s, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw := buildEchoReply(false, testGW4, testClient4, 1, 1, make([]byte, 1000))
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(raw)})
	defer pkt.DecRef()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, testHeadroom+1500)
	}
	sizes := make([]int, len(bufs))
	allocs := testing.AllocsPerRun(1000, func() {
		s.link.enqueue(outItem{raw: raw})
		s.link.enqueue(outItem{pkt: pkt.IncRef()})
		n, err := s.Read(bufs, sizes, testHeadroom)
		if n != 2 || err != nil || sizes[0] != len(raw) || sizes[1] != len(raw) {
			t.Fatalf("Read = %d, %v, sizes %v", n, err, sizes[:2])
		}
	})
	if allocs != 0 {
		t.Fatalf("Read allocates %v times per call", allocs)
	}
	if !bytes.Equal(bufs[1][testHeadroom:testHeadroom+sizes[1]], raw) {
		t.Fatal("packet buffer copied wrongly")
	}
}

// TestWriteDrops writes bad packets through a whole Stack: each is dropped
// and counted in the expected counter, and nothing panics.
func TestWriteDrops(t *testing.T) {
	remote := netip.MustParseAddr("192.0.2.10")
	badHdrSum := buildL4Packet(false, testClient4, remote, protoTCP, make([]byte, 20))
	badHdrSum[10] ^= 0xff
	badTCPSum := buildL4Packet(false, testClient4, remote, protoTCP, []byte{0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0xde, 0xad, 0, 0})
	tests := []struct {
		name    string
		pkt     []byte
		offset  int
		counter func(Stats) uint64
	}{
		{"garbage", []byte{0xde, 0xad, 0xbe, 0xef}, 0, func(s Stats) uint64 { return s.DropMalformed }},
		{"empty", nil, 0, func(s Stats) uint64 { return s.DropMalformed }},
		{"offset beyond buffer", make([]byte, 4), 10, func(s Stats) uint64 { return s.DropMalformed }},
		{"echo with bad ICMP checksum", func() []byte {
			p := buildEchoRequestPacket(false, testClient4, remote, 1, 1, []byte("x"))
			p[22] ^= 0xff
			return p
		}(), 0, func(s Stats) uint64 { return s.DropMalformed }},
		{"spoofed source", buildL4Packet(false, remote, remote, protoTCP, make([]byte, 20)), 0, func(s Stats) uint64 { return s.DropSource }},
		{"multicast destination", buildL4Packet(false, testClient4, netip.MustParseAddr("239.1.2.3"), protoUDP, make([]byte, 8)), 0, func(s Stats) uint64 { return s.DropDestination }},
		{"sctp", buildL4Packet(false, testClient4, remote, 132, make([]byte, 12)), 0, func(s Stats) uint64 { return s.DropUnsupported }},
		{"bad IPv4 header checksum", badHdrSum, 0, func(s Stats) uint64 { return s.StackInvalid }},
		{"bad TCP checksum", badTCPSum, 0, func(s Stats) uint64 { return s.StackInvalid }},
	}
	s, err := New(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.counter(s.Stats())
			if n, err := s.Write([][]byte{tt.pkt}, tt.offset); n != 1 || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			if got := tt.counter(s.Stats()); got != before+1 {
				t.Fatalf("counter went from %d to %d, want +1 (stats %+v)", before, got, s.Stats())
			}
		})
	}
	if st := s.Stats(); st.TCPFlowsOpened+st.UDPFlowsOpened+st.DialFailures != 0 {
		t.Errorf("a dropped packet opened a flow: %+v", st)
	}
}
