package interop

// Direction B: `roam client` against a proxy built from connect-ip-go's
// server API.
//
//	client namespace ──veth 10.232.1.0/24── proxy namespace
//	  roam client (TUN roam0)                  testProxy (this process)
//
// The proxy assigns 198.18.0.2/32 and 2001:db8:1::2/128 and advertises
// routes to 198.18.1.0–198.18.1.9 (any protocol), 198.18.3.0/24 (UDP only)
// and 2001:db8:2::/112. The client namespace has no other route to those
// addresses, so every packet the test sends to them must cross the tunnel;
// the proxy answers ICMP echo and UDP itself. Both namespaces are created by
// the test and always deleted; the host's own namespace is never changed.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"golang.org/x/net/icmp"
)

const clientToken = "interop-client-token-0123456789"

var (
	assigned4 = netip.MustParsePrefix("198.18.0.2/32")
	assigned6 = netip.MustParsePrefix("2001:db8:1::2/128")

	target4     = netip.MustParseAddr("198.18.1.1")
	target4End  = netip.MustParseAddr("198.18.1.9")  // last address of a non-CIDR range
	past4End    = netip.MustParseAddr("198.18.1.10") // first address after it
	target4UDP  = netip.MustParseAddr("198.18.3.1")  // in a UDP-only range
	target6     = netip.MustParseAddr("2001:db8:2::1")
	past6End    = netip.MustParseAddr("2001:db8:2::1:0")
	proxyRoutes = []connectip.IPRoute{
		{StartIP: netip.MustParseAddr("198.18.1.0"), EndIP: target4End},
		{StartIP: netip.MustParseAddr("198.18.3.0"), EndIP: netip.MustParseAddr("198.18.3.255"), IPProtocol: protoUDP},
		{StartIP: netip.MustParseAddr("2001:db8:2::"), EndIP: netip.MustParseAddr("2001:db8:2::ffff")},
	}
	proxyListen = netip.MustParseAddr("10.232.1.1")
)

var nsCounter atomic.Int32

// clientTopo is the two namespaces of one Direction B test.
type clientTopo struct {
	client, proxy string
}

func newClientTopo(t *testing.T) *clientTopo {
	t.Helper()
	p := fmt.Sprintf("roamt-iop-%d-%d", os.Getpid(), nsCounter.Add(1))
	tp := &clientTopo{client: p + "-c", proxy: p + "-p"}
	newNetns(t, tp.client)
	newNetns(t, tp.proxy)
	run(t, "ip", "link", "add", "eth-p", "netns", tp.client, "type", "veth", "peer", "name", "eth-c", "netns", tp.proxy)
	run(t, "ip", "-n", tp.client, "addr", "add", "10.232.1.2/24", "dev", "eth-p")
	run(t, "ip", "-n", tp.client, "link", "set", "eth-p", "up")
	run(t, "ip", "-n", tp.proxy, "addr", "add", proxyListen.String()+"/24", "dev", "eth-c")
	run(t, "ip", "-n", tp.proxy, "link", "set", "eth-c", "up")
	return tp
}

// startClient runs `roam client` in the client namespace.
func (tp *clientTopo) startClient(t *testing.T, p *testProxy, token string) *proc {
	t.Helper()
	return startProc(t, "roam client", "ip", "netns", "exec", tp.client, roamBinary(t), "client",
		"--server", p.addr.String(), "--token", token, "--pin", p.pin, "--log-level", "debug")
}

// udpRoundTrip sends payload from a UDP socket in the client namespace to
// dst and checks that the same bytes come back. It returns the socket's
// local address.
func (tp *clientTopo) udpRoundTrip(t *testing.T, dst netip.AddrPort, payload []byte) netip.AddrPort {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(tp.client, func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		t.Fatalf("UDP socket to %v in the client namespace: %v", dst, err)
	}
	defer c.Close()
	buf := make([]byte, 65536)
	for attempt := 1; attempt <= replyAttempts; attempt++ {
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("sending to %v: %v", dst, err)
		}
		c.SetReadDeadline(time.Now().Add(replyTimeout))
		n, err := c.Read(buf)
		if err != nil {
			t.Logf("attempt %d: %v", attempt, err)
			continue
		}
		if string(buf[:n]) != string(payload) {
			t.Fatalf("UDP reply from %v differs:\n got %x\nwant %x", dst, buf[:n], payload)
		}
		return c.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	t.Fatalf("no UDP reply from %v after %d attempts", dst, replyAttempts)
	return netip.AddrPort{}
}

