package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/usernat"
	"github.com/roamvpn/roam/tunnel/addrpool"
	"github.com/roamvpn/roam/tunnel/capsule"
)

const testToken = "test-token-0123456789abcdef"

// testServer is a Roam server with userspace NAT on loopback UDP.
type testServer struct {
	srv  *Server
	addr string
	pin  [32]byte
	nat  *usernat.Stack
	stop func() // stops Serve (idempotent); the test's cleanup calls it too
}

// testServerOpts are the knobs of startTestServerWith; zero values mean a
// fresh certificate and secret on a free port.
type testServerOpts struct {
	routes []netip.Prefix
	addr   string          // listen here (a restart on the same port)
	cert   tls.Certificate // the same certificate (and pin) as before
	secret []byte
	grace  time.Duration
	// gatewayLoopback maps flows to the gateway to loopback, as the
	// userspace NAT does for packets.
	gatewayLoopback bool
	// auth, if set, replaces the tokens file (testToken) as ServerConfig.Auth.
	auth Authenticator
	// dns is ServerConfig.DNS; dnsForward the userspace NAT's Config.DNS.
	dns        []netip.Addr
	dnsForward netip.AddrPort
	// disableFEC is ServerConfig.DisableFEC.
	disableFEC bool
}

func startTestServer(t *testing.T, routes []netip.Prefix) *testServer {
	return startTestServerWith(t, testServerOpts{routes: routes})
}

