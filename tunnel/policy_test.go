package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/webtransport-go"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/capsule"
	"github.com/roamvpn/roam/tunnel/webproto"
)

// testAuth is an Authenticator over a fixed table of tokens, for
// identities with routes, ports and expiry that plain tokens cannot have.
type testAuth map[string]auth.Identity

func (a testAuth) Authenticate(token string, now time.Time) (auth.Identity, error) {
	id, ok := a[token]
	if !ok {
		return auth.Identity{}, fmt.Errorf("%w: unknown token", auth.ErrUnauthorized)
	}
	if id.Owner == "" {
		id.Owner = auth.TokenID(token)
	}
	return id, nil
}

const (
	tokA = "token-a-0123456789abcdef"
	tokB = "token-b-0123456789abcdef"
	tokC = "token-c-0123456789abcdef"
)

// udpSink collects the payloads a loopback UDP socket receives.
type udpSink struct {
	pc   net.PacketConn
	port uint16
	got  chan string
}

func newUDPSink(t *testing.T, addr string) *udpSink {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	u := &udpSink{pc: pc, port: uint16(pc.LocalAddr().(*net.UDPAddr).Port), got: make(chan string, 1000)}
	go func() {
		buf := make([]byte, 2000)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.got <- string(buf[:n])
		}
	}()
	return u
}

// expect waits for payload want (skipping nothing: the next payload must be it).
func (u *udpSink) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-u.got:
		if got != want {
			t.Fatalf("received %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%q did not arrive", want)
	}
}

// none checks that nothing arrives for a while.
func (u *udpSink) none(t *testing.T) {
	t.Helper()
	select {
	case got := <-u.got:
		t.Fatalf("received %q, want nothing", got)
	case <-time.After(300 * time.Millisecond):
	}
}

// sendUDP sends one UDP packet from the link's own address as a datagram.
func sendUDP(t *testing.T, l *link, dst netip.Addr, port uint16, payload string) {
	t.Helper()
	var pkt []byte
	for _, a := range l.assign.Addresses {
		src := a.Prefix.Addr()
		switch {
		case dst.Is4() && src.Is4():
			pkt = buildUDP4(src, dst, 40000, port, []byte(payload))
		case dst.Is6() && src.Is6():
			pkt = buildUDP6(src, dst, 40000, port, []byte(payload))
		}
	}
	if err := l.conn.SendDatagram(append(datagram.AppendPrefix(nil, l.dl.QuarterStreamID, 0), pkt...)); err != nil {
		t.Fatal(err)
	}
}

// buildUDP6 builds an IPv6/UDP packet with a correct checksum.
func buildUDP6(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	ul := 8 + len(payload)
	b := make([]byte, 40+ul)
	b[0] = 0x60
	b[4], b[5] = byte(ul>>8), byte(ul)
	b[6] = 17
	b[7] = 64
	s16, d16 := src.As16(), dst.As16()
	copy(b[8:24], s16[:])
	copy(b[24:40], d16[:])
	u := b[40:]
	u[0], u[1] = byte(sport>>8), byte(sport)
	u[2], u[3] = byte(dport>>8), byte(dport)
	u[4], u[5] = byte(ul>>8), byte(ul)
	copy(u[8:], payload)
	pseudo := append(append(append([]byte{}, s16[:]...), d16[:]...), 0, 0, byte(ul>>8), byte(ul), 0, 0, 0, 17)
	cs := ^onesSum(uint32(onesSum(0, pseudo)), u)
	if cs == 0 {
		cs = 0xffff
	}
	u[6], u[7] = byte(cs>>8), byte(cs)
	return b
}

// connectFlow sends a native flow request (CONNECT authority) on l's
// connection with token and returns the response status and Proxy-Status.
func connectFlow(t *testing.T, l *link, authority, token string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := l.cc.OpenRequestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer str.CancelRead(0)
	defer str.CancelWrite(0)
	req := &http.Request{Method: http.MethodConnect, Host: authority, URL: &url.URL{Host: authority},
		Header: http.Header{"Authorization": {"Bearer " + token}}}
	if err := str.SendRequestHeader(req); err != nil {
		t.Fatal(err)
	}
	resp, err := str.ReadResponse()
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Proxy-Status")
}

