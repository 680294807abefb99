package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/webtransport-go"
	"golang.org/x/sync/errgroup"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/addrpool"
	"github.com/roamvpn/roam/tunnel/fec"
	"github.com/roamvpn/roam/tunnel/flow"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// TLS holds the server certificate. Required. The server sets
	// NextProtos to "h3" on its own copy.
	TLS *tls.Config
	// Auth verifies the clients' bearer tokens and says what each may
	// reach (auth.Identity: routes, ports, expiry). Usually an
	// *auth.Authenticator. If nil, an auth.Authenticator of Tokens is
	// used. One of Auth and Tokens is required. Reload replaces it.
	Auth Authenticator
	// Tokens are the accepted plain bearer tokens, used when Auth is nil.
	Tokens *auth.Tokens
	// Pool4 and Pool6 lease the clients' tunnel addresses. Both required:
	// every session is dual-stack.
	Pool4, Pool6 *addrpool.Pool
	// Routes are advertised to clients and enforced on their packets'
	// and flows' destinations, intersected with each identity's own
	// routes. Nil means DefaultRoutes (everything). Reload replaces them.
	Routes []netip.Prefix
	// DNS are the resolvers pushed to clients in a DNS_ASSIGN capsule
	// (draft-ietf-masque-connect-ip-dns, see docs/protocol.md), after the
	// first ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT. They should lie inside
	// Routes (a warning is logged otherwise). Nil means none pushed.
	DNS []netip.Addr
	// Device is where client packets go (a kernel TUN whose traffic the
	// host NATs, or the userspace NAT stack) and where replies come from.
	// Required. The server owns it from NewServer on and closes it when
	// Serve returns.
	Device datagram.Device
	// SessionQueue is the most packets queued per session towards its
	// client; when full, packets for that session are dropped (counted).
	// Zero means 1024. The queue starts at 8 entries and grows to this
	// bound only when a burst needs it.
	SessionQueue int
	// Secret is the server's persistent secret (at least 16 bytes; see
	// auth.LoadOrCreateSecret). The QUIC stateless-reset key and the TLS
	// session-ticket keys are derived from it, so after a restart the
	// server resets its old connections at once (clients reconnect without
	// waiting for a timeout) and accepts their resumption tickets (0-RTT).
	// Nil means a random secret per process.
	Secret []byte
	// LeaseGrace is how long a session's addresses stay reserved for the
	// same client after its connection is lost (rather than closed by the
	// client), so that a reconnecting client gets them back and its
	// connections through the userspace NAT survive. Zero means
	// DefaultLeaseGrace; negative means no grace period.
	LeaseGrace time.Duration
	// MaxFlows bounds the flows (TCP connections carried as streams) one
	// client connection may have open at once; further ones wait, and
	// beyond a backlog are refused. Zero means DefaultMaxFlows.
	MaxFlows int
	// GatewayLoopback maps flows to the pools' gateway addresses to the
	// host's loopback (127.0.0.1, ::1), as the userspace NAT does for
	// packets. Otherwise they are dialed as they are (the kernel TUN holds
	// those addresses).
	GatewayLoopback bool
	// GatewayDNS, with GatewayLoopback, is where flows to a gateway's port
	// 53 (DNS over TCP in flow mode) are dialed instead of loopback port
	// 53: the resolver the userspace NAT forwards DNS to (usernat
	// Config.DNS). The zero AddrPort: loopback port 53.
	GatewayDNS netip.AddrPort
	// Logger receives session-level events. Nil means silent.
	Logger *slog.Logger

	// DisableWeb turns the browser client off entirely: plain HTTP/3
	// without WebTransport in its SETTINGS (a session request gets 404),
	// no page, no TCP listener. By default (false) the
	// server accepts WebTransport sessions at webproto.Path, serves Web
	// (if set) and webproto.ConfigPath over HTTP/3, and listens on TCP on
	// the UDP socket's address (same port number) for the page over HTTPS
	// and, to loopback clients only, plain HTTP (see webpage.go). If that
	// TCP port cannot be bound, Serve logs a warning and serves UDP only.
	DisableWeb bool
	// DisableFEC turns forward error correction (tunnel/fec) off: the
	// server then ignores clients' FECHeader and its socket carries plain
	// QUIC only. By default, a client that asks for FEC gets it; every
	// other peer (browsers, other CONNECT-IP clients, old Roam clients)
	// sees plain QUIC either way.
	DisableFEC bool
	// Web holds the browser client's files at its root (index.html,
	// roam.js, worker.js, app.js, wasm_exec.js, roam.wasm). Nil means no
	// browser client: GET / answers 404 "this server has no browser
	// client" (WebTransport sessions are still accepted, for pages served
	// elsewhere that WebOrigins allows). The server only reads it.
	Web fs.FS
	// WebOrigins are further origins ("scheme://host[:port]", see
	// ParseWebOrigin) whose pages may open WebTransport sessions. The
	// server's own origin is always allowed: the Origin's host:port equals
	// the request's authority, with scheme https, or http for localhost
	// and loopback addresses. Empty: the server's own origin only. A
	// request without an Origin header (not a browser) is allowed; its
	// token is checked as for any client.
	WebOrigins []string
	// WebSelfSigned says TLS's certificate is the long-lived self-signed
	// one that native clients pin (auth.LoadOrCreateCert). Browsers cannot
	// pin it (WebTransport serverCertificateHashes requires an ECDSA
	// certificate valid at most 14 days), so the server then presents
	// browsers a short-lived certificate it rotates, and publishes its
	// hashes in webproto.ConfigPath (see webcert.go for how a browser is
	// told apart). False: everyone gets TLS's certificate (a publicly
	// trusted one from --cert/--key) and no hashes are published.
	WebSelfSigned bool
	// Version is the server's version string, sent to browsers in WELCOME
	// and the page configuration. Empty means "roam".
	Version string
}