func startTestServerWith(t *testing.T, o testServerOpts) *testServer {
	t.Helper()
	tokens, err := auth.ParseTokens(strings.NewReader(testToken+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	cert := o.cert
	if cert.Certificate == nil {
		if cert, _, err = auth.LoadOrCreateCert(t.TempDir(), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	pin, err := auth.ParsePin(auth.Pin(cert.Certificate[0]))
	if err != nil {
		t.Fatal(err)
	}
	pool4, err := addrpool.New(netip.MustParsePrefix("100.96.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	pool6, err := addrpool.New(netip.MustParsePrefix("fd00:96::/64"))
	if err != nil {
		t.Fatal(err)
	}
	nat, err := usernat.New(usernat.Config{
		MTU:      TunnelMTU,
		Gateway4: pool4.Gateway(),
		Gateway6: pool6.Gateway(),
		Prefixes: []netip.Prefix{pool4.Prefix(), pool6.Prefix()},
		DNS:      o.dnsForward,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{
		TLS:        tlsConfigFor(cert),
		Tokens:     tokens,
		Auth:       o.auth,
		Pool4:      pool4,
		Pool6:      pool6,
		Routes:     o.routes,
		DNS:        o.dns,
		Device:     nat,
		Secret:     o.secret,
		LeaseGrace: o.grace,
		Logger:     testLogger(t),

		GatewayLoopback: o.gatewayLoopback,
		DisableFEC:      o.disableFEC,
	})
	if err != nil {
		t.Fatal(err)
	}
	addr, stop := serveTestServer(t, srv, o.addr)
	return &testServer{srv: srv, addr: addr, pin: pin, nat: nat, stop: stop}
}

// serveTestServer runs srv on a UDP socket at addr ("127.0.0.1:0" if
// empty) until the test ends or stop is called, and returns the socket's
// address once srv is ready. stop cancels Serve, checks that it returns
// without an error, and closes the socket; it is idempotent.
func serveTestServer(t *testing.T, srv *Server, addr string) (string, func()) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Serve did not return after cancel")
			}
			pc.Close()
		})
	}
	t.Cleanup(stop)
	<-srv.Ready()
	return pc.LocalAddr().String(), stop
}

// testClient is a client whose device is a userspace netstack, so tests
// can dial and ping through the tunnel without root.
type testClient struct {
	net    *netstack.Net
	client *Client
	info   Info
	dev    datagram.Device
	done   chan error
	cancel context.CancelFunc // stops Run; the cleanup waits for done
}

func startTestClient(t *testing.T, ts *testServer, mutate func(*ClientConfig)) (*testClient, error) {
	t.Helper()
	tc := &testClient{done: make(chan error, 1)}
	ready := make(chan Info, 1)
	pin := ts.pin
	cfg := ClientConfig{
		Server:       ts.addr,
		Token:        testToken,
		Pin:          &pin,
		ListenPacket: func(netip.Addr) (net.PacketConn, error) { return net.ListenPacket("udp", "127.0.0.1:0") },
		NewDevice: func(dc DeviceConfig) (datagram.Device, error) {
			var addrs []netip.Addr
			for _, p := range dc.Addresses {
				addrs = append(addrs, p.Addr())
			}
			dev, n, err := netstack.CreateNetTUN(addrs, nil, dc.MTU)
			if err != nil {
				return nil, err
			}
			tc.net, tc.dev = n, dev
			return dev, nil
		},
		OnReady:      func(i Info) { ready <- i },
		SetupTimeout: 5 * time.Second,
		Logger:       testLogger(t),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.client = c
	ctx, cancel := context.WithCancel(context.Background())
	tc.cancel = cancel
	go func() { tc.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-tc.done:
		case <-time.After(10 * time.Second):
			t.Errorf("client Run did not return after cancel")
		}
	})
	select {
	case tc.info = <-ready:
		return tc, nil
	case err := <-tc.done:
		tc.done <- err // for the cleanup
		return nil, err
	case <-time.After(10 * time.Second):
		t.Fatal("client did not come up")
	}
	return nil, nil
}

func TestEndToEndUserspace(t *testing.T) {
	ts := startTestServer(t, nil)
	tc, err := startTestClient(t, ts, nil)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	if len(tc.info.Addresses) != 2 || !tc.info.Addresses[0].Addr().Is4() || !tc.info.Addresses[1].Addr().Is6() {
		t.Fatalf("want one IPv4 and one IPv6 address, got %v", tc.info.Addresses)
	}
	if !netip.MustParsePrefix("100.96.0.0/24").Contains(tc.info.Addresses[0].Addr()) {
		t.Fatalf("IPv4 address %v outside the pool", tc.info.Addresses[0])
	}

	t.Run("ping", func(t *testing.T) {
		for _, dst := range []string{"100.96.0.1", "fd00:96::1"} {
			pingOnce(t, tc.net, netip.MustParseAddr(dst))
		}
	})

	t.Run("tcp-10MB", func(t *testing.T) {
		// A listener on the server host's loopback, reached through the
		// tunnel at the gateway address (userspace NAT maps it).
		start := time.Now()
		tcpThroughTunnel(t, tc, 10<<20)
		t.Logf("10 MB through the tunnel in %v", time.Since(start))
	})

	st := ts.srv.Stats()
	if n := st.DropSrc.Load(); n != 0 {
		t.Errorf("server dropped %d packets for a bad source", n)
	}
}

// pingOnce pings dst through the client's netstack. wireguard's netstack
// PingConn can miss a reply that arrives before its Read is waiting, so the
// reader starts first and a miss is retried with a fresh PingConn.
func pingOnce(t *testing.T, n *netstack.Net, dst netip.Addr) {
	t.Helper()
	var lastErr error
	for attempt := 1; attempt <= 5; attempt++ {
		c, err := n.DialPingAddr(netip.Addr{}, dst)
		if err != nil {
			t.Fatalf("ping %v: %v", dst, err)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		got := make(chan []byte, 1)
		go func() {
			buf := make([]byte, 1500)
			nr, err := c.Read(buf)
			if err != nil {
				lastErr = err
				got <- nil
				return
			}
			got <- buf[:nr]
		}()
		time.Sleep(10 * time.Millisecond)
		if _, err := c.Write(icmpEcho(dst.Is4(), 7, uint16(attempt), []byte("roam ping"))); err != nil {
			c.Close()
			t.Fatalf("ping %v: %v", dst, err)
		}
		reply := <-got
		c.Close()
		if reply != nil {
			if !bytes.Contains(reply, []byte("roam ping")) {
				t.Fatalf("ping %v: reply without our payload: %x", dst, reply)
			}
			return
		}
	}
	t.Fatalf("ping %v: no reply in 5 attempts: %v", dst, lastErr)
}

// icmpEcho builds an ICMP(v6) echo request message (checksum left to the
// stack for v6; computed for v4).
func icmpEcho(v4 bool, id, seq uint16, data []byte) []byte {
	typ := byte(128)
	if v4 {
		typ = 8
	}
	b := append([]byte{typ, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq)}, data...)
	if v4 {
		var sum uint32
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		cs := ^uint16(sum)
		b[2], b[3] = byte(cs>>8), byte(cs)
	}
	return b
}

func TestWrongToken(t *testing.T) {
	ts := startTestServer(t, nil)
	_, err := startTestClient(t, ts, func(c *ClientConfig) { c.Token = "wrong-token-0123456789" })
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("want ErrAuthFailed, got %v", err)
	}
	if n := ts.srv.Stats().AuthFailures.Load(); n != 1 {
		t.Fatalf("AuthFailures = %d, want 1", n)
	}
}