// waitStreamEnd reads l's capsules until its request stream ends.
func waitStreamEnd(t *testing.T, l *link, within time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		for {
			if _, _, err := l.rd.Next(); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("the session's stream did not end within %v", within)
	}
}

func newLink(t *testing.T, ts *testServer, token string) *link {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := linkWithToken(pc, ts.addr, ts.pin, token)
	if err != nil {
		pc.Close()
		t.Fatalf("link with token %.8s: %v", token, err)
	}
	t.Cleanup(func() { l.close("test over") })
	return l
}

// TestIdentityPolicy: an identity's routes and ports narrow what its
// session's packets and its flows may reach; the ROUTE_ADVERTISEMENT says
// so; refused packets are counted in DropPolicy, refused flows answered
// destination_ip_prohibited.
func TestIdentityPolicy(t *testing.T) {
	udpOK := newUDPSink(t, "127.0.0.1:0")
	udpOther := newUDPSink(t, "127.0.0.1:0")
	udp6 := newUDPSink(t, fmt.Sprintf("[::1]:%d", udpOK.port))
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	go func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tcpPort := uint16(tcp.Addr().(*net.TCPAddr).Port)
	gw4, gw6 := netip.MustParseAddr("100.96.0.1"), netip.MustParseAddr("fd00:96::1")
	ta := testAuth{
		tokA: {User: "alice", Routes: []netip.Prefix{netip.PrefixFrom(gw4, 32)},
			Ports: []auth.PortRange{{Lo: udpOK.port, Hi: udpOK.port}, {Lo: tcpPort, Hi: tcpPort}}},
		tokB: {User: "bob"}, // unrestricted
	}
	ts := startTestServerWith(t, testServerOpts{auth: ta, gatewayLoopback: true})
	la := newLink(t, ts, tokA)

	if got, want := routesFromRanges(la.routes.Ranges).prefixes(), []netip.Prefix{netip.PrefixFrom(gw4, 32)}; !slices.Equal(got, want) {
		t.Fatalf("advertised routes %v, want %v", got, want)
	}
	st := ts.srv.Stats()
	t.Run("packets", func(t *testing.T) {
		sendUDP(t, la, gw4, udpOK.port, "allowed")
		udpOK.expect(t, "allowed")
		sendUDP(t, la, gw4, udpOther.port, "other port")
		sendUDP(t, la, gw6, udpOK.port, "other route")
		sendUDP(t, la, gw4, udpOK.port, "allowed again")
		udpOK.expect(t, "allowed again")
		udpOther.none(t)
		udp6.none(t)
		if n := st.DropPolicy.Load(); n != 2 {
			t.Fatalf("DropPolicy = %d, want 2", n)
		}
	})
	t.Run("flows", func(t *testing.T) {
		for _, tt := range []struct {
			name, authority, token string
			status                 int
		}{
			{"allowed", netip.AddrPortFrom(gw4, tcpPort).String(), tokA, 200},
			{"other port", netip.AddrPortFrom(gw4, udpOther.port).String(), tokA, 502},
			{"other route", netip.AddrPortFrom(gw6, tcpPort).String(), tokA, 502},
			{"other identity may", netip.AddrPortFrom(gw4, udpOther.port).String(), tokB, 502}, // nothing listens on TCP there, but it is dialed: refused, not prohibited
		} {
			t.Run(tt.name, func(t *testing.T) {
				status, ps := connectFlow(t, la, tt.authority, tt.token)
				if status != tt.status {
					t.Fatalf("HTTP %d (%s), want %d", status, ps, tt.status)
				}
				prohibited := strings.Contains(ps, "destination_ip_prohibited")
				if wantProhibited := tt.status == 502 && tt.token == tokA; prohibited != wantProhibited {
					t.Fatalf("Proxy-Status %q; prohibited %v, want %v", ps, prohibited, wantProhibited)
				}
			})
		}
	})
	t.Run("unrestricted", func(t *testing.T) {
		lb := newLink(t, ts, tokB)
		sendUDP(t, lb, gw6, udpOK.port, "bob v6")
		udp6.expect(t, "bob v6")
	})
}

