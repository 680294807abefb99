package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/webtransport-go"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/tun/tuntest"
	"github.com/roamvpn/roam/tunnel/addrpool"
	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/webproto"
)

// webTestServer is a Server with the browser client on, on a loopback UDP
// port (and TCP on the same port number).
type webTestServer struct {
	srv  *Server
	addr string // 127.0.0.1:PORT
	cert tls.Certificate
	pin  [32]byte
}

// webOpts are the knobs of startWebServer.
type webOpts struct {
	web          *fstest.MapFS
	origins      []string
	selfSigned   bool
	disable      bool
	helloTimeout time.Duration
	routes       []netip.Prefix
	maxFlows     int
	udpAddr      string        // listen here (default 127.0.0.1:0)
	tcpRetries   int           // internal: new ports tried because TCP on the picked one was taken
	auth         Authenticator // if set, ServerConfig.Auth (else the tokens file of testToken)
}

// testAssets stands in for web.Assets (the browser client package, built
// separately) in the server's tests.
func testAssets() *fstest.MapFS {
	wasm := make([]byte, 300<<10)
	rand.Read(wasm)
	return &fstest.MapFS{
		"index.html":   {Data: []byte("<!doctype html><title>roam</title><script src=app.js></script>\n")},
		"app.js":       {Data: []byte("console.log('app')\n")},
		"worker.js":    {Data: []byte("importScripts('wasm_exec.js')\n")},
		"wasm_exec.js": {Data: []byte("// wasm_exec\n")},
		"roam.js":      {Data: []byte("export {}\n")},
		"roam.wasm":    {Data: wasm},
		"sub/x.txt":    {Data: []byte("x")},
	}
}

func startWebServer(t *testing.T, o webOpts) *webTestServer {
	t.Helper()
	ws, _ := startWebServerStoppable(t, o)
	return ws
}