// pingRoundTrip sends ICMP (ICMPv6) echo requests from a raw socket in the
// client namespace to dst and checks the reply byte for byte: the proxy
// builds it from the request, so it must be exactly the request's echo.
func (tp *clientTopo) pingRoundTrip(t *testing.T, src, dst netip.Addr, size int) {
	t.Helper()
	network, laddr := "ip4:icmp", "0.0.0.0"
	if dst.Is6() {
		network, laddr = "ip6:ipv6-icmp", "::"
	}
	var c *icmp.PacketConn
	err := inNetns(tp.client, func() (err error) {
		c, err = icmp.ListenPacket(network, laddr)
		return err
	})
	if err != nil {
		t.Fatalf("ICMP socket in the client namespace: %v", err)
	}
	defer c.Close()
	id := uint16(os.Getpid()) ^ uint16(time.Now().UnixNano())
	data := pattern(size, byte(id))
	buf := make([]byte, 65536)
	for attempt := 1; attempt <= replyAttempts; attempt++ {
		seq := uint16(attempt)
		msg := icmpEcho(src, dst, false, id, seq, data)
		if dst.Is6() {
			msg[2], msg[3] = 0, 0 // the kernel computes ICMPv6 checksums on raw sockets
		}
		if _, err := c.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			t.Fatalf("sending an echo request to %v: %v", dst, err)
		}
		deadline := time.Now().Add(replyTimeout)
		for {
			c.SetReadDeadline(deadline)
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				t.Logf("attempt %d: %v", attempt, err)
				break
			}
			m := buf[:n]
			if len(m) < 8 || m[0] == echoRequestType(dst) || uint16(m[4])<<8|uint16(m[5]) != id {
				continue // not ours (raw sockets see every ICMP message)
			}
			if from.String() != dst.String() {
				t.Fatalf("echo reply from %v, want %v", from, dst)
			}
			want := icmpEcho(dst, src, true, id, uint16(m[6])<<8|uint16(m[7]), data)
			if string(m) != string(want) {
				t.Fatalf("echo reply differs:\n got %x\nwant %x", m, want)
			}
			return
		}
	}
	t.Fatalf("no echo reply from %v after %d attempts", dst, replyAttempts)
}

// sawAtProxy waits until the proxy has received a packet for which match
// is true and returns it.
func (p *testProxy) sawAtProxy(t *testing.T, what string, match func(ipPacket) bool) ipPacket {
	t.Helper()
	timeout := time.After(replyTimeout * replyAttempts)
	for {
		select {
		case pkt := <-p.seen:
			if match(pkt) {
				return pkt
			}
		case <-timeout:
			t.Fatalf("the proxy never received %s", what)
			return ipPacket{}
		}
	}
}

// drainSeen forgets what the proxy has received so far.
func (p *testProxy) drainSeen() {
	for {
		select {
		case <-p.seen:
		default:
			return
		}
	}
}

