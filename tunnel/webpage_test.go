package tunnel

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/tunnel/webproto"
)

// h3Client is an HTTP/3 client pinning the server's long-lived cert.
func (ws *webTestServer) h3Client(t *testing.T) *http.Client {
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: auth.VerifyPinned(ws.pin)},
		QUICConfig:      &quic.Config{},
	}
	t.Cleanup(func() { tr.Close() })
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// tcpClient is an HTTPS (h2 or HTTP/1.1) and plain-HTTP client for the TCP
// listener, pinning the long-lived cert; it does not follow redirects.
func (ws *webTestServer) tcpClient(t *testing.T) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: auth.VerifyPinned(ws.pin)},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// TestWebPage: the page, its files and its configuration over HTTP/3, over
// HTTPS on TCP (h2, with Alt-Svc) and over plain HTTP from loopback, with
// the right types, caching and security headers.
func TestWebPage(t *testing.T) {
	assets := testAssets()
	ws := startWebServer(t, webOpts{web: assets})
	port := ws.addr[strings.LastIndex(ws.addr, ":")+1:]
	if ws.srv.WebAddr() == nil || ws.srv.WebAddr().String() != ws.addr {
		t.Fatalf("TCP listener %v, want %s", ws.srv.WebAddr(), ws.addr)
	}
	transports := []struct {
		name   string
		client *http.Client
		base   string
		proto  int // major version
	}{
		{"h3", ws.h3Client(t), "https://" + ws.addr, 3},
		{"https-tcp", ws.tcpClient(t), "https://" + ws.addr, 2},
		{"http-loopback", ws.tcpClient(t), "http://" + ws.addr, 1},
	}
	files := []struct {
		path, file, ctype string
	}{
		{"/", "index.html", "text/html; charset=utf-8"},
		{"/index.html", "index.html", "text/html; charset=utf-8"},
		{"/app.js", "app.js", "text/javascript; charset=utf-8"},
		{"/worker.js", "worker.js", "text/javascript; charset=utf-8"},
		{"/wasm_exec.js", "wasm_exec.js", "text/javascript; charset=utf-8"},
		{"/roam.js", "roam.js", "text/javascript; charset=utf-8"},
		{"/roam.wasm", "roam.wasm", "application/wasm"},
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			for _, f := range files {
				resp, err := tr.client.Get(tr.base + f.path)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != string((*assets)[f.file].Data) {
					t.Fatalf("GET %s: %d, %d bytes; want 200 and %s", f.path, resp.StatusCode, len(body), f.file)
				}
				if resp.ProtoMajor != tr.proto {
					t.Errorf("GET %s over %s: protocol %s", f.path, tr.name, resp.Proto)
				}
				h := resp.Header
				if h.Get("Content-Type") != f.ctype || h.Get("Cache-Control") != "no-cache" || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("ETag") == "" {
					t.Errorf("GET %s: headers %v", f.path, h)
				}
				csp := h.Get("Content-Security-Policy")
				for _, want := range []string{"'wasm-unsafe-eval'", "worker-src 'self'", "frame-ancestors 'self'"} {
					if !strings.Contains(csp, want) {
						t.Errorf("GET %s: CSP %q lacks %s", f.path, csp, want)
					}
				}
				if want := fmt.Sprintf(`h3=":%s"; ma=86400`, port); tr.name == "https-tcp" && h.Get("Alt-Svc") != want {
					t.Errorf("Alt-Svc %q, want %q", h.Get("Alt-Svc"), want)
				}
			}
			// Revalidation with the ETag.
			req, _ := http.NewRequest(http.MethodGet, tr.base+"/roam.wasm", nil)
			resp, err := tr.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
			if resp, err = tr.client.Do(req); err != nil || resp.StatusCode != http.StatusNotModified {
				t.Errorf("conditional GET: %v %v, want 304", resp.Status, err)
			}
			resp.Body.Close()
			code, body := get(t, tr.client, tr.base+webproto.ConfigPath)
			var pc webproto.PageConfig
			if err := json.Unmarshal([]byte(body), &pc); code != 200 || err != nil || pc.Server != "roam test" || len(pc.CertHashes) != 0 {
				t.Errorf("config: %d %q (%v), want no hashes without WebSelfSigned", code, body, err)
			}
			for _, p := range []string{"/nope.js", "/sub", "/../index.html.x", "/sub/"} {
				if code, _ := get(t, tr.client, tr.base+p); code != http.StatusNotFound {
					t.Errorf("GET %s = %d, want 404", p, code)
				}
			}
			if code, body := get(t, tr.client, tr.base+"/healthz"); code != 200 || body != "ok\n" {
				t.Errorf("healthz %d %q", code, body)
			}
			resp, err = tr.client.Post(tr.base+"/", "text/plain", strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("POST / = %d, want 405", resp.StatusCode)
			}
		})
	}

	t.Run("no browser client", func(t *testing.T) {
		ws := startWebServer(t, webOpts{})
		for _, c := range []*http.Client{ws.h3Client(t), ws.tcpClient(t)} {
			code, body := get(t, c, "https://"+ws.addr+"/")
			if code != http.StatusNotFound || !strings.Contains(body, "this server has no browser client") {
				t.Errorf("GET / = %d %q", code, body)
			}
		}
	})
}

