package tunnel

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/webproto"
)

// The browser client's page.
//
// The same handler (servePage) answers GET and HEAD on three transports:
//
//   - HTTP/3 on the UDP port (ServeHTTP), next to CONNECT-IP, flows and
//     WebTransport;
//   - HTTPS (HTTP/1.1 and HTTP/2) on TCP on the same port number, with
//     Alt-Svc pointing at HTTP/3: a browser loads a page over TCP first;
//   - plain HTTP on that same TCP listener, told apart by the first byte
//     (0x16 starts a TLS handshake). Only loopback clients get the page
//     this way (http://127.0.0.1:PORT is a secure context, so WebTransport
//     works from it; headless browser tests use it); everyone else is
//     redirected to https on the same host and port. /healthz answers
//     everyone.
//
// Paths: "/" is index.html; other paths are files at the root of
// ServerConfig.Web; webproto.ConfigPath is the JSON webproto.PageConfig
// (the certificate hashes to pin); /healthz is "ok".

// pageCSP is the page's Content-Security-Policy: only its own scripts,
// WebAssembly compilation ('wasm-unsafe-eval', no eval), workers from the
// server, connections (fetch, WebTransport) to the server, inline styles;
// tunnelled HTML is shown in sandboxed frames (blob: or srcdoc); no
// framing by other sites.
const pageCSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; " +
	"img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; frame-src 'self' blob: data:; " +
	"frame-ancestors 'self'; base-uri 'none'; form-action 'self'; object-src 'none'"

// Timeouts of the TCP side.
const (
	// sniffTimeout bounds the wait for a TCP client's first byte.
	sniffTimeout = 10 * time.Second
	// maxSniffing bounds the TCP connections waiting for their first
	// byte; beyond it new ones are closed at once.
	maxSniffing = 256
)

// contentTypes are the page's file types; others are
// application/octet-stream (with nosniff).
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".mjs":  "text/javascript; charset=utf-8",
	".wasm": "application/wasm",
	".json": "application/json",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
	".txt":  "text/plain; charset=utf-8",
	".map":  "application/json",
}

// servePage answers GET and HEAD requests on any transport.
func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	if r.URL.Path == "/healthz" {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		io.WriteString(w, "ok\n")
		return
	}
	if s.cfg.DisableWeb {
		http.NotFound(w, r)
		return
	}
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("Referrer-Policy", "no-referrer")
	if r.URL.Path == webproto.ConfigPath {
		s.serveConfig(w, r)
		return
	}
	s.serveFile(w, r)
}

// serveConfig answers webproto.ConfigPath.
func (s *Server) serveConfig(w http.ResponseWriter, r *http.Request) {
	pc := webproto.PageConfig{Server: s.cfg.Version}
	if s.certs != nil {
		hashes, err := s.certs.hashes()
		if err != nil {
			s.log.Error("browser certificate", "err", err)
			http.Error(w, "certificate error", http.StatusInternalServerError)
			return
		}
		pc.CertHashes = hashes
	}
	b, err := json.Marshal(pc)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-cache")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(append(b, '\n'))
}