// TestReload: a reload that drops one token ends that token's session
// and flows and keeps the other's running (same session, same addresses,
// no packet lost); routes changed by a reload are advertised again; a
// session ends when its identity expires.
func TestReload(t *testing.T) {
	sink := newUDPSink(t, "127.0.0.1:0")
	gw4 := netip.MustParseAddr("100.96.0.1")
	old := testAuth{tokA: {User: "alice"}, tokB: {User: "bob"}}
	ts := startTestServerWith(t, testServerOpts{auth: old, gatewayLoopback: true})
	la := newLink(t, ts, tokA)
	lb := newLink(t, ts, tokB)
	// A native flow with B's token (on A's connection: flows carry their
	// own token) ends with B's token too.
	echo := echoServer(t)
	flowB := openNativeFlow(t, la, netip.AddrPortFrom(netip.MustParseAddr("100.96.0.1"), echo).String(), tokB)
	flowB.Write([]byte("ping"))
	if b := make([]byte, 4); readFull(flowB, b) != nil || string(b) != "ping" {
		t.Fatal("B's flow does not echo")
	}
	addrA := la.assign.Addresses[0].Prefix.Addr()
	sessA := ts.srv.sessionFor(addrA)
	if sessA == nil {
		t.Fatal("no session for A")
	}
	if n := len(ts.srv.Status().Sessions); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}

	// A keeps sending while the reload happens.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	sent := 0
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			sendUDP(t, la, gw4, sink.port, fmt.Sprint("a", sent))
			sent++
			time.Sleep(2 * time.Millisecond)
		}
	})
	time.Sleep(50 * time.Millisecond)
	narrowed := []netip.Prefix{netip.MustParsePrefix("100.96.0.0/24"), netip.MustParsePrefix("fd00:96::/64")}
	if err := ts.srv.Reload(ReloadConfig{Auth: testAuth{tokA: {User: "alice"}}, Routes: narrowed}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	for i := range sent {
		sink.expect(t, fmt.Sprint("a", i))
	}

	waitStreamEnd(t, lb, 5*time.Second)
	flowErr := make(chan error, 1)
	go func() { _, err := flowB.Read(make([]byte, 10)); flowErr <- err }()
	select {
	case err := <-flowErr:
		if err == nil {
			t.Fatal("B's flow still reads after the reload")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("B's flow was not ended by the reload")
	}
	if got := ts.srv.sessionFor(addrA); got != sessA {
		t.Fatal("A's session was replaced by the reload")
	}
	if n := ts.srv.Stats().SessionsRevoked.Load(); n != 1 {
		t.Fatalf("SessionsRevoked = %d, want 1", n)
	}
	waitFor(t, "B's session to end", 5*time.Second, func() bool { return len(ts.srv.Status().Sessions) == 1 })
	// A was told about the narrowed routes.
	for {
		typ, v, err := la.rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		if typ != capsule.TypeRouteAdvertisement {
			continue
		}
		adv, err := capsule.ParseRouteAdvertisement(v)
		if err != nil {
			t.Fatal(err)
		}
		if got := routesFromRanges(adv.Ranges).prefixes(); !slices.Equal(got, narrowed) {
			t.Fatalf("advertised %v after the reload, want %v", got, narrowed)
		}
		break
	}
	// B's token no longer opens anything.
	if status, _ := connectFlow(t, la, "100.96.0.1:9", tokB); status != http.StatusUnauthorized {
		t.Fatalf("flow with a removed token: HTTP %d, want 401", status)
	}
	if err := ts.srv.Reload(ReloadConfig{}); err == nil {
		t.Fatal("Reload without Auth succeeded")
	}
	if err := ts.srv.Reload(ReloadConfig{Auth: testAuth{}, Routes: []netip.Prefix{{}}}); err == nil {
		t.Fatal("Reload with an invalid route succeeded")
	}
	if sessA.ctx.Err() != nil {
		t.Fatal("a failed Reload ended a session")
	}

	t.Run("expiry", func(t *testing.T) {
		if err := ts.srv.Reload(ReloadConfig{Auth: testAuth{tokA: {User: "alice"}, tokC: {User: "carol", Expires: time.Now().Add(time.Second)}}}); err != nil {
			t.Fatal(err)
		}
		lc := newLink(t, ts, tokC)
		waitStreamEnd(t, lc, 5*time.Second)
		if n := ts.srv.Stats().SessionsExpired.Load(); n != 1 {
			t.Fatalf("SessionsExpired = %d, want 1", n)
		}
		if _, err := linkWithToken(must(net.ListenPacket("udp", "127.0.0.1:0")), ts.addr, ts.pin, tokC); err == nil {
			t.Fatal("an expired token set up a session")
		}
	})
}

// TestAuthRateLimit: after authLimitFailures failures a source is
// answered 429 without verifying, also for a good token; another source
// is not affected; a missing, unknown and wrong token look the same.
func TestAuthRateLimit(t *testing.T) {
	ts := startTestServer(t, nil)
	l := newLink(t, ts, testToken)
	for i := range authLimitFailures {
		status, _ := connectFlow(t, l, "100.96.0.1:9", fmt.Sprint("wrong-token-", i, "-0123456789"))
		if status != http.StatusUnauthorized {
			t.Fatalf("failure %d: HTTP %d, want 401", i+1, status)
		}
	}
	if status, _ := connectFlow(t, l, "100.96.0.1:9", "wrong-token-x-0123456789"); status != http.StatusTooManyRequests {
		t.Fatalf("after %d failures: HTTP %d, want 429", authLimitFailures, status)
	}
	if status, _ := connectFlow(t, l, "100.96.0.1:9", testToken); status != http.StatusTooManyRequests {
		t.Fatalf("a good token from a limited source: HTTP %d, want 429", status)
	}
	st := ts.srv.Stats()
	if f, r := st.AuthFailures.Load(), st.AuthRateLimited.Load(); f != authLimitFailures || r != 2 {
		t.Fatalf("AuthFailures %d, AuthRateLimited %d; want %d, 2", f, r, authLimitFailures)
	}
	// 127.0.0.2 is another source on the same loopback.
	pc, err := net.ListenPacket("udp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	other, err := linkWithToken(pc, ts.addr, ts.pin, testToken)
	if err != nil {
		t.Fatalf("another source: %v", err)
	}
	defer other.close("test over")
	if status, _ := connectFlow(t, other, "100.96.0.1:9", "wrong-token-y-0123456789"); status != http.StatusUnauthorized {
		t.Fatalf("another source's first failure: HTTP %d, want 401", status)
	}
}

// TestAuthLimiter: the limiter's table, window and summary line.
func TestAuthLimiter(t *testing.T) {
	var buf syncBuffer
	l := newAuthLimiter(slog.New(slog.NewTextHandler(&buf, nil)))
	l.limit, l.window, l.capacity = 3, 200*time.Millisecond, 2
	a, b, c := "192.0.2.1:1000", "[2001:db8:0:1::1]:1000", "198.51.100.1:1"
	for range 3 {
		if l.blocked(a) {
			t.Fatal("blocked before the limit")
		}
		l.failed(a)
	}
	if !l.blocked(a) || !l.blocked("192.0.2.1:2000") {
		t.Fatal("not blocked at the limit (any port)")
	}
	l.failed(b)
	if !l.blocked(a) || l.blocked("[2001:db8:0:1::2]:5") {
		t.Fatal("one /64 failure blocks")
	}
	l.failed("[2001:db8:0:1:ffff::9]:5")
	l.failed("[2001:db8:0:1:ffff::9]:5")
	if !l.blocked(b) {
		t.Fatal("the /64 is not one source")
	}
	for range 5 {
		l.failed(c) // the table is full: not tracked
	}
	if l.blocked(c) {
		t.Fatal("a source the full table could not take was blocked")
	}
	waitFor(t, "the summary line", 5*time.Second, func() bool { return strings.Contains(buf.String(), "bad credentials") })
	if !strings.Contains(buf.String(), "rejected 11 requests from 2 sources") || !strings.Contains(buf.String(), "untracked_failures=5") {
		t.Fatalf("summary: %s", buf.String())
	}
	if l.blocked(a) {
		t.Fatal("still blocked after the window")
	}
	if strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("want one line per window: %s", buf.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestStatus: the server's and the client's snapshots of a live tunnel.
func TestStatus(t *testing.T) {
	ts := startTestServerWith(t, testServerOpts{auth: testAuth{testToken: {User: "dora"}}})
	if st := ts.srv.Status(); st.Listen != ts.addr || st.Started.IsZero() || len(st.Sessions) != 0 {
		t.Fatalf("idle server status %+v", st)
	}
	tc, err := startTestClient(t, ts, nil)
	if err != nil {
		t.Fatal(err)
	}
	pingOnce(t, tc.net, netip.MustParseAddr("100.96.0.1"))
	st := ts.srv.Status()
	if len(st.Sessions) != 1 {
		t.Fatalf("sessions %+v", st.Sessions)
	}
	s := st.Sessions[0]
	want4 := tc.info.Addresses[0].Addr()
	if s.Kind != "connect-ip" || s.User != "dora" || s.Owner != auth.TokenID(testToken) || !slices.Contains(s.Addrs, want4) ||
		s.Remote == "" || s.Since.IsZero() || s.RTT <= 0 || s.CWND == 0 || s.TxPackets == 0 || s.RxPackets == 0 || s.RxBytes == 0 || s.RxDatagrams < s.RxPackets {
		t.Fatalf("session status %+v", s)
	}
	cst := tc.client.Status()
	if cst.State != stateConnected || cst.Since.IsZero() || cst.Server != ts.addr || !slices.Contains(cst.Addrs, tc.info.Addresses[0]) ||
		len(cst.Routes) == 0 || len(cst.Paths) != 1 || cst.Paths[0].Remote != ts.addr || !cst.Paths[0].Active ||
		cst.RTT <= 0 || cst.CWND == 0 || cst.TxPackets == 0 || cst.RxPackets == 0 || cst.RxDatagrams < cst.RxPackets {
		t.Fatalf("client status %+v", cst)
	}
	// Safe to call concurrently with everything.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				ts.srv.Status()
				tc.client.Status()
			}
		})
	}
	wg.Wait()
}