// TestServePlain: plain HTTP serves loopback clients and redirects
// everyone else to https on the same host and port.
func TestServePlain(t *testing.T) {
	s := &Server{cfg: ServerConfig{Web: *testAssets()}}
	for _, tt := range []struct {
		name, remote, host, target string
		code                       int
		location                   string
	}{
		{"loopback v4", "127.0.0.1:5555", "127.0.0.1:4433", "/", 200, ""},
		{"loopback v6", "[::1]:5555", "[::1]:4433", "/app.js", 200, ""},
		{"loopback mapped", "[::ffff:127.0.0.1]:5555", "127.0.0.1:4433", "/", 200, ""},
		{"remote", "192.0.2.9:5555", "vpn.example.com:4433", "/roam.wasm?x=1", 302, "https://vpn.example.com:4433/roam.wasm?x=1"},
		{"remote without port", "192.0.2.9:5555", "vpn.example.com", "/", 302, "https://vpn.example.com:4433/"},
		{"remote v6", "[2001:db8::9]:5555", "[2001:db8::1]:4433", "/", 302, "https://[2001:db8::1]:4433/"},
		{"remote bad host", "192.0.2.9:5555", "evil.example/x", "/", 302, "https://192.0.2.1:4433/"},
		{"remote healthz", "192.0.2.9:5555", "vpn.example.com:4433", "/healthz", 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			r.RemoteAddr, r.Host = tt.remote, tt.host
			r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 4433}))
			w := httptest.NewRecorder()
			s.servePlain(w, r, 4433)
			if w.Code != tt.code || w.Header().Get("Location") != tt.location {
				t.Fatalf("%d Location %q; want %d %q", w.Code, w.Header().Get("Location"), tt.code, tt.location)
			}
		})
	}
}

