package interop

// Direction A: connect-ip-go's client against `roam server`.
//
// The server runs with --nat userspace, so no privileges are needed. In
// that mode the "host behind the server" is the server host itself, reached
// at the pool gateways: UDP to 100.96.0.1:P / [fd00:96::1]:P is relayed to
// 127.0.0.1:P / [::1]:P, where this test runs a UDP echo server, and ICMP
// echo requests to the gateways are answered by Roam's userspace stack.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
)

// Roam's defaults (cmd/roam: --pool4, --pool6; the first address of each
// pool is the server's gateway address).
var (
	pool4 = netip.MustParsePrefix("100.96.0.0/16")
	pool6 = netip.MustParsePrefix("fd00:96::/64")
	gw4   = netip.MustParseAddr("100.96.0.1")
	gw6   = netip.MustParseAddr("fd00:96::1")
)

const serverToken = "interop-token-0123456789abcdef"

// roamServer is a running `roam server --nat userspace` on loopback.
type roamServer struct {
	addr string // 127.0.0.1:PORT
	pin  [32]byte
	proc *proc
}

func startRoamServer(t *testing.T, extra ...string) *roamServer {
	t.Helper()
	bin := roamBinary(t)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("# interop test\n"+serverToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The server needs a fixed port: take a free one, and try again if
	// somebody else grabbed it in between.
	for attempt := 1; ; attempt++ {
		addr := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
		p := startProc(t, "roam server", append([]string{bin, "server", "--listen", addr, "--state-dir", dir,
			"--tokens", tokens, "--nat", "userspace", "--log-level", "debug"}, extra...)...)
		deadline := time.Now().Add(startTimeout)
		for !strings.Contains(p.stdout.String(), "roam client --server") {
			if p.exited() {
				if attempt < 3 && strings.Contains(p.stderr.String(), "address already in use") {
					break
				}
				t.Fatalf("roam server exited (%v):\n%s", p.err, p.stderr)
			}
			if time.Now().After(deadline) {
				t.Fatalf("roam server not ready within %v:\n%s", startTimeout, p.stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if p.exited() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "pin"))
		if err != nil {
			t.Fatal(err)
		}
		pin, err := parsePin(string(b))
		if err != nil {
			t.Fatal(err)
		}
		return &roamServer{addr: addr, pin: pin, proc: p}
	}
}

// session is one connect-ip-go client tunnel to the server.
type session struct {
	t     *testing.T
	conn  *connectip.Conn
	qconn *quic.Conn
	pkts  chan []byte // packets read from conn; closed when reading fails
}

// wellKnown returns the path of RFC 9484's default template
// /.well-known/masque/ip/{target}/{ipproto}/ with the variables already
// expanded (connect-ip-go's client takes templates without variables).
func wellKnown(target, ipproto string) string {
	return "/.well-known/masque/ip/" + target + "/" + ipproto + "/"
}

// dial opens a QUIC connection to the server (pinned certificate) and a
// CONNECT-IP request for path with connect-ip-go's client over an http3
// ClientConn. authorization, if not empty, is sent as the Authorization
// header. On success the session is closed when the test ends.
func (srv *roamServer) dial(t *testing.T, path, authorization string) (*session, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	qconn, err := quic.DialAddr(ctx, srv.addr, pinnedTLS(srv.pin), &quic.Config{
		EnableDatagrams:   true,
		InitialPacketSize: 1350, // connect-ip-go's own default; 1280-byte packets must fit
		MaxIdleTimeout:    60 * time.Second,
		KeepAlivePeriod:   5 * time.Second,
	})
	if err != nil {
		t.Fatalf("QUIC dial %s: %v", srv.addr, err)
	}
	h3 := (&http3.Transport{EnableDatagrams: true}).NewClientConn(qconn)
	tmpl, err := uritemplate.New("https://" + srv.addr + path)
	if err != nil {
		t.Fatalf("template %q: %v", path, err)
	}
	req, err := connectip.NewRequest(context.Background(), tmpl)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header().Set("Authorization", authorization)
	}
	type result struct {
		conn *connectip.Conn
		rsp  *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, rsp, err := connectip.NewClientConn(h3).Dial(req)
		done <- result{c, rsp, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(startTimeout):
		qconn.CloseWithError(0, "")
		t.Fatalf("no CONNECT-IP response within %v", startTimeout)
	}
	if r.err != nil {
		qconn.CloseWithError(0, "")
		return nil, r.rsp, r.err
	}
	s := &session{t: t, conn: r.conn, qconn: qconn, pkts: make(chan []byte, 64)}
	go func() {
		defer close(s.pkts)
		for {
			b := make([]byte, 2048)
			n, err := s.conn.ReadPacket(b)
			if err != nil {
				return
			}
			s.pkts <- b[:n]
		}
	}()
	t.Cleanup(s.close)
	return s, r.rsp, nil
}

func (s *session) close() {
	if err := s.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		s.t.Logf("closing the CONNECT-IP conn: %v", err)
	}
	s.qconn.CloseWithError(0, "")
}

// assignment waits for the next ADDRESS_ASSIGN.
func (s *session) assignment(t *testing.T) []connectip.AssignedAddress {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	a, err := s.conn.ReceiveAddressAssignment(ctx)
	if err != nil {
		t.Fatalf("waiting for ADDRESS_ASSIGN: %v", err)
	}
	return a
}

// routes waits for the next ROUTE_ADVERTISEMENT.
func (s *session) routes(t *testing.T) []connectip.IPRoute {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	r, err := s.conn.Routes(ctx)
	if err != nil {
		t.Fatalf("waiting for ROUTE_ADVERTISEMENT: %v", err)
	}
	return r
}

// exchange sends build(attempt) until a packet for which isReply is true
// comes back, and returns it. Other packets are logged and ignored. Each
// attempt gets a fresh packet (WritePacket decrements the TTL in place).
func (s *session) exchange(t *testing.T, build func(attempt int) []byte, isReply func(ipPacket) bool) ipPacket {
	t.Helper()
	return s.exchangeWith(t, s.writePacket, build, isReply)
}

// writePacket sends pkt with connect-ip-go's WritePacket.
func (s *session) writePacket(t *testing.T, pkt []byte) {
	t.Helper()
	icmp, err := s.conn.WritePacket(pkt)
	if err != nil {
		t.Fatalf("WritePacket: %v", err)
	}
	if icmp != nil {
		t.Fatalf("WritePacket: the packet (%d bytes) does not fit in a datagram; got ICMP %x", len(pkt), icmp)
	}
}

// exchangeWith is exchange with another way of sending.
func (s *session) exchangeWith(t *testing.T, send func(*testing.T, []byte), build func(attempt int) []byte, isReply func(ipPacket) bool) ipPacket {
	t.Helper()
	for attempt := 1; attempt <= replyAttempts; attempt++ {
		send(t, build(attempt))
		timeout := time.After(replyTimeout)
	wait:
		for {
			select {
			case b, ok := <-s.pkts:
				if !ok {
					t.Fatal("the tunnel closed while waiting for a reply")
				}
				p, err := parseIP(b)
				if err != nil {
					t.Errorf("received a packet that does not parse (%v): %x", err, b)
					continue
				}
				if isReply(p) {
					return p
				}
				t.Logf("ignoring unrelated packet %v", p)
			case <-timeout:
				t.Logf("attempt %d: no reply within %v", attempt, replyTimeout)
				break wait
			}
		}
	}
	t.Fatalf("no reply after %d attempts", replyAttempts)
	return ipPacket{}
}

// checkHeader checks the parts of a reply's IP header that must be exact.
// The TTL/hop limit, IPv4 ID and flags are the replying stack's choice;
// the header checksum was verified by parseIP.
func checkHeader(t *testing.T, p ipPacket, src, dst netip.Addr, proto uint8) {
	t.Helper()
	if p.Src != src || p.Dst != dst || p.Proto != proto {
		t.Errorf("reply header %v; want %s -> %s proto %d", p, src, dst, proto)
	}
	t.Logf("reply %v", p)
}

// pingCheck sends an ICMP (ICMPv6) echo request with a payload of size
// bytes from src to dst and checks the echo reply byte for byte.
func (s *session) pingCheck(t *testing.T, src, dst netip.Addr, size int) {
	t.Helper()
	id := uint16(time.Now().UnixNano())
	data := pattern(size, byte(id))
	reply := s.exchange(t, func(attempt int) []byte {
		return buildIP(src, dst, icmpProto(src), defaultTTL, uint16(attempt), icmpEcho(src, dst, false, id, uint16(attempt), data))
	}, func(p ipPacket) bool {
		return p.Proto == icmpProto(src) && len(p.Payload) >= 8 && p.Payload[0] != echoRequestType(src) &&
			p.Payload[4] == byte(id>>8) && p.Payload[5] == byte(id)
	})
	checkHeader(t, reply, dst, src, icmpProto(src))
	seq := uint16(reply.Payload[6])<<8 | uint16(reply.Payload[7])
	want := icmpEcho(dst, src, true, id, seq, data)
	if string(reply.Payload) != string(want) {
		t.Errorf("echo reply differs:\n got %x\nwant %x", reply.Payload, want)
	}
}

// udpCheck sends a UDP datagram with a payload of size bytes from src to
// dst:port and checks the echoed datagram byte for byte.
func (s *session) udpCheck(t *testing.T, src, dst netip.Addr, port uint16, size int) {
	t.Helper()
	sport := uint16(40000 + time.Now().UnixNano()%20000)
	payload := pattern(size, byte(sport))
	reply := s.exchange(t, func(attempt int) []byte {
		return buildIP(src, dst, protoUDP, defaultTTL, uint16(attempt), udpDatagram(src, dst, sport, port, payload))
	}, func(p ipPacket) bool {
		return p.Proto == protoUDP && len(p.Payload) >= 8 &&
			uint16(p.Payload[0])<<8|uint16(p.Payload[1]) == port && uint16(p.Payload[2])<<8|uint16(p.Payload[3]) == sport
	})
	checkHeader(t, reply, dst, src, protoUDP)
	want := udpDatagram(dst, src, port, sport, payload)
	if string(reply.Payload) != string(want) {
		t.Errorf("UDP reply differs:\n got %x\nwant %x", reply.Payload, want)
	}
}

// pattern returns n bytes of deterministic test data.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i) ^ seed ^ byte(i>>8)*31
	}
	return b
}