func TestWrongPin(t *testing.T) {
	ts := startTestServer(t, nil)
	_, err := startTestClient(t, ts, func(c *ClientConfig) { c.Pin = &[32]byte{1, 2, 3} })
	if err == nil || !strings.Contains(err.Error(), "pin mismatch") {
		t.Fatalf("want a pin mismatch error, got %v", err)
	}
}

// rawSession opens a CONNECT-IP session with the client's request code but
// no pump, so a test can put arbitrary datagrams on the wire.
func rawSession(t *testing.T, ts *testServer) (*quic.Conn, uint64, *capsule.AddressAssign) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return rawSessionOn(t, pc, ts.addr, ts.pin)
}

// rawSessionOn is rawSession over the given socket (which it closes at the
// end of the test).
func rawSessionOn(t *testing.T, pc net.PacketConn, server string, pin [32]byte) (*quic.Conn, uint64, *capsule.AddressAssign) {
	t.Helper()
	l := linkOn(t, pc, server, pin)
	return l.conn, l.dl.QuarterStreamID, l.assign
}

// linkOn sets up a CONNECT-IP session over pc the way the client does,
// without a device; everything is closed at the end of the test.
func linkOn(t *testing.T, pc net.PacketConn, server string, pin [32]byte) *link {
	t.Helper()
	l, err := linkWithToken(pc, server, pin, testToken)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.close("test over") })
	return l
}

// linkWithToken is linkOn with another token, returning the setup error;
// the caller closes the link.
func linkWithToken(pc net.PacketConn, server string, pin [32]byte, token string) (*link, error) {
	c, err := NewClient(ClientConfig{Server: server, Token: token, Pin: &pin,
		ListenPacket: func(netip.Addr) (net.PacketConn, error) { return pc, nil },
		NewDevice:    func(DeviceConfig) (datagram.Device, error) { return nil, errors.New("unused") }})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.connect(ctx, nil)
}