// TestWebCert: with WebSelfSigned, a ClientHello with a browser's marks
// (GREASE, ALPS, compress_certificate) gets the short-lived certificate
// whose hash the page configuration publishes first, and one without (Go:
// native clients) the long-lived pinned one; a real Go handshake gets the
// pinned one too.
func TestWebCert(t *testing.T) {
	ws := startWebServer(t, webOpts{selfSigned: true, web: testAssets()})
	code, body := get(t, ws.tcpClient(t), "http://"+ws.addr+webproto.ConfigPath)
	var pc webproto.PageConfig
	if err := json.Unmarshal([]byte(body), &pc); code != 200 || err != nil || len(pc.CertHashes) != 2 {
		t.Fatalf("config %d %q (%v), want two hashes", code, body, err)
	}
	conf := ws.cert
	tlsConf := tlsConfigFor(conf)
	if err := ws.srv.configureQUICCert(tlsConf); err != nil {
		t.Fatal(err)
	}
	goHello := &tls.ClientHelloInfo{
		CipherSuites:      []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256},
		SupportedVersions: []uint16{tls.VersionTLS13},
		Extensions:        []uint16{0, 10, 13, 16, 43, 45, 51, 57},
	}
	// Chromium 156's QUIC ClientHello as measured here: no GREASE, but
	// ALPS (0x44cd) and compress_certificate (0x1b).
	browserHello := &tls.ClientHelloInfo{
		CipherSuites:      []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256},
		SupportedCurves:   []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384},
		SupportedVersions: []uint16{tls.VersionTLS13},
		Extensions:        []uint16{0x2b, 0x33, 0x2d, 0x44cd, 0x0a, 0x10, 0x0d, 0x39, 0x1b},
	}
	long, err := tlsConf.GetCertificate(goHello)
	if err != nil {
		t.Fatal(err)
	}
	if certSHA256(long.Certificate[0]) != certSHA256(ws.cert.Certificate[0]) {
		t.Error("Go's ClientHello did not get the pinned certificate")
	}
	short, err := tlsConf.GetCertificate(browserHello)
	if err != nil {
		t.Fatal(err)
	}
	if got := certSHA256(short.Certificate[0]); got != pc.CertHashes[0] {
		t.Errorf("Chromium's ClientHello got %s, config.json publishes %v", got, pc.CertHashes)
	}
	leaf, err := x509.ParseCertificate(short.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() || leaf.Version != 3 {
		t.Errorf("short-lived certificate: %T v%d, want ECDSA P-256 X.509v3", leaf.PublicKey, leaf.Version)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d > 14*24*time.Hour {
		t.Errorf("short-lived certificate valid for %v, more than 14 days", d)
	}
	if now := time.Now(); now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		t.Errorf("short-lived certificate not valid now: %v..%v", leaf.NotBefore, leaf.NotAfter)
	}
	// A real handshake from Go (no browser marks) gets the pinned certificate:
	// the pinning client would fail otherwise.
	_, sess, err := ws.wtDial(t, "")
	if err != nil {
		t.Fatalf("a pinning Go client: %v", err)
	}
	if got := sess.SessionState().ConnectionState.TLS.PeerCertificates[0].Raw; certSHA256(got) != certSHA256(ws.cert.Certificate[0]) {
		t.Error("a Go handshake did not get the pinned certificate")
	}

	for _, tt := range []struct {
		v      uint16
		grease bool
	}{{0x0a0a, true}, {0xfafa, true}, {0x4a4a, true}, {0x0a1a, false}, {0x1301, false}, {0x0000, false}, {0xaaaa, true}, {0xabab, false}, {0x0a0b, false}} {
		if isGREASE(tt.v) != tt.grease {
			t.Errorf("isGREASE(%#04x) = %v", tt.v, !tt.grease)
		}
	}
	for _, tt := range []struct {
		name    string
		chi     *tls.ClientHelloInfo
		browser bool
	}{
		{"Go", goHello, false},
		{"Chromium QUIC", browserHello, true},
		{"GREASE suite", &tls.ClientHelloInfo{CipherSuites: []uint16{0x3a3a, 0x1301}}, true},
		{"GREASE extension", &tls.ClientHelloInfo{Extensions: []uint16{0x2a2a, 0}}, true},
		{"GREASE group", &tls.ClientHelloInfo{SupportedCurves: []tls.CurveID{0xdada}}, true},
		{"GREASE version", &tls.ClientHelloInfo{SupportedVersions: []uint16{0x8a8a, 0x0304}}, true},
		{"GREASE signature scheme", &tls.ClientHelloInfo{SignatureSchemes: []tls.SignatureScheme{0x6a6a}}, true},
		{"compress_certificate", &tls.ClientHelloInfo{Extensions: []uint16{0x1b}}, true},
		{"old ALPS", &tls.ClientHelloInfo{Extensions: []uint16{0x4469}}, true},
		{"empty", &tls.ClientHelloInfo{}, false},
	} {
		if got := looksLikeBrowser(tt.chi); got != tt.browser {
			t.Errorf("looksLikeBrowser(%s) = %v", tt.name, got)
		}
	}
}