// udpEcho runs a UDP echo server on 127.0.0.1:P and [::1]:P (the same P)
// until the test ends, and returns P.
func udpEcho(t *testing.T) uint16 {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		c4, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		port := c4.LocalAddr().(*net.UDPAddr).Port
		c6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback, Port: port})
		if err != nil {
			c4.Close()
			continue
		}
		for _, c := range []*net.UDPConn{c4, c6} {
			t.Cleanup(func() { c.Close() })
			go func() {
				buf := make([]byte, 65536)
				for {
					n, from, err := c.ReadFromUDPAddrPort(buf)
					if err != nil {
						return
					}
					c.WriteToUDPAddrPort(buf[:n], from)
				}
			}()
		}
		return uint16(port)
	}
	t.Fatal("no UDP port free on both 127.0.0.1 and ::1")
	return 0
}

// addrsOf splits an assignment into its IPv4 and IPv6 entries.
func addrsOf(t *testing.T, a []connectip.AssignedAddress) (v4, v6 connectip.AssignedAddress) {
	t.Helper()
	for _, e := range a {
		switch {
		case e.Rejected():
		case e.IPPrefix.Addr().Is4():
			v4 = e
		default:
			v6 = e
		}
	}
	if !v4.IPPrefix.IsValid() || !v6.IPPrefix.IsValid() {
		t.Fatalf("assignment %v lacks an IPv4 or IPv6 address", a)
	}
	return v4, v6
}