// ServerStats are the server's counters (all atomic).
type ServerStats struct {
	datagram.Stats
	// SessionsTotal counts CONNECT-IP sessions ever established.
	SessionsTotal atomic.Uint64
	// SessionsActive is the number of live sessions.
	SessionsActive atomic.Int64
	// AuthFailures counts requests (and browser HELLOs) rejected for their
	// credentials (401).
	AuthFailures atomic.Uint64
	// AuthRateLimited counts requests answered 429 without verifying,
	// their source having failed too often (see authLimitFailures).
	AuthRateLimited atomic.Uint64
	// SessionsRevoked counts live sessions (CONNECT-IP and browser) ended
	// by a reload because their token was no longer accepted, and
	// SessionsExpired those ended when their token expired.
	SessionsRevoked, SessionsExpired atomic.Uint64
	// DropNoSession counts packets from the device for an address with no
	// session, and datagrams for a stream with no session.
	DropNoSession atomic.Uint64
	// CapsuleErrors counts sessions ended by a malformed capsule.
	CapsuleErrors atomic.Uint64
	// DeviceReadErrors counts failed device reads (other than closure).
	DeviceReadErrors atomic.Uint64
	// SendErrors counts datagrams that failed to send for a reason other
	// than size (the connection was closing).
	SendErrors atomic.Uint64
	// FlowsTotal counts flows opened; FlowsActive is the number open now;
	// FlowsRefused counts flow requests answered with an error.
	FlowsTotal   atomic.Uint64
	FlowsActive  atomic.Int64
	FlowsRefused atomic.Uint64
	// FlowBytesUp and FlowBytesDown count flow payload bytes from and to
	// the clients.
	FlowBytesUp, FlowBytesDown atomic.Uint64
	// WebSessions counts WebTransport sessions whose HELLO was accepted;
	// WebRejected counts WebTransport requests refused before a session
	// (origin, path, handshake) or ended by a bad HELLO.
	WebSessions, WebRejected atomic.Uint64
}