// TestCertRotator: the current certificate is replaced by the published
// next one every certRotation; whatever the clock does, the current one is
// valid now, the next one is valid when it becomes current, and both are
// valid at most 14 days.
func TestCertRotator(t *testing.T) {
	now := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	r, err := newCertRotator(nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	check := func(step string) (cur, next *x509.Certificate) {
		t.Helper()
		c, n, err := r.certs()
		if err != nil {
			t.Fatal(err)
		}
		for _, cert := range []*tls.Certificate{c, n} {
			if d := cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore); d > 14*24*time.Hour {
				t.Fatalf("%s: validity %v", step, d)
			}
		}
		if now.Before(c.Leaf.NotBefore) || !now.Before(c.Leaf.NotAfter) {
			t.Fatalf("%s: current certificate %v..%v not valid at %v", step, c.Leaf.NotBefore, c.Leaf.NotAfter, now)
		}
		if at := c.Leaf.NotBefore.Add(time.Hour + certRotation); at.Before(n.Leaf.NotBefore) || !at.Before(n.Leaf.NotAfter) {
			t.Fatalf("%s: next certificate %v..%v not valid when it becomes current (%v)", step, n.Leaf.NotBefore, n.Leaf.NotAfter, at)
		}
		return c.Leaf, n.Leaf
	}
	cur0, next0 := check("start")
	now = now.Add(certRotation - time.Minute)
	if cur, next := check("before the switch"); !cur.Equal(cur0) || !next.Equal(next0) {
		t.Fatal("switched early")
	}
	h, _ := r.hashes()
	now = now.Add(2 * time.Minute)
	cur1, next1 := check("after the switch")
	if !cur1.Equal(next0) || next1.Equal(next0) {
		t.Fatal("the published next certificate did not become current")
	}
	if h[1] != auth.CertHash(cur1.Raw) {
		t.Fatal("hashes()[1] was not the next certificate")
	}
	// The server slept through a whole rotation: fresh certificates.
	now = now.Add(3 * certRotation)
	if cur, _ := check("after a long sleep"); cur.Equal(cur1) || cur.Equal(next1) {
		t.Fatal("no fresh certificate after a long sleep")
	}
	// The clock went back a day.
	now = now.Add(-24 * time.Hour)
	check("clock went back")
	// Every hour over a month.
	for range 30 * 24 {
		now = now.Add(time.Hour)
		check(now.String())
	}
}