// TestWebIdentityAndReload: a browser session's flows follow its
// identity's routes and ports, its WELCOME lists its routes, Status shows
// it, and a reload that drops its token ends it with SESSION_ERROR
// unauthorized while another browser session goes on.
func TestWebIdentityAndReload(t *testing.T) {
	echo := echoServer(t)
	gw4 := netip.MustParseAddr("100.96.0.1")
	ws := startWebServer(t, webOpts{auth: testAuth{
		tokA: {User: "alice", Routes: []netip.Prefix{netip.PrefixFrom(gw4, 32)}, Ports: []auth.PortRange{{Lo: echo, Hi: echo}}},
		tokB: {User: "bob"},
	}})
	session := func(token string) (*webtransport.Session, *webtransport.Stream, *webproto.Welcome) {
		_, sess, err := ws.wtDial(t, "")
		if err != nil {
			t.Fatal(err)
		}
		ctrl := hello(t, sess, token)
		typ, v := readMsg(t, ctrl)
		if typ != webproto.TypeWelcome {
			t.Fatalf("got %v %q, want WELCOME", typ, v)
		}
		w, err := webproto.ParseWelcome(v)
		if err != nil {
			t.Fatal(err)
		}
		return sess, ctrl, w
	}
	sessA, ctrlA, welcomeA := session(tokA)
	if !slices.Equal(welcomeA.Routes, []string{"100.96.0.1/32"}) {
		t.Fatalf("WELCOME routes %v", welcomeA.Routes)
	}
	for _, tt := range []struct {
		authority string
		ok        bool
	}{
		{netip.AddrPortFrom(gw4, echo).String(), true},
		{netip.AddrPortFrom(gw4, echo+1).String(), false},
		{netip.AddrPortFrom(netip.MustParseAddr("fd00:96::1"), echo).String(), false},
	} {
		str, typ, v := openFlow(t, sessA, tt.authority)
		str.CancelRead(0)
		str.CancelWrite(0)
		if ok := typ == webproto.TypeFlowOK; ok != tt.ok || !ok && !strings.Contains(string(v), "destination_ip_prohibited") {
			t.Errorf("flow to %s: %v %q, want ok %v", tt.authority, typ, v, tt.ok)
		}
	}
	sessB, ctrlB, _ := session(tokB)
	if st := ws.srv.Status(); len(st.Sessions) != 2 || st.Sessions[0].Kind != "webtransport" || st.Sessions[0].User != "alice" || st.Sessions[1].User != "bob" {
		t.Fatalf("status %+v", st.Sessions)
	}

	if err := ws.srv.Reload(ReloadConfig{Auth: testAuth{tokA: {User: "alice"}}}); err != nil {
		t.Fatal(err)
	}
	typ, v := readMsg(t, ctrlB)
	if se, _ := webproto.ParseSessionError(v); typ != webproto.TypeSessionError || se == nil || se.Code != webproto.CodeUnauthorized {
		t.Fatalf("B got %v %q, want SESSION_ERROR unauthorized", typ, v)
	}
	select {
	case <-sessB.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("B's session was not closed")
	}
	// A goes on, now unrestricted.
	if err := webproto.WriteMessage(ctrlA, webproto.TypePing, []byte("p")); err != nil {
		t.Fatal(err)
	}
	if typ, _ := readMsg(t, ctrlA); typ != webproto.TypePong {
		t.Fatalf("A got %v, want PONG", typ)
	}
	str, typ, v := openFlow(t, sessA, netip.AddrPortFrom(netip.MustParseAddr("fd00:96::1"), echo).String())
	defer str.CancelRead(0)
	if typ == webproto.TypeFlowError && strings.Contains(string(v), "prohibited") {
		t.Fatalf("A's flow after the reload widened its policy: %q", v)
	}
	waitFor(t, "one session in Status", 5*time.Second, func() bool { return len(ws.srv.Status().Sessions) == 1 })
}