var fullRoutes = []connectip.IPRoute{
	{StartIP: netip.MustParseAddr("0.0.0.0"), EndIP: netip.MustParseAddr("255.255.255.255")},
	{StartIP: netip.MustParseAddr("::"), EndIP: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")},
}

// TestRoamServer: connect-ip-go's client talks to `roam server`: capsules,
// ICMP echo and UDP, IPv4 and IPv6, and ADDRESS_REQUEST handling, all on
// one tunnel.
func TestRoamServer(t *testing.T) {
	srv := startRoamServer(t)
	port := udpEcho(t)

	s, rsp, err := srv.dial(t, wellKnown("*", "*"), "Bearer "+serverToken)
	if err != nil {
		t.Fatalf("CONNECT-IP to roam server: %v (response %v)", err, rsp)
	}

	t.Run("response", func(t *testing.T) {
		if rsp.StatusCode != http.StatusOK {
			t.Errorf("status %d, want 200", rsp.StatusCode)
		}
		// RFC 9297 §3.4: endpoints SHOULD send Capsule-Protocol: ?1.
		if got := rsp.Header.Get("Capsule-Protocol"); got != "?1" {
			t.Errorf("Capsule-Protocol response header %q, want ?1", got)
		}
	})

	// Read the capsules here, not in the subtests, so that -run can pick
	// any subtest.
	initial := s.assignment(t)
	a4, a6 := addrsOf(t, initial)
	routes := s.routes(t)
	src4, src6 := a4.IPPrefix.Addr(), a6.IPPrefix.Addr()

	t.Run("address-assign", func(t *testing.T) {
		if len(initial) != 2 {
			t.Fatalf("ADDRESS_ASSIGN %v: want one IPv4 /32 and one IPv6 /128", initial)
		}
		if a4.IPPrefix.Bits() != 32 || !pool4.Contains(a4.IPPrefix.Addr()) || a4.IPPrefix.Addr() == gw4 {
			t.Errorf("IPv4 assignment %v: want a /32 in %v other than the gateway", a4.IPPrefix, pool4)
		}
		if a6.IPPrefix.Bits() != 128 || !pool6.Contains(a6.IPPrefix.Addr()) || a6.IPPrefix.Addr() == gw6 {
			t.Errorf("IPv6 assignment %v: want a /128 in %v other than the gateway", a6.IPPrefix, pool6)
		}
		// RFC 9484 §4.7.1: Request ID 0 for an unsolicited assignment.
		if a4.RequestID != 0 || a6.RequestID != 0 {
			t.Errorf("unsolicited assignment with request IDs %d, %d; want 0", a4.RequestID, a6.RequestID)
		}
	})
	t.Run("route-advertisement", func(t *testing.T) {
		if !slices.Equal(routes, fullRoutes) {
			t.Errorf("ROUTE_ADVERTISEMENT %v, want %v", routes, fullRoutes)
		}
	})

	// The largest sizes make 1280-byte IP packets, the IPv6 minimum
	// link MTU the tunnel must carry (RFC 9484 §7.1).
	t.Run("icmp4-echo", func(t *testing.T) {
		for _, size := range []int{0, 56, 1280 - 28} {
			s.pingCheck(t, src4, gw4, size)
		}
	})
	t.Run("icmp6-echo", func(t *testing.T) {
		for _, size := range []int{0, 56, 1280 - 48} {
			s.pingCheck(t, src6, gw6, size)
		}
	})
	t.Run("udp4", func(t *testing.T) {
		for _, size := range []int{1, 100, 1280 - 28} {
			s.udpCheck(t, src4, gw4, port, size)
		}
	})
	t.Run("udp6", func(t *testing.T) {
		for _, size := range []int{1, 100, 1280 - 48} {
			s.udpCheck(t, src6, gw6, port, size)
		}
	})

	// HTTP datagrams sent straight on the QUIC connection, to try
	// encodings connect-ip-go's WritePacket never produces (RFC 9297 §2.1,
	// RFC 9484 §5 and §6). The CONNECT-IP request is the connection's first
	// request stream: stream 0, quarter stream ID 0.
	t.Run("datagram-encoding", func(t *testing.T) {
		raw := func(prefix ...byte) func(*testing.T, []byte) {
			return func(t *testing.T, pkt []byte) {
				if err := s.qconn.SendDatagram(append(slices.Clip(prefix), pkt...)); err != nil {
					t.Fatalf("SendDatagram: %v", err)
				}
			}
		}
		// A datagram with an unknown (client-allocated, never registered)
		// context ID must be dropped (RFC 9484 §6); its UDP source port
		// marks any reply to it.
		const ctx2Port = 39999
		ctx2Reply := func(p ipPacket) bool {
			return p.Proto == protoUDP && len(p.Payload) >= 8 && uint16(p.Payload[2])<<8|uint16(p.Payload[3]) == ctx2Port
		}
		raw(0x00, 0x02)(t, buildIP(src4, gw4, protoUDP, defaultTTL, 0, udpDatagram(src4, gw4, ctx2Port, port, []byte("context ID 2"))))

		for _, tc := range []struct {
			name   string
			prefix []byte
		}{
			{"minimal", []byte{0x00, 0x00}},
			// RFC 9484 §2: "Variable-length integer values do not need to
			// be encoded in the minimum number of bytes necessary."
			{"two-byte-varints", []byte{0x40, 0x00, 0x40, 0x00}},
			{"eight-byte-context-id", []byte{0x00, 0xc0, 0, 0, 0, 0, 0, 0, 0}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				sport := uint16(41000 + len(tc.prefix))
				payload := []byte("datagram prefix " + tc.name)
				reply := s.exchangeWith(t, raw(tc.prefix...), func(int) []byte {
					return buildIP(src4, gw4, protoUDP, defaultTTL, 0, udpDatagram(src4, gw4, sport, port, payload))
				}, func(p ipPacket) bool {
					if ctx2Reply(p) {
						t.Errorf("Roam forwarded a datagram with context ID 2: got its reply %v", p)
					}
					return p.Proto == protoUDP && len(p.Payload) >= 8 && uint16(p.Payload[2])<<8|uint16(p.Payload[3]) == sport
				})
				if want := udpDatagram(gw4, src4, port, sport, payload); string(reply.Payload) != string(want) {
					t.Errorf("UDP reply differs:\n got %x\nwant %x", reply.Payload, want)
				}
			})
		}
		// The packets above went after the context ID 2 one and were
		// answered; give a reply to it one more second to show up.
		timeout := time.After(time.Second)
		for {
			select {
			case b := <-s.pkts:
				if p, err := parseIP(b); err == nil && ctx2Reply(p) {
					t.Errorf("Roam forwarded a datagram with context ID 2: got its reply %v", p)
				}
				continue
			case <-timeout:
			}
			break
		}
	})

	// RFC 9484 §4.7.2: an ADDRESS_REQUEST is answered with the complete
	// assignment, one entry per Requested Address with its Request ID;
	// refusals are 0.0.0.0/32 or ::/128.
	t.Run("address-request", func(t *testing.T) {
		any4, any6 := netip.MustParsePrefix("0.0.0.0/32"), netip.MustParsePrefix("::/128")
		ids, err := s.conn.RequestAddresses([]netip.Prefix{any4, any6})
		if err != nil {
			t.Fatal(err)
		}
		a := s.assignment(t)
		want := []connectip.AssignedAddress{
			{RequestID: ids[0], IPPrefix: netip.PrefixFrom(src4, 32)},
			{RequestID: ids[1], IPPrefix: netip.PrefixFrom(src6, 128)},
		}
		if !sameAssignment(a, want) {
			t.Fatalf("answer to a request for any address: %v, want %v", a, want)
		}

		// A specific free pool address is granted; one outside the pool
		// is refused.
		next4 := netip.MustParseAddr("100.96.0.200")
		outside := netip.MustParseAddr("192.0.2.1")
		ids, err = s.conn.RequestAddresses([]netip.Prefix{netip.PrefixFrom(next4, 32), netip.PrefixFrom(outside, 32)})
		if err != nil {
			t.Fatal(err)
		}
		a = s.assignment(t)
		var granted, refused, v6 bool
		for _, e := range a {
			switch {
			case e.RequestID == ids[0]:
				granted = e.IPPrefix == netip.PrefixFrom(next4, 32)
			case e.RequestID == ids[1]:
				refused = e.Rejected() && e.IPPrefix.Addr().Is4()
			case e.IPPrefix == netip.PrefixFrom(src6, 128):
				v6 = true
			default:
				t.Errorf("unexpected entry %v", e)
			}
		}
		if !granted || !refused || !v6 {
			t.Fatalf("answer %v to requests %v: want %s/32 granted (ID %d), %s refused as 0.0.0.0/32 (ID %d), %s/128 kept",
				a, ids, next4, ids[0], outside, ids[1], src6)
		}
		// The new address carries traffic.
		s.udpCheck(t, next4, gw4, port, 100)
		s.pingCheck(t, next4, gw4, 56)
	})
}