// Server is a Roam CONNECT-IP server: one HTTP/3 endpoint on one UDP
// socket. Create it with NewServer and run it with Serve.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	keys   *serverKeys
	dialer flow.Dialer
	auth   atomic.Pointer[authState] // the Authenticator and routes; swapped by Reload
	writer *datagram.Writer
	fec    atomic.Pointer[fec.Conn] // the socket's FEC wrapper; nil if off
	h3     *http3.Server
	wt     *webtransport.Server
	stats  ServerStats

	origins []webOrigin  // parsed WebOrigins
	certs   *certRotator // short-lived browser certificates; nil unless WebSelfSigned
	rejects rateLimitedLog
	etags   sync.Map                 // page file ETags: etagKey -> string
	tcpAddr atomic.Pointer[net.Addr] // the page's TCP listener, if any
	// helloTimeout is webHelloTimeout; tests shorten it before Serve.
	helloTimeout time.Duration
	gzips        sync.Map // page file name -> *gzipEntry (its compressed form)

	webMu       sync.Mutex
	webSessions map[*webSession]struct{} // live browser sessions; guarded by webMu
	webClosing  bool                     // Serve is stopping; guarded by webMu

	limiter  *authLimiter
	reloadMu sync.Mutex // serializes Reload
	started  atomic.Pointer[time.Time]

	mu       sync.Mutex                              // serializes table updates
	table    atomic.Pointer[map[netip.Addr]*session] // copy-on-write; guarded by mu for writes
	sessions map[*session]struct{}                   // live CONNECT-IP sessions; guarded by mu
	flows    map[*liveFlow]struct{}                  // live native flows; guarded by mu
	conns    sync.Map                                // *quic.Conn -> *connState
	wg       sync.WaitGroup                          // connection goroutines
	ready    chan struct{}                           // closed when Serve listens
	addr     atomic.Pointer[net.Addr]                // listening address
	ctx      atomic.Pointer[context.Context]         // Serve's context, for sessions
}

type ctxKey struct{}

// NewServer validates cfg and returns a server ready to Serve.
func NewServer(cfg ServerConfig) (*Server, error) {
	switch {
	case cfg.TLS == nil:
		return nil, errors.New("tunnel: ServerConfig.TLS is required")
	case isNilAuth(cfg.Auth) && cfg.Tokens == nil:
		return nil, errors.New("tunnel: ServerConfig.Auth or ServerConfig.Tokens is required")
	case cfg.Pool4 == nil || cfg.Pool6 == nil:
		return nil, errors.New("tunnel: ServerConfig.Pool4 and Pool6 are required")
	case cfg.Device == nil:
		return nil, errors.New("tunnel: ServerConfig.Device is required")
	}
	if cfg.SessionQueue <= 0 {
		cfg.SessionQueue = 1024
	}
	if isNilAuth(cfg.Auth) {
		cfg.Auth = auth.NewAuthenticator(auth.AuthenticatorConfig{Tokens: cfg.Tokens})
	}
	routes, err := checkRoutes(cfg.Routes)
	if err != nil {
		return nil, fmt.Errorf("tunnel: ServerConfig.Routes: %w", err)
	}
	cfg.Routes = routes
	if cfg.LeaseGrace == 0 {
		cfg.LeaseGrace = DefaultLeaseGrace
	}
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.Version == "" {
		cfg.Version = "roam"
	}
	origins := make([]webOrigin, 0, len(cfg.WebOrigins))
	for _, o := range cfg.WebOrigins {
		wo, err := parseOrigin(o)
		if err != nil {
			return nil, fmt.Errorf("tunnel: ServerConfig.WebOrigins: %w", err)
		}
		origins = append(origins, wo)
	}
	var certs *certRotator
	if cfg.WebSelfSigned && !cfg.DisableWeb {
		c, err := baseCertificate(cfg.TLS)
		if err != nil {
			return nil, fmt.Errorf("tunnel: ServerConfig.WebSelfSigned: %w", err)
		}
		if certs, err = newCertRotator(c.Leaf, time.Now); err != nil {
			return nil, err
		}
	}
	keys, err := newServerKeys(cfg.Secret)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:   cfg,
		log:   log.With("component", "server"),
		keys:  keys,
		ready: make(chan struct{}),

		origins: origins,
		certs:   certs,

		helloTimeout: webHelloTimeout,
	}
	s.auth.Store(&authState{auth: cfg.Auth, routes: routesFromPrefixes(cfg.Routes)})
	if err := s.checkDNS(); err != nil {
		return nil, err
	}
	s.limiter = newAuthLimiter(s.log)
	s.sessions = make(map[*session]struct{})
	s.flows = make(map[*liveFlow]struct{})
	s.dialer = flow.Dialer{Dial: s.flowDial} // Allow is set per flow (its identity's policy)
	s.writer = datagram.NewWriter(cfg.Device, &s.stats.Stats, 4096)
	empty := map[netip.Addr]*session{}
	s.table.Store(&empty)
	s.h3 = &http3.Server{
		Handler: s,
		// http3 sorts received datagrams by stream; Roam sends its own
		// straight on the QUIC connection (see the package doc).
		EnableDatagrams: true,
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			if cs, ok := s.conns.Load(c); ok {
				return context.WithValue(ctx, ctxKey{}, cs)
			}
			return ctx
		},
		Logger: s.log,
	}
	if cfg.DisableWeb {
		return s, nil // plain HTTP/3: no WebTransport SETTINGS advertised
	}
	// Every HTTP/3 connection goes through the WebTransport server, which
	// splits WebTransport streams out and hands everything else (CONNECT-IP,
	// flows, GET) to s.h3. It adds its SETTINGS and wraps ConnContext.
	s.wt = &webtransport.Server{
		H3: s.h3,
		// The origin is checked (and a refusal logged) in
		// handleWebTransport before Upgrade; this is the same check again.
		CheckOrigin: func(r *http.Request) bool { return s.checkOrigin(r) == nil },
	}
	return s, nil
}