// serveFile serves one file of ServerConfig.Web; "/" is index.html.
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Web == nil {
		http.Error(w, "this server has no browser client", http.StatusNotFound)
		return
	}
	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	if name == "" {
		name = "index.html"
	}
	if !fs.ValidPath(name) {
		http.NotFound(w, r)
		return
	}
	f, err := s.cfg.Web.Open(name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.IsDir() {
		http.NotFound(w, r)
		return
	}
	content, ok := f.(io.ReadSeeker)
	if !ok {
		b, err := io.ReadAll(f)
		if err != nil {
			s.log.Warn("reading a page file", "file", name, "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		content = bytes.NewReader(b)
	}
	h := w.Header()
	ct, ok := contentTypes[path.Ext(name)]
	if !ok {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	// The files have no content hash in their names: browsers revalidate
	// every time (cheap with the ETag) so a new server version is picked
	// up at once.
	h.Set("Cache-Control", "no-cache")
	tag, err := s.etag(name, st, content)
	if err != nil {
		tag = ""
	}
	if gzipTypes[path.Ext(name)] && st.Size() >= gzipMinSize {
		h.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r.Header.Values("Accept-Encoding")) {
			if gz := s.gzipped(name, etagKey{name, st.Size(), st.ModTime()}, content); gz != nil {
				h.Set("Content-Encoding", "gzip")
				if tag != "" {
					// A different representation needs a different strong ETag.
					h.Set("ETag", strings.TrimSuffix(tag, `"`)+`-gzip"`)
				}
				http.ServeContent(gzipLengthWriter{w, len(gz)}, r, name, st.ModTime(), bytes.NewReader(gz))
				return
			}
		}
	}
	if tag != "" {
		h.Set("ETag", tag)
	}
	http.ServeContent(w, r, name, st.ModTime(), content)
}

// Compression of page files: roam.wasm is ~11 MB and ~3 MB gzipped.
const gzipMinSize = 1 << 10 // smaller files are served as they are

// gzipTypes are the file types worth compressing.
var gzipTypes = map[string]bool{
	".html": true, ".js": true, ".mjs": true, ".wasm": true, ".json": true,
	".css": true, ".svg": true, ".txt": true, ".map": true,
}

// gzipEntry is the compressed form of one version of a page file, made
// once, on the first request that accepts it.
type gzipEntry struct {
	key  etagKey
	once sync.Once
	data []byte // nil if compression failed or saved nothing
}

// gzipped returns the gzip encoding of the page file f (key identifies its
// version), compressing it on first use and keeping it in memory, or nil
// if it does not get smaller. It rewinds f. Concurrent first requests wait
// for one compression; a changed file (--web-dir) replaces its entry.
func (s *Server) gzipped(name string, key etagKey, f io.ReadSeeker) []byte {
	e := &gzipEntry{key: key}
	if v, loaded := s.gzips.LoadOrStore(name, e); loaded {
		if old := v.(*gzipEntry); old.key == key {
			e = old
		} else {
			s.gzips.Store(name, e)
		}
	}
	e.once.Do(func() {
		var buf bytes.Buffer
		// The default level: for roam.wasm (11.4 MB) 3.04 MB in 0.7 s here;
		// BestCompression saves 0.7 % more and takes 1.7 s, which the first
		// page load would wait for.
		zw := gzip.NewWriter(&buf)
		_, err := io.Copy(zw, f)
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
		if _, serr := f.Seek(0, io.SeekStart); err == nil {
			err = serr
		}
		switch {
		case err != nil:
			s.log.Warn("compressing a page file", "file", name, "err", err)
		case int64(buf.Len()) < key.size:
			e.data = buf.Bytes()
		}
	})
	return e.data
}

// gzipLengthWriter sets Content-Length on a 200 answer: http.ServeContent
// leaves it out when Content-Encoding is set (it cannot know whether the
// writer compresses on the fly; here the content is compressed already).
type gzipLengthWriter struct {
	http.ResponseWriter
	n int
}

func (w gzipLengthWriter) WriteHeader(code int) {
	if code == http.StatusOK {
		w.Header().Set("Content-Length", strconv.Itoa(w.n))
	}
	w.ResponseWriter.WriteHeader(code)
}

// acceptsGzip reports whether Accept-Encoding field values accept gzip
// (RFC 9110 §12.5.3): "gzip" or "*" with a non-zero weight, and gzip not
// refused by name.
func acceptsGzip(values []string) bool {
	gz, star := -1, -1 // -1 unnamed, 0 refused, 1 accepted
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			coding, params, _ := strings.Cut(item, ";")
			ok := 1
			for _, p := range strings.Split(params, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "q") {
					if q, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil || q <= 0 {
						ok = 0
					}
				}
			}
			switch strings.ToLower(strings.TrimSpace(coding)) {
			case "gzip", "x-gzip":
				gz = ok
			case "*":
				star = ok
			}
		}
	}
	return gz == 1 || gz == -1 && star == 1
}

type etagKey struct {
	name  string
	size  int64
	mtime time.Time
}