// TestRoamClient: `roam client` against connect-ip-go's proxy, which
// assigns addresses and advertises routes unprompted.
func TestRoamClient(t *testing.T) {
	requireRoot(t, "ip", "go")
	tp := newClientTopo(t)
	p := startProxy(t, tp.proxy, proxyListen, proxyConfig{
		token:  clientToken,
		assign: []netip.Prefix{assigned4, assigned6},
		routes: proxyRoutes,
	})
	cli := tp.startClient(t, p, clientToken)
	cli.waitOutput(t, "tunnel up", startTimeout)

	t.Run("request", func(t *testing.T) {
		var r seenRequest
		select {
		case r = <-p.requests:
		default:
			t.Fatal("the proxy saw no request")
		}
		// RFC 9484 §4.4 (HTTP/3 requests) and Roam's expansion of the
		// default template (§3) with target=* and ipproto=*.
		want := seenRequest{Method: "CONNECT", Protocol: "connect-ip", Host: p.addr.String(),
			Path: "/.well-known/masque/ip/*/*/", Status: 200}
		got := r
		got.Header = nil
		// RFC 6570 simple expansion of "*" gives "%2A"; the RFC 9484 §4.4
		// example shows a literal "*". A proxy decodes the variables'
		// percent-encoding (§4.1), so both mean the wildcard.
		if u, err := url.PathUnescape(got.Path); err == nil {
			if u != got.Path {
				t.Logf(":path %s (decodes to %s)", got.Path, u)
			}
			got.Path = u
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("request %+v, want %+v", got, want)
		}
		if v := r.Header.Get("Capsule-Protocol"); v != "?1" {
			t.Errorf("Capsule-Protocol request header %q, want ?1", v)
		}
	})
	t.Run("device", func(t *testing.T) {
		out := run(t, "ip", "-n", tp.client, "addr", "show", "dev", "roam0")
		for _, a := range []netip.Prefix{assigned4, assigned6} {
			if !strings.Contains(out, a.String()) {
				t.Errorf("roam0 lacks the assigned %v:\n%s", a, out)
			}
		}
	})

	t.Run("udp4", func(t *testing.T) {
		for _, size := range []int{1, 100, 1200} {
			payload := pattern(size, 4)
			p.drainSeen()
			local := tp.udpRoundTrip(t, netip.AddrPortFrom(target4, 7), payload)
			pkt := p.sawAtProxy(t, "the UDP datagram", func(q ipPacket) bool {
				return q.Proto == protoUDP && string(q.Payload[8:]) == string(payload)
			})
			if pkt.Src != assigned4.Addr() || pkt.Dst != target4 || local.Addr() != assigned4.Addr() {
				t.Errorf("proxy saw %v from local address %v; want %v -> %v", pkt, local, assigned4.Addr(), target4)
			}
			t.Logf("proxy saw %v", pkt)
		}
	})
	t.Run("udp6", func(t *testing.T) {
		for _, size := range []int{1, 100, 1200} {
			payload := pattern(size, 6)
			p.drainSeen()
			tp.udpRoundTrip(t, netip.AddrPortFrom(target6, 7), payload)
			pkt := p.sawAtProxy(t, "the UDP datagram", func(q ipPacket) bool {
				return q.Proto == protoUDP && string(q.Payload[8:]) == string(payload)
			})
			if pkt.Src != assigned6.Addr() || pkt.Dst != target6 {
				t.Errorf("proxy saw %v; want %v -> %v", pkt, assigned6.Addr(), target6)
			}
			t.Logf("proxy saw %v", pkt)
		}
	})
	t.Run("icmp4-echo", func(t *testing.T) {
		for _, size := range []int{0, 56, 1200} {
			tp.pingRoundTrip(t, assigned4.Addr(), target4, size)
		}
	})
	t.Run("icmp6-echo", func(t *testing.T) {
		for _, size := range []int{0, 56, 1200} {
			tp.pingRoundTrip(t, assigned6.Addr(), target6, size)
		}
	})

	// Range semantics (RFC 9484 §4.7.3): start and end are inclusive and
	// need not be a CIDR prefix.
	t.Run("range-end", func(t *testing.T) {
		tp.udpRoundTrip(t, netip.AddrPortFrom(target4End, 7), []byte("last address of the range"))
		tp.pingRoundTrip(t, assigned4.Addr(), target4End, 56)
	})
	t.Run("outside-routes", func(t *testing.T) {
		for _, dst := range []netip.Addr{past4End, past6End} {
			err := inNetns(tp.client, func() error {
				c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 7)))
				if err == nil {
					c.Close()
				}
				return err
			})
			if !errors.Is(err, syscall.ENETUNREACH) {
				t.Errorf("UDP to %v (outside the advertised routes): %v, want network unreachable (no route)", dst, err)
			}
		}
	})

	// A route limited to UDP carries UDP, and ICMP too: RFC 9484 §4.7.3,
	// "ICMP traffic is always allowed, regardless of the value of this
	// field".
	t.Run("udp-only-route/udp", func(t *testing.T) {
		tp.udpRoundTrip(t, netip.AddrPortFrom(target4UDP, 7), []byte("udp-only route"))
	})
	t.Run("udp-only-route/icmp-echo", func(t *testing.T) {
		t.Cleanup(func() {
			if t.Failed() {
				t.Log("this case checks RFC 9484 §4.7.3: ICMP is always allowed regardless of a route's IP Protocol; " +
					"Roam's client uplink filter (routeSet.allows in tunnel/routes.go) drops ICMP to a UDP-only route")
			}
		})
		tp.pingRoundTrip(t, assigned4.Addr(), target4UDP, 56)
	})

	t.Run("shutdown", func(t *testing.T) {
		cli.stop(t)
		select {
		case err := <-p.ended:
			if err != nil {
				t.Errorf("proxy session ended with %v", err)
			}
		case <-time.After(exitTimeout):
			t.Error("the proxy session did not end after the client exited")
		}
		if out, _ := exec.Command("ip", "-n", tp.client, "link", "show", "roam0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
			t.Errorf("roam0 still present after the client exited: %s", out)
		}
	})
}