// Stats returns the server's live counters.
func (s *Server) Stats() *ServerStats { return &s.stats }

// FECStats returns the forward-error-correction counters of the server's
// socket, and false if FEC is off (DisableFEC, or Serve has not started
// on a UDP socket).
func (s *Server) FECStats() (fec.Stats, bool) {
	if fc := s.fec.Load(); fc != nil {
		return fc.Stats(), true
	}
	return fec.Stats{}, false
}

// Ready is closed once Serve is listening; Addr is valid from then on.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the address Serve listens on, or nil before Ready.
func (s *Server) Addr() net.Addr {
	if a := s.addr.Load(); a != nil {
		return *a
	}
	return nil
}

// Serve runs the server on pc until ctx is cancelled or the device fails.
// Unless DisableWeb, it also listens on TCP at pc's address for the
// browser page (see WebAddr; a port it cannot bind is logged, not fatal).
// It closes every session, that TCP listener and the device before
// returning; pc stays open (the caller owns it). Cancellation returns nil.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	tlsConf := s.cfg.TLS.Clone()
	tlsConf.NextProtos = []string{http3.NextProtoH3}
	tlsConf.MinVersion = tls.VersionTLS13
	s.keys.configureTickets(tlsConf)
	if err := s.configureQUICCert(tlsConf); err != nil {
		return err
	}
	conn := pc
	if u, ok := pc.(fec.PacketConn); ok && !s.cfg.DisableFEC && fec.Supported {
		// Not closed here: pc belongs to the caller.
		fc := fec.NewConn(u, fec.Config{Accept: true})
		s.fec.Store(fc)
		conn = fc
	}
	tr := &quic.Transport{Conn: conn, StatelessResetKey: &s.keys.reset}
	defer tr.Close()
	qconf := quicConfig(0)
	// 0-RTT lets a reconnecting client send its request in its first
	// flight. 0-RTT data can be replayed, so handleConnectIP changes no
	// state (addresses, sessions) before the handshake completes.
	qconf.Allow0RTT = true
	// webtransport-go requires RESET_STREAM_AT on every connection it
	// serves (native clients need not support it).
	qconf.EnableStreamResetPartialDelivery = true
	ln, err := tr.ListenEarly(tlsConf, qconf)
	if err != nil {
		return fmt.Errorf("tunnel: listen: %w", err)
	}
	addr := ln.Addr()
	s.addr.Store(&addr)
	now := time.Now()
	s.started.Store(&now)
	defer s.limiter.stop()
	var tln net.Listener
	if !s.cfg.DisableWeb {
		tln = s.listenTCP(addr) // nil if the port is taken: QUIC goes on
	}
	close(s.ready)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s.ctx.Store(&ctx)
	grp, gctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return s.writer.Run(gctx) })
	grp.Go(func() error { return s.readDevice(gctx) })
	if tln != nil {
		grp.Go(func() error { return s.serveTCP(gctx, tln) })
	}
	grp.Go(func() error {
		<-gctx.Done()
		ln.Close()
		// Browsers are told why (SESSION_ERROR shutdown) while their
		// connections are still open; bounded by webShutdownWait.
		s.closeWebSessions(webShutdownWait)
		s.conns.Range(func(k, _ any) bool {
			k.(*quic.Conn).CloseWithError(0, "server shutting down")
			return true
		})
		s.cfg.Device.Close()
		return nil
	})
	grp.Go(func() error {
		for {
			conn, err := ln.Accept(gctx)
			if err != nil {
				if gctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("tunnel: accept: %w", err)
			}
			s.wg.Add(1)
			go s.serveConn(gctx, conn)
		}
	})
	err = grp.Wait()
	s.wg.Wait()
	if s.wt != nil {
		s.wt.Close() // closes s.h3 too
	} else {
		s.h3.Close()
	}
	attrs := serverCounterAttrs(&s.stats)
	if fc := s.fec.Load(); fc != nil {
		attrs = append(attrs, fecAttrs(fc.Stats())...)
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "server counters", attrs...)
	if errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		err = nil
	}
	return err
}