// etag returns the strong ETag of a page file (a SHA-256 prefix of its
// content), cached by name, size and modification time, and rewinds f.
func (s *Server) etag(name string, st fs.FileInfo, f io.ReadSeeker) (string, error) {
	key := etagKey{name, st.Size(), st.ModTime()}
	if v, ok := s.etags.Load(key); ok {
		return v.(string), nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	tag := `"` + hex.EncodeToString(h.Sum(nil)[:12]) + `"`
	s.etags.Store(key, tag)
	return tag, nil
}

// WebAddr returns the address of the TCP listener serving the page, or nil
// if there is none (DisableWeb, the port could not be bound, or Serve has
// not started yet).
func (s *Server) WebAddr() net.Addr {
	if a := s.tcpAddr.Load(); a != nil {
		return *a
	}
	return nil
}

// listenTCP listens on TCP at the UDP socket's address, or logs why it
// cannot and returns nil: the QUIC side works without it.
func (s *Server) listenTCP(udp net.Addr) net.Listener {
	ln, err := net.Listen("tcp", udp.String())
	if err != nil {
		s.log.Warn("cannot listen on TCP for the browser page; serving QUIC only (browsers need the page from elsewhere, or --web=false to silence this)",
			"addr", udp.String(), "err", err)
		return nil
	}
	a := ln.Addr()
	s.tcpAddr.Store(&a)
	return ln
}

// serveTCP serves the page on ln (HTTPS and, by the first byte, plain
// HTTP) until ctx ends; it closes ln.
func (s *Server) serveTCP(ctx context.Context, ln net.Listener) error {
	log := s.log.With("listener", "tcp")
	log.Debug("page listener started", "addr", ln.Addr())
	defer log.Debug("page listener stopped")
	tlsLn := newChanListener(ln.Addr())
	plainLn := newChanListener(ln.Addr())
	port := ln.Addr().(*net.TCPAddr).Port
	altSvc := fmt.Sprintf(`h3=":%d"; ma=86400`, port)
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	tlsConf := s.cfg.TLS.Clone()
	tlsConf.NextProtos = nil // ServeTLS offers h2 and http/1.1
	tlsConf.MinVersion = tls.VersionTLS12
	secure := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Alt-Svc", altSvc)
			s.servePage(w, r)
		}),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errLog,
	}
	plain := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.servePlain(w, r, port) }),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errLog,
	}
	grp, gctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return s.sniffLoop(gctx, ln, tlsLn, plainLn) })
	grp.Go(func() error { return ignoreClosed(secure.ServeTLS(tlsLn, "", "")) })
	grp.Go(func() error { return ignoreClosed(plain.Serve(plainLn)) })
	grp.Go(func() error {
		<-gctx.Done()
		ln.Close()
		secure.Close()
		plain.Close()
		return nil
	})
	err := grp.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// sniffLoop accepts TCP connections and hands each, by its first byte, to
// the TLS or the plain-HTTP server. It returns when ln is closed.
func (s *Server) sniffLoop(ctx context.Context, ln net.Listener, tlsLn, plainLn *chanListener) error {
	sem := make(chan struct{}, maxSniffing)
	var wg sync.WaitGroup
	defer wg.Wait() // after the closes below: they unblock deliver
	defer tlsLn.Close()
	defer plainLn.Close()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting a TCP connection", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-ctx.Done():
				return nil
			}
		}
		delay = 0
		select {
		case sem <- struct{}{}:
		default:
			c.Close() // too many connections that have not said anything yet
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			sniff(ctx, c, tlsLn, plainLn)
		})
	}
}

// sniff reads c's first byte and delivers c (with that byte put back) to
// the TLS listener if it starts a TLS handshake record (0x16), else to the
// plain one.
// A pending read ends when ctx does.
func sniff(ctx context.Context, c net.Conn, tlsLn, plainLn *chanListener) {
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	var b [1]byte
	_, err := io.ReadFull(c, b[:])
	stop()
	if err != nil || ctx.Err() != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: c, first: b[:]}
	if b[0] == 0x16 {
		tlsLn.deliver(pc)
	} else {
		plainLn.deliver(pc)
	}
}

// servePlain answers plain HTTP on the TCP port: the page for loopback
// clients, /healthz for all, a redirect to https for everyone else.
func (s *Server) servePlain(w http.ResponseWriter, r *http.Request, port int) {
	if r.URL.Path == "/healthz" || isLoopbackRemote(r.RemoteAddr) {
		s.servePage(w, r)
		return
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if !validRedirectHost(host) {
		// No usable Host header: the address the client connected to.
		if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			host, _, _ = net.SplitHostPort(la.String())
		}
	}
	target := "https://" + net.JoinHostPort(host, strconv.Itoa(port)) + r.URL.RequestURI()
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, target, http.StatusFound)
}

// validRedirectHost accepts an IP address or a DNS name (flow.ParseHostPort's
// rules), so a Host header cannot inject anything into Location.
func validRedirectHost(h string) bool {
	_, _, err := flow.ParseHostPort(net.JoinHostPort(h, "443"))
	return err == nil
}

// isLoopbackRemote reports whether a RemoteAddr ("ip:port") is a loopback
// address (an IPv4-mapped one included).
func isLoopbackRemote(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// peekedConn is a connection whose first bytes were read already and are
// returned again by Read.
type peekedConn struct {
	net.Conn
	first []byte // read by the first Reads; only the server goroutine reads
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(p, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// chanListener is a net.Listener fed by sniffLoop. Close makes Accept
// return net.ErrClosed; connections delivered after Close are closed.
type chanListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.closed:
		c.Close()
	}
}

// Accept waits for the next connection.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close is idempotent.
func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr is the TCP listener's address.
func (l *chanListener) Addr() net.Addr { return l.addr }