// TestCheckPacket: the per-packet policy verdicts, and that checking
// allocates nothing.
func TestCheckPacket(t *testing.T) {
	id := auth.Identity{Routes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, Ports: []auth.PortRange{{Lo: 53, Hi: 53}, {Lo: 8000, Hi: 8100}}}
	pol := newPolicy(id, routesFromPrefixes([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}), routesFromPrefixes(DefaultRoutes))
	src := netip.MustParseAddr("100.96.0.2")
	icmp := buildUDP4(src, netip.MustParseAddr("10.1.2.3"), 1, 2, nil)
	icmp[9] = 1 // not UDP: no ports
	for _, tt := range []struct {
		name string
		pkt  []byte
		want datagram.DropReason
	}{
		{"allowed port", buildUDP4(src, netip.MustParseAddr("10.1.2.3"), 40000, 53, []byte("x")), datagram.NoDrop},
		{"allowed range", buildUDP4(src, netip.MustParseAddr("10.1.2.3"), 40000, 8100, nil), datagram.NoDrop},
		{"other port", buildUDP4(src, netip.MustParseAddr("10.1.2.3"), 40000, 8101, nil), datagram.DropReasonPolicy},
		{"outside the identity's routes", buildUDP4(src, netip.MustParseAddr("10.2.0.1"), 40000, 53, nil), datagram.DropReasonPolicy},
		{"outside the server's routes", buildUDP4(src, netip.MustParseAddr("192.0.2.1"), 40000, 53, nil), datagram.DropReasonDst},
		{"not TCP or UDP", icmp, datagram.NoDrop},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var p datagram.Packet
			if err := p.Decode(tt.pkt); err != nil {
				t.Fatal(err)
			}
			if got := pol.checkPacket(&p, tt.pkt); got != tt.want {
				t.Fatalf("verdict %v, want %v", got, tt.want)
			}
			if n := testing.AllocsPerRun(100, func() { pol.checkPacket(&p, tt.pkt) }); n != 0 {
				t.Fatalf("%v allocations per check", n)
			}
		})
	}
}

// openNativeFlow opens a flow (CONNECT authority) on l's connection with
// token and returns its stream once the server answered 200.
func openNativeFlow(t *testing.T, l *link, authority, token string) *http3.RequestStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := l.cc.OpenRequestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { str.CancelRead(0); str.CancelWrite(0) })
	req := &http.Request{Method: http.MethodConnect, Host: authority, URL: &url.URL{Host: authority},
		Header: http.Header{"Authorization": {"Bearer " + token}}}
	if err := str.SendRequestHeader(req); err != nil {
		t.Fatal(err)
	}
	resp, err := str.ReadResponse()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("flow to %s: HTTP %d %s", authority, resp.StatusCode, resp.Header.Get("Proxy-Status"))
	}
	str.SetReadDeadline(time.Now().Add(20 * time.Second))
	return str
}

func readFull(r io.Reader, b []byte) error {
	_, err := io.ReadFull(r, b)
	return err
}