// connState is the per-QUIC-connection state the handler needs.
type connState struct {
	conn      *quic.Conn
	flowsOnce sync.Once
	flows     *flow.Limiter // the connection's flow slots, made on first use
}

func (cs *connState) flowLimiter(max int) *flow.Limiter {
	cs.flowsOnce.Do(func() { cs.flows = flow.NewLimiter(max, maxFlowWaiters) })
	return cs.flows
}

func (s *Server) serveConn(ctx context.Context, conn *quic.Conn) {
	defer s.wg.Done()
	cs := &connState{conn: conn}
	s.conns.Store(conn, cs)
	defer s.conns.Delete(conn)
	serve := s.h3.ServeQUICConn
	if s.wt != nil {
		serve = s.wt.ServeQUICConn
	}
	if err := serve(conn); err != nil && s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("connection ended", "remote", conn.RemoteAddr(), "err", err)
	}
	conn.CloseWithError(0, "")
}

// readDevice is the device reader: it reads batches of packets from the NAT
// side and hands each to the session that owns its destination address.
// Buffers move to the session without copying.
func (s *Server) readDevice(ctx context.Context) error {
	s.log.Debug("device reader started")
	defer s.log.Debug("device reader stopped")
	dev := s.cfg.Device
	n := dev.BatchSize()
	arrs := make([]*[datagram.BufSize]byte, n)
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for i := range arrs {
		arrs[i] = datagram.GetBuf()
		bufs[i] = arrs[i][:]
	}
	defer func() {
		for _, a := range arrs {
			datagram.PutBuf(a)
		}
	}()
	var p datagram.Packet
	consecutiveErrs := 0
	for {
		cnt, err := dev.Read(bufs, sizes, datagram.Headroom)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.stats.DeviceReadErrors.Add(1)
			consecutiveErrs++
			if consecutiveErrs > 1000 {
				return fmt.Errorf("tunnel: reading the device: %w", err)
			}
			if cnt == 0 {
				continue
			}
		} else {
			consecutiveErrs = 0
		}
		table := *s.table.Load()
		for i := 0; i < cnt; i++ {
			pkt := bufs[i][datagram.Headroom : datagram.Headroom+sizes[i]]
			if p.Decode(pkt) != nil {
				s.stats.DropMalformed.Add(1)
				continue
			}
			sess := table[p.Dst]
			if sess == nil {
				s.stats.DropNoSession.Add(1)
				continue
			}
			if sess.enqueue(arrs[i], p.Len) {
				arrs[i] = datagram.GetBuf()
				bufs[i] = arrs[i][:]
			}
		}
	}
}

// ServeHTTP routes the HTTP/3 requests of the endpoint.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodConnect && r.Proto == "connect-ip":
		s.handleConnectIP(w, r)
	case r.Method == http.MethodConnect && (r.Proto == "webtransport-h3" || r.Proto == "webtransport"):
		// draft-ietf-webtrans-http3-15 and the legacy :protocol value.
		s.handleWebTransport(w, r)
	case r.Method == http.MethodConnect && !strings.HasPrefix(r.Proto, "HTTP/"):
		// Extended CONNECT for a protocol Roam does not speak.
		http.Error(w, fmt.Sprintf("unsupported CONNECT protocol %q", r.Proto), http.StatusNotImplemented)
	case r.Method == http.MethodConnect:
		s.handleFlow(w, r)
	default:
		// GET and HEAD: the page, its configuration and /healthz.
		s.servePage(w, r)
	}
}