// TestSpoofedSource: a datagram whose source is not the session's address
// is dropped and counted by the server, never forwarded, and the session
// keeps working for its real address.
func TestSpoofedSource(t *testing.T) {
	ts := startTestServer(t, nil)
	conn, qsid, assign := rawSession(t, ts)
	mine := assign.Addresses[0].Prefix.Addr()
	gw := netip.MustParseAddr("100.96.0.1")

	// A UDP echo responder on the server's loopback, reached at the gateway.
	uc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	port := uint16(uc.LocalAddr().(*net.UDPAddr).Port)
	received := make(chan string, 10)
	go func() {
		buf := make([]byte, 2000)
		for {
			n, _, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			received <- string(buf[:n])
		}
	}()
	send := func(src netip.Addr, payload string) {
		pkt := buildUDP4(src, gw, 40000, port, []byte(payload))
		if err := conn.SendDatagram(append(datagram.AppendPrefix(nil, qsid, 0), pkt...)); err != nil {
			t.Fatal(err)
		}
	}
	send(netip.MustParseAddr("100.96.0.77"), "spoofed")
	send(netip.MustParseAddr("10.0.0.1"), "spoofed")
	send(mine, "genuine")
	select {
	case got := <-received:
		if got != "genuine" {
			t.Fatalf("the NAT side received %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the genuine packet did not arrive")
	}
	select {
	case got := <-received:
		t.Fatalf("a second packet arrived: %q", got)
	case <-time.After(300 * time.Millisecond):
	}
	if n := ts.srv.Stats().DropSrc.Load(); n != 2 {
		t.Fatalf("DropSrc = %d, want 2", n)
	}
	// Malformed datagrams and unknown context IDs are dropped, not fatal.
	conn.SendDatagram(append(datagram.AppendPrefix(nil, qsid, 0), 0x45, 0x00))
	conn.SendDatagram(append(datagram.AppendPrefix(nil, qsid, 7), buildUDP4(mine, gw, 40000, port, []byte("ctx7"))...))
	send(mine, "after")
	select {
	case got := <-received:
		if got != "after" {
			t.Fatalf("the NAT side received %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the session stopped working after malformed datagrams")
	}
	if ts.srv.Stats().DropMalformed.Load() == 0 || ts.srv.Stats().DropContext.Load() == 0 {
		t.Fatalf("malformed/context drops not counted: %d %d", ts.srv.Stats().DropMalformed.Load(), ts.srv.Stats().DropContext.Load())
	}
}

// buildUDP4 builds an IPv4/UDP packet with correct checksums.
func buildUDP4(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	total := 20 + 8 + len(payload)
	b := make([]byte, total)
	b[0] = 0x45
	b[2], b[3] = byte(total>>8), byte(total)
	b[6] = 0x40 // DF
	b[8] = 64
	b[9] = 17
	s4, d4 := src.As4(), dst.As4()
	copy(b[12:16], s4[:])
	copy(b[16:20], d4[:])
	hc := ^onesSum(0, b[:20])
	b[10], b[11] = byte(hc>>8), byte(hc)
	u := b[20:]
	u[0], u[1] = byte(sport>>8), byte(sport)
	u[2], u[3] = byte(dport>>8), byte(dport)
	ul := 8 + len(payload)
	u[4], u[5] = byte(ul>>8), byte(ul)
	copy(u[8:], payload)
	pseudo := append(append(append([]byte{}, s4[:]...), d4[:]...), 0, 17, byte(ul>>8), byte(ul))
	cs := ^onesSum(uint32(onesSum(0, pseudo)), u)
	if cs == 0 {
		cs = 0xffff
	}
	u[6], u[7] = byte(cs>>8), byte(cs)
	return b
}

func onesSum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// readAssign reads capsules from rd until an ADDRESS_ASSIGN arrives.
func readAssign(t *testing.T, rd *capsule.Reader) *capsule.AddressAssign {
	t.Helper()
	for {
		typ, v, err := rd.Next()
		if err != nil {
			t.Fatalf("reading capsules: %v", err)
		}
		if typ == capsule.TypeAddressAssign {
			a, err := capsule.ParseAddressAssign(v)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
	}
}

// TestAddressRequest: a requested address is granted when free or when it
// was this client's (the older session loses it), refused (all-zero, same
// request ID) when it is outside the pool; RFC 9484 §4.7.2.
func TestAddressRequest(t *testing.T) {
	ts := startTestServer(t, nil)
	_, _, assignA := rawSession(t, ts)
	oldA := assignA.Addresses[0].Prefix.Addr()

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := linkOn(t, pc, ts.addr, ts.pin)
	str, rd := l.str, l.rd
	// The client asked for "any address" while connecting; Roam's server
	// assigns unprompted (request ID 0) and then answers that request.
	readAssign(t, rd)
	first := l.assign
	if first.Addresses[0].Prefix.Addr() == oldA {
		t.Fatal("second session got the first session's address unasked")
	}

	free := netip.MustParseAddr("100.96.0.77")
	req := capsule.AddressRequest{Addresses: []capsule.RequestedAddress{
		{RequestID: 1, Prefix: netip.PrefixFrom(free, 32)},
		{RequestID: 2, Prefix: netip.MustParsePrefix("fd00:96::abc/128")},
	}}
	b, err := req.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	str.Write(b)
	got := readAssign(t, rd)
	want := map[uint64]netip.Prefix{1: netip.PrefixFrom(free, 32), 2: netip.MustParsePrefix("fd00:96::abc/128")}
	for _, a := range got.Addresses {
		if w, ok := want[a.RequestID]; ok && a.Prefix != w {
			t.Fatalf("request %d: assigned %v, want %v", a.RequestID, a.Prefix, w)
		}
		delete(want, a.RequestID)
	}
	if len(want) != 0 {
		t.Fatalf("no answer for requests %v in %+v", want, got.Addresses)
	}

	// Same token: taking over the first session's address ends that session.
	req = capsule.AddressRequest{Addresses: []capsule.RequestedAddress{
		{RequestID: 3, Prefix: netip.PrefixFrom(oldA, 32)},
		{RequestID: 4, Prefix: netip.MustParsePrefix("10.9.9.9/32")},
	}}
	b, _ = req.Append(nil)
	str.Write(b)
	got = readAssign(t, rd)
	var took, refused bool
	for _, a := range got.Addresses {
		switch a.RequestID {
		case 3:
			took = a.Prefix == netip.PrefixFrom(oldA, 32)
		case 4:
			refused = a.Prefix == netip.MustParsePrefix("0.0.0.0/32")
		}
	}
	if !took || !refused {
		t.Fatalf("want request 3 granted and 4 refused with 0.0.0.0/32, got %+v", got.Addresses)
	}
	// The address has moved by the time the answer is written; the first
	// session is only told to end then (its connection may stay open),
	// and counts as active until its teardown has finished: wait for
	// that rather than sample the gauge at once.
	if s := ts.srv.sessionFor(oldA); s == nil || s.addrs.Load().v4 != oldA || ts.srv.sessionFor(free) != nil {
		t.Fatalf("after the answer: %v is served by %v, %v by %v", oldA, s, free, ts.srv.sessionFor(free))
	}
	waitFor(t, "the first session to end (SessionsActive 1)", 5*time.Second, func() bool {
		return ts.srv.Stats().SessionsActive.Load() == 1
	})
	if n := ts.srv.Stats().SessionsTotal.Load(); n != 2 {
		t.Fatalf("SessionsTotal = %d, want 2", n)
	}
}

// tcpThroughTunnel sends size random bytes over TCP through the client's
// netstack to a listener on the server's loopback and checks the hash.
func tcpThroughTunnel(t *testing.T, tc *testClient, size int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	payload := make([]byte, size)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
		c.Write([]byte("done"))
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := tc.net.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(netip.MustParseAddr("100.96.0.1"), uint16(port)))
	if err != nil {
		t.Fatalf("dial through tunnel: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.Copy(c, bytes.NewReader(payload)); err != nil {
		t.Fatalf("send: %v", err)
	}
	c.CloseWrite()
	if reply, err := io.ReadAll(c); err != nil || string(reply) != "done" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	if sum := <-got; sum != want {
		t.Fatal("the transfer through the tunnel is not byte-exact")
	}
}