// TestRoamClientAddressRequest: a proxy that assigns addresses only in
// answer to ADDRESS_REQUEST. RFC 9484 §4.7.1: "the endpoint that is
// expecting an address assignment MUST send an ADDRESS_REQUEST capsule".
func TestRoamClientAddressRequest(t *testing.T) {
	requireRoot(t, "ip", "go")
	tp := newClientTopo(t)
	p := startProxy(t, tp.proxy, proxyListen, proxyConfig{
		token:     clientToken,
		assign:    []netip.Prefix{assigned4, assigned6},
		onRequest: true,
		routes:    proxyRoutes,
	})
	cli := tp.startClient(t, p, clientToken)
	t.Cleanup(func() {
		if t.Failed() && len(p.addrReqs) == 0 {
			t.Log("roam client sent no ADDRESS_REQUEST: RFC 9484 §4.7.1 requires one from an endpoint that expects " +
				"an assignment; Roam's tunnel.Client waits for an unsolicited ADDRESS_ASSIGN instead")
		}
	})
	cli.waitOutput(t, "tunnel up", startTimeout)
	select {
	case got := <-p.addrReqs:
		t.Logf("ADDRESS_REQUEST for %v", got)
	default:
		t.Error("tunnel up without an ADDRESS_REQUEST?")
	}
	tp.udpRoundTrip(t, netip.AddrPortFrom(target4, 7), []byte("assigned on request, v4"))
	tp.udpRoundTrip(t, netip.AddrPortFrom(target6, 7), []byte("assigned on request, v6"))
	cli.stop(t)
}

// TestRoamClientAuth: the proxy refuses a wrong token with 401 and the
// client gives up with a clear error.
func TestRoamClientAuth(t *testing.T) {
	requireRoot(t, "ip", "go")
	tp := newClientTopo(t)
	p := startProxy(t, tp.proxy, proxyListen, proxyConfig{token: clientToken, assign: []netip.Prefix{assigned4, assigned6}, routes: proxyRoutes})
	cli := tp.startClient(t, p, "not-the-token-0123456789")
	err := cli.wait(t, startTimeout)
	if err == nil {
		t.Fatal("roam client exited successfully with a wrong token")
	}
	if !strings.Contains(cli.stderr.String(), "authentication failed") {
		t.Errorf("roam client's error does not say authentication failed:\n%s", cli.stderr)
	}
	select {
	case r := <-p.requests:
		if r.Status != 401 {
			t.Errorf("proxy answered %d, want 401", r.Status)
		}
	default:
		t.Error("the proxy saw no request")
	}
}