// requestScope parses the request's {target} and {ipproto} (RFC 9484 §3)
// into the routes the client asks for, and checks that some of the
// server's routes are in them. target is "*", an IP address or an IP
// prefix (percent-encoded slash); ipproto is "*" or 0..255.
func (s *Server) requestScope(r *http.Request, st *authState) (routeSet, error) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), WellKnownPath)
	if !ok {
		return nil, fmt.Errorf("path must be %s{target}/{ipproto}/", WellKnownPath)
	}
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	if len(parts) != 2 {
		return nil, fmt.Errorf("path must be %s{target}/{ipproto}/", WellKnownPath)
	}
	target, err := url.PathUnescape(parts[0])
	if err != nil {
		return nil, fmt.Errorf("target %q: %v", parts[0], err)
	}
	ipproto, err := url.PathUnescape(parts[1])
	if err != nil {
		return nil, fmt.Errorf("ipproto %q: %v", parts[1], err)
	}
	var proto uint8
	if ipproto != "*" {
		v, err := strconv.ParseUint(ipproto, 10, 8)
		if err != nil {
			return nil, fmt.Errorf("ipproto %q: expected * or a number 0-255", ipproto)
		}
		proto = uint8(v)
	}
	scope := routeSet{{prefix: netip.MustParsePrefix("0.0.0.0/0"), proto: proto}, {prefix: netip.MustParsePrefix("::/0"), proto: proto}}
	if target != "*" {
		pfx, err := netip.ParsePrefix(target)
		if err == nil && pfx != pfx.Masked() {
			// RFC 9484 §4.6: host bits must be zero, else the request is malformed.
			return nil, fmt.Errorf("target %q: the address has bits set beyond the prefix length", target)
		}
		if err != nil {
			a, aerr := netip.ParseAddr(target)
			if aerr != nil {
				return nil, fmt.Errorf("target %q: expected * or an IP address or prefix (host names are not supported)", target)
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		scope = routeSet{{prefix: pfx.Masked(), proto: proto}}
	}
	if len(intersect(st.routes, scope)) == 0 {
		return nil, fmt.Errorf("target %q ipproto %q is outside the server's routes", target, ipproto)
	}
	return scope, nil
}

func (s *Server) handleConnectIP(w http.ResponseWriter, r *http.Request) {
	remote := r.RemoteAddr
	a, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	owner := a.id.Owner
	scope, err := s.requestScope(r, a.st)
	if err != nil {
		s.log.Info("rejected tunnel request", "remote", remote, "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if pol := newPolicy(a.id, a.st.routes, scope); len(pol.routes) == 0 {
		s.log.Info("rejected tunnel request: the token allows none of the requested routes", "remote", remote, "client", owner, "user", a.id.User)
		http.Error(w, "the token allows none of the requested routes", http.StatusForbidden)
		return
	}
	cs := s.afterHandshake(w, r)
	if cs == nil {
		return
	}
	if cs.conn.Context().Err() != nil {
		return
	}
	if !cs.conn.ConnectionState().SupportsDatagrams.Remote {
		http.Error(w, "CONNECT-IP needs QUIC datagrams (RFC 9221)", http.StatusBadRequest)
		return
	}
	a4, err := s.cfg.Pool4.Allocate(owner)
	if err != nil {
		s.log.Warn("IPv4 pool exhausted", "remote", remote, "err", err)
		http.Error(w, "address pool exhausted", http.StatusServiceUnavailable)
		return
	}
	a6, err := s.cfg.Pool6.Allocate(owner)
	if err != nil {
		s.cfg.Pool4.Release(a4, owner)
		s.log.Warn("IPv6 pool exhausted", "remote", remote, "err", err)
		http.Error(w, "address pool exhausted", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Capsule-Protocol", "?1")
	if fc := s.fec.Load(); fc != nil && r.Header.Get(FECHeader) != "" {
		// The client frames its packets once it reads this; the
		// server's socket follows the policy the client's own frames
		// ask for, and frames toward this connection's address (where
		// it migrates to, too) only: bound before the answer leaves.
		if p, err := fec.ParsePolicy(r.Header.Get(FECHeader)); err == nil && !p.Off() {
			fc.Bind(cs.conn)
			w.Header().Set(FECHeader, p.String())
		}
	}
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	str := w.(http3.HTTPStreamer).HTTPStream()

	sess := newSession(s, cs, str, a, scope)
	sess.addrs.Store(&addrSet{v4: a4, v6: a6})
	sess.run(s.serverCtx(), remote)
}

// authResult is a verified request's credentials.
type authResult struct {
	id    auth.Identity
	token string     // as presented: kept in memory to re-authenticate on Reload
	st    *authState // what it was verified under
}

// authenticate checks the request's bearer token. On failure it answers
// the request itself: 429 without verifying when the source has failed
// too often (see authLimiter), else 401 with no body, the same for a
// missing, unknown, badly signed, expired or revoked token, so a client
// never learns which. Failures are counted, and logged once a window.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (authResult, bool) {
	if s.limiter.blocked(r.RemoteAddr) {
		s.stats.AuthRateLimited.Add(1)
		w.Header().Set("Retry-After", strconv.Itoa(int(authLimitWindow/time.Second)))
		w.WriteHeader(http.StatusTooManyRequests)
		return authResult{}, false
	}
	st := s.auth.Load()
	token, ok := auth.ParseBearer(r.Header.Get("Authorization"))
	var id auth.Identity
	err := errors.New("no bearer token")
	if ok {
		id, err = verify(st, token, time.Now())
	}
	if err != nil {
		s.authFailed(r.RemoteAddr, err, "method", r.Method, "protocol", r.Proto)
		w.WriteHeader(http.StatusUnauthorized)
		return authResult{}, false
	}
	return authResult{id: id, token: token, st: st}, true
}

// verify authenticates token under st at now; an identity that has
// expired already is refused too (whatever the Authenticator says).
func verify(st *authState, token string, now time.Time) (auth.Identity, error) {
	id, err := st.auth.Authenticate(token, now)
	if err == nil && !id.Expires.IsZero() && !now.Before(id.Expires) {
		err = fmt.Errorf("%w: the token expired at %v", auth.ErrUnauthorized, id.Expires.UTC().Format(time.RFC3339))
	}
	return id, err
}

// authFailed counts a failed authentication from remote; the reason is
// logged at debug level only (the summary line of authLimiter is the
// record).
func (s *Server) authFailed(remote string, err error, attrs ...any) {
	s.stats.AuthFailures.Add(1)
	s.limiter.failed(remote)
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("rejected request: bad credentials", append([]any{"remote", remote, "err", err}, attrs...)...)
	}
}

// isNilAuth reports whether a is nil or a nil *auth.Authenticator.
func isNilAuth(a Authenticator) bool {
	if a == nil {
		return true
	}
	p, ok := a.(*auth.Authenticator)
	return ok && p == nil
}

// checkRoutes validates configured routes (nil: DefaultRoutes).
func checkRoutes(ps []netip.Prefix) ([]netip.Prefix, error) {
	if ps == nil {
		return DefaultRoutes, nil
	}
	for i, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("route %d is not a valid prefix; expected CIDR like 10.0.0.0/8 or ::/0", i)
		}
	}
	return ps, nil
}