// TestWebPageGzip: compressible page files go gzipped to clients that
// accept gzip (once compressed, with Vary and an ETag of their own), as
// they are to others; small files and files that do not shrink go as they
// are.
func TestWebPageGzip(t *testing.T) {
	wasm := bytes.Repeat([]byte("\x00asm roam roam roam 0123456789"), 40000)
	noise := make([]byte, 64<<10)
	rand.Read(noise)
	assets := &fstest.MapFS{
		"index.html": {Data: []byte("<!doctype html>")},
		"roam.wasm":  {Data: wasm},
		"noise.js":   {Data: noise},
	}
	ws := startWebServer(t, webOpts{web: assets})
	h3 := &http3.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: auth.VerifyPinned(ws.pin)},
		QUICConfig:      &quic.Config{},
	}
	t.Cleanup(func() { h3.Close() })
	tcp := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: auth.VerifyPinned(ws.pin)},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tcp.CloseIdleConnections)
	type result struct {
		code       int
		enc, etag  string
		vary, clen string
		body       []byte
	}
	do := func(t *testing.T, rt http.RoundTripper, method, url string, hdr ...string) result {
		t.Helper()
		req, _ := http.NewRequest(method, url, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		// Setting Accept-Encoding ourselves turns off the transports'
		// transparent decompression: we see the bytes on the wire.
		if req.Header.Get("Accept-Encoding") == "" {
			req.Header.Set("Accept-Encoding", "identity")
		}
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return result{resp.StatusCode, resp.Header.Get("Content-Encoding"), resp.Header.Get("ETag"),
			resp.Header.Get("Vary"), resp.Header.Get("Content-Length"), b}
	}
	gunzip := func(t *testing.T, b []byte) []byte {
		t.Helper()
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, tr := range []struct {
		name string
		rt   http.RoundTripper
	}{{"h3", h3}, {"https-tcp", tcp}} {
		t.Run(tr.name, func(t *testing.T) {
			url := "https://" + ws.addr + "/roam.wasm"
			raw := do(t, tr.rt, "GET", url)
			if raw.code != 200 || raw.enc != "" || !bytes.Equal(raw.body, wasm) || raw.vary != "Accept-Encoding" {
				t.Fatalf("identity: %d enc %q vary %q, %d bytes", raw.code, raw.enc, raw.vary, len(raw.body))
			}
			for _, ae := range []string{"gzip", "gzip, deflate, br, zstd", "br;q=1.0, gzip;q=0.5", "*"} {
				gz := do(t, tr.rt, "GET", url, "Accept-Encoding", ae)
				if gz.code != 200 || gz.enc != "gzip" || gz.vary != "Accept-Encoding" {
					t.Fatalf("Accept-Encoding %q: %d enc %q vary %q", ae, gz.code, gz.enc, gz.vary)
				}
				if len(gz.body) >= len(wasm)/10 || !bytes.Equal(gunzip(t, gz.body), wasm) {
					t.Fatalf("Accept-Encoding %q: %d bytes that do not decompress to the file", ae, len(gz.body))
				}
				if gz.clen != fmt.Sprint(len(gz.body)) {
					t.Errorf("Content-Length %q, want %d", gz.clen, len(gz.body))
				}
				if gz.etag == "" || gz.etag == raw.etag {
					t.Errorf("gzip ETag %q, identity %q: want two different ones", gz.etag, raw.etag)
				}
				if nm := do(t, tr.rt, "GET", url, "Accept-Encoding", ae, "If-None-Match", gz.etag); nm.code != http.StatusNotModified {
					t.Errorf("revalidating the gzip ETag: %d, want 304", nm.code)
				}
				if head := do(t, tr.rt, "HEAD", url, "Accept-Encoding", ae); head.code != 200 || head.enc != "gzip" || head.clen != gz.clen || len(head.body) != 0 {
					t.Errorf("HEAD: %d enc %q length %q", head.code, head.enc, head.clen)
				}
			}
			for _, ae := range []string{"identity", "gzip;q=0", "br", "*;q=0", "gzip;q=0, *"} {
				if r := do(t, tr.rt, "GET", url, "Accept-Encoding", ae); r.enc != "" || !bytes.Equal(r.body, wasm) {
					t.Errorf("Accept-Encoding %q: enc %q, %d bytes; want the file as it is", ae, r.enc, len(r.body))
				}
			}
			if r := do(t, tr.rt, "GET", "https://"+ws.addr+"/noise.js", "Accept-Encoding", "gzip"); r.enc != "" || !bytes.Equal(r.body, noise) {
				t.Errorf("incompressible file: enc %q, %d bytes", r.enc, len(r.body))
			}
			if r := do(t, tr.rt, "GET", "https://"+ws.addr+"/", "Accept-Encoding", "gzip"); r.enc != "" || r.vary != "" {
				t.Errorf("small file: enc %q vary %q", r.enc, r.vary)
			}
		})
	}
}

func TestAcceptsGzip(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"", false}, {"gzip", true}, {"GZIP", true}, {"x-gzip", true}, {"deflate, gzip", true},
		{"gzip;q=0", false}, {"gzip; q=0.000", false}, {"gzip;q=0.1", true}, {"gzip;q=x", false},
		{"*", true}, {"*;q=0", false}, {"gzip;q=0, *", false}, {"br, *;q=0.5", true}, {"identity", false},
	} {
		if got := acceptsGzip([]string{tt.in}); got != tt.want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