// sameAssignment compares two assignments as sets.
func sameAssignment(a, b []connectip.AssignedAddress) bool {
	if len(a) != len(b) {
		return false
	}
	for _, e := range a {
		if !slices.Contains(b, e) {
			return false
		}
	}
	return true
}

// TestRoamServerScope: the default template's {target} and {ipproto}
// (RFC 9484 §4.6), one tunnel per case. connect-ip-go's client does not
// expand templates, so the paths are expanded here.
func TestRoamServerScope(t *testing.T) {
	srv := startRoamServer(t)
	port := udpEcho(t)
	route := func(start, end string, proto uint8) connectip.IPRoute {
		return connectip.IPRoute{StartIP: netip.MustParseAddr(start), EndIP: netip.MustParseAddr(end), IPProtocol: proto}
	}
	cases := []struct {
		name   string
		path   string
		routes []connectip.IPRoute // nil: the request must be refused
		udp    []netip.Addr        // gateways to check UDP with
		icmp   []netip.Addr        // gateways to check ICMP echo with
		// why, if set, is logged when the case fails: the rule it checks.
		why string
	}{
		{
			name:   "wildcards",
			path:   wellKnown("*", "*"),
			routes: fullRoutes,
			udp:    []netip.Addr{gw4, gw6},
			icmp:   []netip.Addr{gw4, gw6},
		},
		{
			// RFC 9484 §4.7.3: "ICMP traffic is always allowed,
			// regardless of the value of this field" (IP Protocol), so a
			// tunnel scoped to UDP still carries ICMP echo to the target.
			name:   "ipv4-host-udp-only",
			path:   wellKnown("100.96.0.1", "17"),
			routes: []connectip.IPRoute{route("100.96.0.1", "100.96.0.1", 17)},
			udp:    []netip.Addr{gw4},
			icmp:   []netip.Addr{gw4},
			why: "RFC 9484 §4.7.3: ICMP traffic is always allowed regardless of a route's IP Protocol; " +
				"Roam's routeSet.allows (tunnel/routes.go) drops ICMP to a protocol-scoped route",
		},
		{
			name:   "ipv4-prefix",
			path:   wellKnown("100.96.0.0%2F30", "*"),
			routes: []connectip.IPRoute{route("100.96.0.0", "100.96.0.3", 0)},
			udp:    []netip.Addr{gw4},
			icmp:   []netip.Addr{gw4},
		},
		{
			// Colons percent-encoded as RFC 9484 §4.6 requires.
			name:   "ipv6-host",
			path:   wellKnown("fd00%3A96%3A%3A1", "*"),
			routes: []connectip.IPRoute{route("fd00:96::1", "fd00:96::1", 0)},
			udp:    []netip.Addr{gw6},
			icmp:   []netip.Addr{gw6},
		},
		{
			name:   "ipv6-prefix-udp-only",
			path:   wellKnown("fd00%3A96%3A%3A%2F126", "17"),
			routes: []connectip.IPRoute{route("fd00:96::", "fd00:96::3", 17)},
			udp:    []netip.Addr{gw6},
			icmp:   []netip.Addr{gw6},
			why: "RFC 9484 §4.7.3: ICMP traffic is always allowed regardless of a route's IP Protocol; " +
				"Roam's routeSet.allows (tunnel/routes.go) drops ICMP to a protocol-scoped route",
		},
		{
			// RFC 9484 §4.6: host bits beyond the prefix length "MUST
			// all be set to 0", and a proxy "MUST treat the request as
			// malformed" otherwise.
			name: "prefix-with-host-bits",
			path: wellKnown("100.96.0.1%2F30", "*"),
			why: "RFC 9484 §4.6: a {target} prefix with host bits set is malformed; " +
				"Roam's Server.scopeRoutes (tunnel/server.go) masks it instead of refusing the request",
		},
		{
			name: "ipproto-out-of-range",
			path: wellKnown("*", "256"),
		},
		{
			// Roam does not resolve DNS names in {target}; it refuses
			// the request (RFC 9484 §4.1 lets a proxy reject any request).
			name: "hostname-target",
			path: wellKnown("localhost", "*"),
		},
		{
			// Roam serves CONNECT-IP only at the default template
			// (RFC 9484 §3).
			name: "other-path",
			path: "/vpn",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.why != "" {
				t.Cleanup(func() {
					if t.Failed() {
						t.Log("this case checks: " + tc.why)
					}
				})
			}
			s, rsp, err := srv.dial(t, tc.path, "Bearer "+serverToken)
			if tc.routes == nil {
				if err == nil {
					t.Fatalf("request for %s was accepted (status %d); want it refused", tc.path, rsp.StatusCode)
				}
				if rsp != nil && (rsp.StatusCode < 400 || rsp.StatusCode > 499) {
					t.Errorf("refused with status %d, want 4xx", rsp.StatusCode)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("CONNECT-IP %s: %v", tc.path, err)
			}
			v4, v6 := addrsOf(t, s.assignment(t))
			if got := s.routes(t); !slices.Equal(got, tc.routes) {
				t.Fatalf("ROUTE_ADVERTISEMENT %v, want %v", got, tc.routes)
			}
			src := func(dst netip.Addr) netip.Addr {
				if dst.Is4() {
					return v4.IPPrefix.Addr()
				}
				return v6.IPPrefix.Addr()
			}
			for _, dst := range tc.udp {
				t.Run("udp-"+dst.String(), func(t *testing.T) { s.udpCheck(t, src(dst), dst, port, 64) })
			}
			for _, dst := range tc.icmp {
				t.Run("icmp-echo-"+dst.String(), func(t *testing.T) { s.pingCheck(t, src(dst), dst, 56) })
			}
		})
	}
}

// TestRoamServerAuth: requests without a valid bearer token get 401.
func TestRoamServerAuth(t *testing.T) {
	srv := startRoamServer(t)
	for _, tc := range []struct{ name, header string }{
		{"missing", ""},
		{"wrong-token", "Bearer not-the-token-0123456789abcdef"},
		{"other-scheme", "Basic " + serverToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rsp, err := srv.dial(t, wellKnown("*", "*"), tc.header)
			if err == nil {
				t.Fatal("the request was accepted")
			}
			if rsp == nil || rsp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("response %v (%v), want 401", rsp, err)
			}
		})
	}
}