// startWebServerStoppable also returns a func that stops the server and
// waits for Serve to return (idempotent; the test's cleanup calls it too).
func startWebServerStoppable(t *testing.T, o webOpts) (*webTestServer, func()) {
	t.Helper()
	tokens, err := auth.ParseTokens(strings.NewReader(testToken+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := auth.LoadOrCreateCert(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pin, _ := auth.ParsePin(auth.Pin(cert.Certificate[0]))
	pool4, _ := addrpool.New(netip.MustParsePrefix("100.96.0.0/24"))
	pool6, _ := addrpool.New(netip.MustParsePrefix("fd00:96::/64"))
	cfg := ServerConfig{
		TLS:             tlsConfigFor(cert),
		Tokens:          tokens,
		Auth:            o.auth,
		Pool4:           pool4,
		Pool6:           pool6,
		Routes:          o.routes,
		Device:          tuntest.NewChannelDevice(TunnelMTU, 1),
		Logger:          testLogger(t),
		GatewayLoopback: true,
		MaxFlows:        o.maxFlows,
		DisableWeb:      o.disable,
		WebOrigins:      o.origins,
		WebSelfSigned:   o.selfSigned,
		Version:         "roam test",
	}
	if o.web != nil {
		cfg.Web = *o.web
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if o.helloTimeout > 0 {
		srv.helloTimeout = o.helloTimeout
	}
	addr, stop := serveTestServer(t, srv, o.udpAddr)
	if !o.disable && o.udpAddr == "" && srv.WebAddr() == nil && o.tcpRetries < 5 {
		// The UDP port the kernel picked is taken on TCP by some other
		// test's socket: try another port.
		stop()
		o.tcpRetries++
		return startWebServerStoppable(t, o)
	}
	return &webTestServer{srv: srv, addr: addr, cert: cert, pin: pin}, stop
}

// wtDial opens a WebTransport session to ws with Go's client (which sends
// no GREASE, so it gets the long-lived certificate it pins here).
func (ws *webTestServer) wtDial(t *testing.T, origin string) (*http.Response, *webtransport.Session, error) {
	t.Helper()
	tr := &webtransport.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: auth.VerifyPinned(ws.pin)},
		QUICConfig:      &quic.Config{EnableDatagrams: true, EnableStreamResetPartialDelivery: true},
	}
	t.Cleanup(func() { tr.Close() })
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, sess, err := tr.Dial(ctx, "https://"+ws.addr+webproto.Path, h)
	if sess != nil {
		t.Cleanup(func() { sess.CloseWithError(0, "") })
	}
	return resp, sess, err
}

func readMsg(t *testing.T, r io.Reader) (webproto.Type, []byte) {
	t.Helper()
	typ, v, err := webproto.ReadMessage(r, 0)
	if err != nil {
		t.Fatalf("reading a message: %v", err)
	}
	return typ, v
}

func openStream(t *testing.T, sess *webtransport.Session) *webtransport.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	str, err := sess.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	str.SetDeadline(time.Now().Add(20 * time.Second))
	return str
}

// hello opens the control stream and sends HELLO with token.
func hello(t *testing.T, sess *webtransport.Session, token string) *webtransport.Stream {
	t.Helper()
	ctrl := openStream(t, sess)
	if err := webproto.WriteMessage(ctrl, webproto.TypeHello, []byte(token)); err != nil {
		t.Fatal(err)
	}
	return ctrl
}

// openFlow opens a flow stream to authority and returns it with the
// server's answer.
func openFlow(t *testing.T, sess *webtransport.Session, authority string) (*webtransport.Stream, webproto.Type, []byte) {
	t.Helper()
	str := openStream(t, sess)
	if err := webproto.WriteMessage(str, webproto.TypeFlowOpen, []byte(authority)); err != nil {
		t.Fatal(err)
	}
	typ, v := readMsg(t, str)
	return str, typ, v
}

// echoServer listens on 127.0.0.1 and echoes every connection until EOF,
// then closes it.
func echoServer(t *testing.T) uint16 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TestWebSession: a WebTransport session with Go's client speaking
// webproto: HELLO → WELCOME, PING → PONG, a flow to an echo service on the
// server's loopback (through the gateway address) byte-exact both ways with
// half-close, an HTTP exchange, and flows the policy refuses.
func TestWebSession(t *testing.T) {
	ws := startWebServer(t, webOpts{routes: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/24"), netip.MustParsePrefix("10.99.0.0/16")}, maxFlows: 7})
	resp, sess, err := ws.wtDial(t, "https://"+ws.addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	ctrl := hello(t, sess, testToken)
	typ, v := readMsg(t, ctrl)
	if typ != webproto.TypeWelcome {
		t.Fatalf("got %v %q, want WELCOME", typ, v)
	}
	wel, err := webproto.ParseWelcome(v)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(wel.Routes, ",") != "100.96.0.0/24,10.99.0.0/16" || wel.MaxFlows != 7 || wel.Server != "roam test" {
		t.Errorf("WELCOME %+v", wel)
	}

	t.Run("ping", func(t *testing.T) {
		for i := range 3 {
			payload := []byte(fmt.Sprintf("ping %d %v", i, time.Now().UnixNano()))
			if err := webproto.WriteMessage(ctrl, webproto.TypePing, payload); err != nil {
				t.Fatal(err)
			}
			typ, v := readMsg(t, ctrl)
			if typ != webproto.TypePong || !bytes.Equal(v, payload) {
				t.Fatalf("got %v %q, want PONG %q", typ, v, payload)
			}
		}
	})

	echo := echoServer(t)
	gw := fmt.Sprintf("100.96.0.1:%d", echo)
	t.Run("echo flow byte-exact", func(t *testing.T) {
		const flows, size = 4, 1 << 20
		var wg sync.WaitGroup
		for range flows {
			wg.Go(func() {
				str, typ, v := openFlow(t, sess, gw)
				if typ != webproto.TypeFlowOK {
					t.Errorf("got %v %q, want FLOW_OK", typ, v)
					return
				}
				payload := make([]byte, size)
				rand.Read(payload)
				go func() {
					str.Write(payload)
					str.Close() // FIN: the echo server closes after it
				}()
				got, err := io.ReadAll(str)
				if err != nil {
					t.Errorf("reading the echo: %v", err)
					return
				}
				if !bytes.Equal(got, payload) {
					t.Errorf("echo: got %d bytes, want %d identical", len(got), len(payload))
				}
			})
		}
		wg.Wait()
	})

	t.Run("http through a flow", func(t *testing.T) {
		body := "hello through the browser tunnel\n"
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, body)
		})}
		go hs.Serve(ln)
		defer hs.Close()
		str, typ, _ := openFlow(t, sess, fmt.Sprintf("100.96.0.1:%d", ln.Addr().(*net.TCPAddr).Port))
		if typ != webproto.TypeFlowOK {
			t.Fatalf("got %v, want FLOW_OK", typ)
		}
		fmt.Fprintf(str, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		str.Close()
		raw, err := io.ReadAll(str)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(raw, []byte("HTTP/1.1 200 OK\r\n")) || !bytes.HasSuffix(raw, []byte("\r\n\r\n"+body)) {
			t.Fatalf("response %q", raw)
		}
	})

	t.Run("refused", func(t *testing.T) {
		closedLn, _ := net.Listen("tcp", "127.0.0.1:0")
		closed := closedLn.Addr().(*net.TCPAddr).Port
		closedLn.Close()
		for _, tt := range []struct {
			authority string
			kind      flow.ErrorKind
		}{
			{"192.0.2.1:80", flow.Prohibited},                    // outside the routes
			{"127.0.0.1:22", flow.Prohibited},                    // loopback
			{"169.254.169.254:80", flow.Prohibited},              // metadata
			{fmt.Sprintf("localhost:%d", echo), flow.Prohibited}, // a name, resolved to loopback
			{fmt.Sprintf("100.96.0.1:%d", closed), flow.Refused}, // nothing listens
			{"no-port", flow.Other},                              // malformed
			{"[fe80::1%25eth0]:80", flow.Other},                  // malformed
			{strings.Repeat("a", 300) + ":80", flow.Other},       // too long
		} {
			t.Run(tt.authority[:min(len(tt.authority), 40)], func(t *testing.T) {
				str, typ, v := openFlow(t, sess, tt.authority)
				if typ != webproto.TypeFlowError {
					t.Fatalf("got %v %q, want FLOW_ERROR", typ, v)
				}
				kind, ok := flow.ParseProxyStatus(string(v))
				if !ok || kind != tt.kind {
					t.Fatalf("FLOW_ERROR %q: kind %v, want %v", v, kind, tt.kind)
				}
				if _, err := io.ReadAll(str); err != nil {
					t.Errorf("after FLOW_ERROR: %v, want EOF", err)
				}
			})
		}
	})
	if n := ws.srv.Stats().WebSessions.Load(); n != 1 {
		t.Errorf("WebSessions = %d, want 1", n)
	}

	t.Run("client closes the control stream", func(t *testing.T) {
		ctrl.Close()
		select {
		case <-sess.Context().Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the session did not end after the control stream's FIN")
		}
	})
}

// TestWebFlowsBeforeHello: flows opened before the HELLO wait for the
// WELCOME and then proceed; with a wrong token they are reset and the
// control stream gets SESSION_ERROR unauthorized, then the session closes.
func TestWebFlowsBeforeHello(t *testing.T) {
	ws := startWebServer(t, webOpts{})
	echo := echoServer(t)
	gw := fmt.Sprintf("100.96.0.1:%d", echo)
	for _, tt := range []struct {
		name  string
		token string
	}{{"good token", testToken}, {"wrong token", "not-the-token-0123456789"}} {
		t.Run(tt.name, func(t *testing.T) {
			_, sess, err := ws.wtDial(t, "")
			if err != nil {
				t.Fatal(err)
			}
			// The flow stream is opened (and its FLOW_OPEN sent) first.
			fl := openStream(t, sess)
			if err := webproto.WriteMessage(fl, webproto.TypeFlowOpen, []byte(gw)); err != nil {
				t.Fatal(err)
			}
			fl.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := fl.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
				t.Fatalf("before HELLO the flow was answered: %v", err)
			}
			fl.SetReadDeadline(time.Now().Add(10 * time.Second))
			ctrl := hello(t, sess, tt.token)
			typ, v := readMsg(t, ctrl)
			if tt.token == testToken {
				if typ != webproto.TypeWelcome {
					t.Fatalf("got %v %q, want WELCOME", typ, v)
				}
				if typ, v := readMsg(t, fl); typ != webproto.TypeFlowOK {
					t.Fatalf("flow got %v %q, want FLOW_OK", typ, v)
				}
				fl.Write([]byte("ping"))
				fl.Close()
				if got, err := io.ReadAll(fl); err != nil || string(got) != "ping" {
					t.Fatalf("echo %q %v", got, err)
				}
				return
			}
			if typ != webproto.TypeSessionError {
				t.Fatalf("got %v %q, want SESSION_ERROR", typ, v)
			}
			se, err := webproto.ParseSessionError(v)
			if err != nil || se.Code != webproto.CodeUnauthorized {
				t.Fatalf("SESSION_ERROR %q (%v), want code unauthorized", v, err)
			}
			if _, err := fl.Read(make([]byte, 1)); err == nil {
				t.Fatal("the waiting flow was not reset")
			}
			sess.CloseWithError(0, "") // as the page does on SESSION_ERROR
		})
	}
	if n := ws.srv.Stats().AuthFailures.Load(); n != 1 {
		t.Errorf("AuthFailures = %d, want 1", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestWebSessionErrors: the server ends sessions that send no HELLO in
// time or break the protocol, with the matching close code and reason.
func TestWebSessionErrors(t *testing.T) {
	ws := startWebServer(t, webOpts{helloTimeout: 300 * time.Millisecond})
	closeInfo := func(t *testing.T, sess *webtransport.Session) *webtransport.SessionError {
		t.Helper()
		select {
		case <-sess.Context().Done():
		case <-time.After(5 * time.Second):
			t.Fatal("the server did not close the session")
		}
		_, err := sess.AcceptStream(context.Background())
		var se *webtransport.SessionError
		if !errors.As(err, &se) {
			t.Fatalf("session ended with %v, want a *webtransport.SessionError", err)
		}
		return se
	}
	t.Run("no HELLO", func(t *testing.T) {
		_, sess, err := ws.wtDial(t, "")
		if err != nil {
			t.Fatal(err)
		}
		se := closeInfo(t, sess)
		if se.ErrorCode != webCloseTimeout || !strings.HasPrefix(se.Message, "timeout:") {
			t.Fatalf("closed with %d %q, want %d timeout", se.ErrorCode, se.Message, webCloseTimeout)
		}
	})
	t.Run("unknown first message", func(t *testing.T) {
		_, sess, err := ws.wtDial(t, "")
		if err != nil {
			t.Fatal(err)
		}
		ctrl := hello(t, sess, testToken)
		if typ, _ := readMsg(t, ctrl); typ != webproto.TypeWelcome {
			t.Fatalf("got %v, want WELCOME", typ)
		}
		str := openStream(t, sess)
		webproto.WriteMessage(str, webproto.TypePong, nil)
		typ, v := readMsg(t, ctrl)
		if typ != webproto.TypeSessionError {
			t.Fatalf("got %v %q, want SESSION_ERROR", typ, v)
		}
		if se, _ := webproto.ParseSessionError(v); se == nil || se.Code != webproto.CodeProtocol {
			t.Fatalf("SESSION_ERROR %q, want protocol", v)
		}
		if se := closeInfo(t, sess); se.ErrorCode != webCloseProtocol {
			t.Fatalf("closed with %d %q", se.ErrorCode, se.Message)
		}
	})
	t.Run("oversized ping", func(t *testing.T) {
		_, sess, err := ws.wtDial(t, "")
		if err != nil {
			t.Fatal(err)
		}
		ctrl := hello(t, sess, testToken)
		readMsg(t, ctrl)
		webproto.WriteMessage(ctrl, webproto.TypePing, make([]byte, webproto.MaxPingLen+1))
		typ, v := readMsg(t, ctrl)
		if se, _ := webproto.ParseSessionError(v); typ != webproto.TypeSessionError || se == nil || se.Code != webproto.CodeProtocol {
			t.Fatalf("got %v %q, want SESSION_ERROR protocol", typ, v)
		}
	})
}

func TestParseWebOrigin(t *testing.T) {
	for _, tt := range []struct {
		in, want string
	}{
		{"https://vpn.example.com", "https://vpn.example.com:443"},
		{"HTTPS://VPN.Example.COM:4433", "https://vpn.example.com:4433"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"http://localhost", "http://localhost:80"},
		{"https://[2001:DB8::1]:4433", "https://[2001:db8::1]:4433"},
		{"https://vpn.example.com/", ""},
		{"https://vpn.example.com/page", ""},
		{"https://vpn.example.com?x", ""},
		{"https://vpn.example.com#x", ""},
		{"https://user@vpn.example.com", ""},
		{"ftp://vpn.example.com", ""},
		{"vpn.example.com", ""},
		{"https://", ""},
		{"https://vpn.example.com:", ""},
		{"https://vpn.example.com:0", ""},
		{"https://vpn.example.com:99999", ""},
		{"null", ""},
		{"", ""},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseWebOrigin(tt.in)
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), "scheme://host[:port]") {
					t.Fatalf("ParseWebOrigin(%q) = %q, %v; want an error showing the form", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseWebOrigin(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestCheckOrigin(t *testing.T) {
	def := &Server{}
	list := &Server{}
	for _, o := range []string{"https://portal.example.com", "http://localhost:3000"} {
		wo, err := parseOrigin(o)
		if err != nil {
			t.Fatal(err)
		}
		list.origins = append(list.origins, wo)
	}
	for _, tt := range []struct {
		name   string
		s      *Server
		host   string // request authority
		origin string
		ok     bool
	}{
		{"no origin (not a browser)", def, "vpn.example.com:4433", "", true},
		{"own origin https", def, "vpn.example.com:4433", "https://vpn.example.com:4433", true},
		{"own origin case", def, "VPN.example.com:4433", "https://vpn.EXAMPLE.com:4433", true},
		{"default port", def, "vpn.example.com", "https://vpn.example.com", true},
		{"default port explicit", def, "vpn.example.com:443", "https://vpn.example.com", true},
		{"other port", def, "vpn.example.com:4433", "https://vpn.example.com:8443", false},
		{"other host", def, "vpn.example.com:4433", "https://evil.example:4433", false},
		{"http non-loopback", def, "vpn.example.com:4433", "http://vpn.example.com:4433", false},
		{"http loopback v4", def, "127.0.0.1:4433", "http://127.0.0.1:4433", true},
		{"http loopback v6", def, "[::1]:4433", "http://[::1]:4433", true},
		{"http localhost", def, "localhost:4433", "http://localhost:4433", true},
		{"opaque null", def, "127.0.0.1:4433", "null", false},
		{"garbage", def, "127.0.0.1:4433", "https://a b", false},
		{"list: listed", list, "vpn.example.com:4433", "https://portal.example.com", true},
		{"list: listed http", list, "vpn.example.com:4433", "http://localhost:3000", true},
		{"list: own origin still allowed", list, "vpn.example.com:4433", "https://vpn.example.com:4433", true},
		{"list: own host, other port", list, "vpn.example.com:4433", "https://vpn.example.com:8443", false},
		{"list: other", list, "vpn.example.com:4433", "https://evil.example", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{Host: tt.host, Header: http.Header{}}
			if tt.origin != "" {
				r.Header.Set("Origin", tt.origin)
			}
			err := tt.s.checkOrigin(r)
			if (err == nil) != tt.ok {
				t.Fatalf("checkOrigin = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestWebOriginHandshake: the allowlist applied to real handshakes; a
// refusal is a 403 and counted.
func TestWebOriginHandshake(t *testing.T) {
	ws := startWebServer(t, webOpts{origins: []string{"https://portal.example.com"}})
	if _, sess, err := ws.wtDial(t, "https://portal.example.com"); err != nil || sess == nil {
		t.Fatalf("listed origin: %v", err)
	}
	if _, sess, err := ws.wtDial(t, "https://"+ws.addr); err != nil || sess == nil {
		t.Fatalf("the server's own origin, with a list: %v", err)
	}
	resp, sess, err := ws.wtDial(t, "https://evil.example")
	if err == nil || sess != nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("unlisted origin: resp %v, err %v; want 403", resp, err)
	}
	for range 3 {
		ws.wtDial(t, "https://evil.example")
	}
	if n := ws.srv.Stats().WebRejected.Load(); n != 4 {
		t.Errorf("WebRejected = %d, want 4", n)
	}
	bad := ws.srv.cfg
	bad.WebOrigins = []string{"https://x.example/"}
	if _, err := NewServer(bad); err == nil || !strings.Contains(err.Error(), "WebOrigins") {
		t.Errorf("NewServer with a bad origin: %v", err)
	}
	if !ws.srv.rejects.allow("new key", time.Now()) || ws.srv.rejects.allow("new key", time.Now().Add(time.Minute)) ||
		!ws.srv.rejects.allow("new key", time.Now().Add(11*time.Minute)) {
		t.Error("rate limiter: want once per 10 minutes per key")
	}
}

// TestWebDisabled: with DisableWeb there are no sessions, no page, no TCP
// listener; CONNECT-IP and the health check still work.
func TestWebDisabled(t *testing.T) {
	ws := startWebServer(t, webOpts{disable: true, web: testAssets()})
	// The server does not even advertise WebTransport in its SETTINGS.
	if _, sess, err := ws.wtDial(t, ""); sess != nil || err == nil || !strings.Contains(err.Error(), "didn't enable WebTransport") {
		t.Fatalf("WebTransport with DisableWeb: session %v, err %v; want no WebTransport in SETTINGS", sess, err)
	}
	if ws.srv.WebAddr() != nil {
		t.Errorf("TCP listener at %v with DisableWeb", ws.srv.WebAddr())
	}
	c := ws.h3Client(t)
	if code, body := get(t, c, "https://"+ws.addr+"/"); code != http.StatusNotFound {
		t.Errorf("GET / = %d %q, want 404", code, body)
	}
	if code, body := get(t, c, "https://"+ws.addr+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("GET /healthz = %d %q", code, body)
	}
}

// TestWebTCPPortBusy: if the TCP port is taken, the server says so and
// serves QUIC (sessions, the page over HTTP/3) anyway.
func TestWebTCPPortBusy(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	ws := startWebServer(t, webOpts{udpAddr: busy.Addr().String(), web: testAssets()})
	if ws.srv.WebAddr() != nil {
		t.Fatalf("WebAddr %v, want none", ws.srv.WebAddr())
	}
	if code, _ := get(t, ws.h3Client(t), "https://"+ws.addr+"/"); code != 200 {
		t.Fatalf("GET / over HTTP/3 = %d", code)
	}
	_, sess, err := ws.wtDial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if typ, _ := readMsg(t, hello(t, sess, testToken)); typ != webproto.TypeWelcome {
		t.Fatalf("got %v", typ)
	}
}

// certSHA256 is the hex SHA-256 of a certificate's DER.
func certSHA256(der []byte) string {
	return fmt.Sprintf("%x", sha256.Sum256(der))
}

// TestWebNoLeaks: every goroutine of a browser session (streams, flows,
// flows waiting for the HELLO, the hello timer) and of the page's TCP
// listener ends when the server stops.
func TestWebNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ws, stop := startWebServerStoppable(t, webOpts{web: testAssets()})
	echo := echoServer(t)
	_, sess, err := ws.wtDial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	// A flow waiting for the HELLO on one session, an open flow and a
	// half-open TCP connection to the page on another.
	fl := openStream(t, sess)
	webproto.WriteMessage(fl, webproto.TypeFlowOpen, []byte(fmt.Sprintf("100.96.0.1:%d", echo)))
	_, sess2, err := ws.wtDial(t, "")
	if err != nil {
		t.Fatal(err)
	}
	ctrl := hello(t, sess2, testToken)
	readMsg(t, ctrl)
	if _, typ, _ := openFlow(t, sess2, fmt.Sprintf("100.96.0.1:%d", echo)); typ != webproto.TypeFlowOK {
		t.Fatalf("got %v", typ)
	}
	var d net.Dialer
	idle, err := d.DialContext(ctx, "tcp", ws.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		// The echo server's accept loop and the clients' own goroutines
		// (closed by the cleanups) may remain; the server's may not.
		if n <= before+4 {
			t.Logf("goroutines: %d before, %d after", before, n)
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after the server stopped, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, fn := range []string{"tunnel.(*webSession)", "tunnel.(*Server).serveTCP", "tunnel.(*Server).sniffLoop", "tunnel.sniff(", "tunnel.(*Server).serveFlow", "webtransport.(*Server).ServeQUICConn"} {
		if strings.Contains(stacks, fn) {
			t.Errorf("a %s goroutine is still running after the server stopped", fn)
		}
	}
}

// TestWebShutdown: a stopping server tells its browser sessions why
// (SESSION_ERROR shutdown on the control stream) before it closes their
// connections, and stops within webShutdownWait even if a client does not
// close its session; a client that closes at once (as the page does) lets
// it stop sooner.
func TestWebShutdown(t *testing.T) {
	for _, tt := range []struct {
		name        string
		clientClose bool
	}{{"client closes", true}, {"client ignores", false}} {
		t.Run(tt.name, func(t *testing.T) {
			ws, stop := startWebServerStoppable(t, webOpts{})
			echo := echoServer(t)
			_, sess, err := ws.wtDial(t, "")
			if err != nil {
				t.Fatal(err)
			}
			ctrl := hello(t, sess, testToken)
			if typ, _ := readMsg(t, ctrl); typ != webproto.TypeWelcome {
				t.Fatalf("got %v, want WELCOME", typ)
			}
			fl, typ, _ := openFlow(t, sess, fmt.Sprintf("100.96.0.1:%d", echo))
			if typ != webproto.TypeFlowOK {
				t.Fatalf("got %v, want FLOW_OK", typ)
			}
			start := time.Now()
			stopped := make(chan time.Duration, 1)
			go func() {
				stop()
				stopped <- time.Since(start)
			}()
			typ, v, err := webproto.ReadMessage(ctrl, 0)
			if err != nil {
				t.Fatalf("reading the control stream: %v; want SESSION_ERROR", err)
			}
			se, perr := webproto.ParseSessionError(v)
			if typ != webproto.TypeSessionError || perr != nil || se.Code != webproto.CodeShutdown {
				t.Fatalf("got %v %q, want SESSION_ERROR shutdown", typ, v)
			}
			// The open flow was ended with the session, not left running.
			if _, err := io.ReadAll(fl); err == nil {
				t.Error("the open flow ended cleanly; want a reset")
			}
			if tt.clientClose {
				sess.CloseWithError(0, "")
			}
			d := <-stopped
			limit := webShutdownWait + 500*time.Millisecond
			if tt.clientClose {
				limit = webShutdownLinger
			}
			if d > limit {
				t.Errorf("Serve returned %v after cancel, want at most %v", d, limit)
			}
			t.Logf("Serve returned %v after cancel", d)
		})
	}
}

// TestWtSessionErr: a stream of a closed session fails with an error that
// says so, even when the close carried no reason (the log line was
// "flow: splice: stream read: " with nothing after it).
func TestWtSessionErr(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&webtransport.SessionError{Remote: true}, "WebTransport session closed by the client (code 0)"},
		{&webtransport.SessionError{ErrorCode: 4, Message: "shutdown: bye"}, "WebTransport session closed by the server (code 4): shutdown: bye"},
		{fmt.Errorf("x: %w", &webtransport.SessionError{Remote: true, ErrorCode: 2}), "WebTransport session closed by the client (code 2)"},
	} {
		got := wtResetErr(tt.err)
		if got.Error() != tt.want {
			t.Errorf("wtResetErr(%#v) = %q, want %q", tt.err, got, tt.want)
		}
		var se *webtransport.SessionError
		if !errors.As(got, &se) {
			t.Errorf("wtResetErr(%#v) no longer wraps the *webtransport.SessionError", tt.err)
		}
	}
	for _, err := range []error{&webtransport.StreamError{ErrorCode: 7, Remote: true}, &quic.StreamError{ErrorCode: 0x100, Remote: true}} {
		if reset := wtResetErr(err); !errors.Is(reset, flow.ErrReset) {
			t.Errorf("a remote stream reset: %v, want flow.ErrReset", reset)
		}
	}
	if local := wtResetErr(&quic.StreamError{ErrorCode: 0x100}); errors.Is(local, flow.ErrReset) {
		t.Errorf("a local stream reset: %v, want no flow.ErrReset", local)
	}
	if wtResetErr(nil) != nil || wtResetErr(io.EOF) != io.EOF {
		t.Error("wtResetErr changed nil or io.EOF")
	}
}

// TestWebCounters: the server's counter summary includes the browser
// sessions.
func TestWebCounters(t *testing.T) {
	var st ServerStats
	st.WebSessions.Add(2)
	st.WebRejected.Add(3)
	got := map[string]uint64{}
	for _, a := range serverCounterAttrs(&st) {
		got[a.Key] = a.Value.Uint64()
	}
	if got["web_sessions"] != 2 || got["web_rejected"] != 3 {
		t.Errorf("serverCounterAttrs = %v, want web_sessions=2 web_rejected=3", got)
	}
}

// TestRateLimitedLogCap: distinct keys (a scanner sending a new Origin each
// time) are logged at most rateLimitedKeys times per period.
func TestRateLimitedLogCap(t *testing.T) {
	var l rateLimitedLog
	now := time.Now()
	n := 0
	for i := range 3 * rateLimitedKeys {
		if l.allow(fmt.Sprint("origin-", i), now.Add(time.Duration(i)*time.Millisecond)) {
			n++
		}
	}
	if n != rateLimitedKeys {
		t.Errorf("%d of %d distinct keys logged within a period, want %d", n, 3*rateLimitedKeys, rateLimitedKeys)
	}
	if !l.allow("later", now.Add(rateLimitedPeriod+time.Minute)) {
		t.Error("nothing logged after the period passed")
	}
}