// setAddrsLocked points the table at sess for its current addresses and
// removes old ones it no longer holds. Caller holds s.mu.
func (s *Server) updateTableLocked(fn func(m map[netip.Addr]*session)) {
	m := maps.Clone(*s.table.Load())
	fn(m)
	s.table.Store(&m)
}

// closeFlows ends the NAT device's connections of addresses that are no
// longer (or no longer surely) leased to the same client, so they cannot
// reach the address's next owner. Only the userspace NAT keeps such state;
// the kernel's conntrack entries time out on their own.
func (s *Server) closeFlows(addrs ...netip.Addr) {
	c, ok := s.cfg.Device.(interface{ CloseClientFlows(netip.Addr) int })
	if !ok {
		return
	}
	for _, a := range addrs {
		if s.sessionFor(a) == nil {
			c.CloseClientFlows(a)
		}
	}
}

// sessionFor returns the session currently holding addr.
func (s *Server) sessionFor(addr netip.Addr) *session {
	return (*s.table.Load())[addr]
}

// afterHandshake returns the state of r's QUIC connection once its
// handshake has completed. A request may have come as 0-RTT data, which
// an attacker can replay: the handlers lease nothing, dial nothing and
// take nothing over before the handshake completes (a replay never
// completes it). It returns nil when r ended first, or after answering
// 500 if r has no connection state.
func (s *Server) afterHandshake(w http.ResponseWriter, r *http.Request) *connState {
	cs, _ := r.Context().Value(ctxKey{}).(*connState)
	if cs == nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return nil
	}
	select {
	case <-cs.conn.HandshakeComplete():
		return cs
	case <-r.Context().Done():
		return nil
	}
}
