package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/roamvpn/roam/tunnel/flow"
)

// Flow limits per QUIC connection (one client).
const (
	// DefaultMaxFlows is how many flows one client connection may have
	// open at once.
	DefaultMaxFlows = 1024
	// maxFlowWaiters is how many further flow requests may wait for a slot
	// before the server refuses them (503, connection_limit_reached);
	// quic-go's stream limit (MaxIncomingStreams) slows the client before.
	maxFlowWaiters = 512
)

// errCodeFlowReset is the HTTP/3 error code a flow stream is reset with
// when either end of the flow failed: H3_REQUEST_CANCELLED, as for an
// aborted request.
const errCodeFlowReset = errCodeRequestCancelled

// h3Stream is what quic-go's HTTP/3 request streams (server and client
// side) offer a flow.
type h3Stream interface {
	io.Reader
	io.Writer
	Close() error
	CancelRead(quic.StreamErrorCode)
	CancelWrite(quic.StreamErrorCode)
}

// flowStream adapts an HTTP/3 CONNECT stream to flow.Stream: Close is the
// FIN, the two cancels are the reset, and a reset from the peer is reported
// as flow.ErrReset.
type flowStream struct {
	s    h3Stream
	once sync.Once
}

func (f *flowStream) Read(p []byte) (int, error) {
	n, err := f.s.Read(p)
	return n, resetErr(err)
}

func (f *flowStream) Write(p []byte) (int, error) {
	n, err := f.s.Write(p)
	return n, resetErr(err)
}

func (f *flowStream) CloseWrite() error { return f.s.Close() }

func (f *flowStream) Abort() {
	f.once.Do(func() {
		f.s.CancelWrite(errCodeFlowReset)
		f.s.CancelRead(errCodeFlowReset)
	})
}

// resetErr marks the peer's RESET_STREAM / STOP_SENDING as flow.ErrReset.
func resetErr(err error) error {
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return fmt.Errorf("%w: %w", flow.ErrReset, err)
	}
	return err
}

// flowDialer returns the server's dialer with pol's destination policy:
// what packets of the same identity may reach (the server's routes ∩ the
// identity's routes and ports) minus loopback, link-local, multicast and
// the like (flow.DenySpecial); see policy.allowFlow.
func (s *Server) flowDialer(pol *policy) *flow.Dialer {
	d := s.dialer
	d.Allow = pol.allowFlow
	return &d
}

// flowDial dials a flow's destination. The pools' gateway addresses are
// the server itself; with GatewayLoopback they map to the host's loopback,
// as the userspace NAT does for packets, and their port 53 to GatewayDNS.
func (s *Server) flowDial(ctx context.Context, network, address string) (net.Conn, error) {
	if s.cfg.GatewayLoopback {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			gw := ap.Addr() == s.cfg.Pool4.Gateway() || ap.Addr() == s.cfg.Pool6.Gateway()
			switch {
			case gw && ap.Port() == 53 && s.cfg.GatewayDNS.IsValid():
				address = s.cfg.GatewayDNS.String() // DNS over TCP, as the userspace NAT forwards it
				network = "tcp"
			case ap.Addr() == s.cfg.Pool4.Gateway():
				address = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port()).String()
			case ap.Addr() == s.cfg.Pool6.Gateway():
				address = netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port()).String()
			}
		}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// flowReply is how a flow request gets its answer on its transport: an
// HTTP/3 CONNECT response (h3FlowReply) or a FLOW_OK / FLOW_ERROR message
// on a WebTransport stream (wtFlowReply). serveFlow calls exactly one of
// refuse and accept, once.
type flowReply interface {
	// refuse answers that the flow could not be opened and ends the
	// request. bad marks a malformed request (fe.Err wraps
	// flow.ErrBadAuthority).
	refuse(fe *flow.Error, bad bool)
	// accept answers success and returns the stream that now carries the
	// flow's bytes; the caller owns it. An error means the answer could not
	// be sent (the stream is gone).
	accept() (flow.Stream, error)
}

// serveFlow is one flow, whatever transport it came on: it checks the
// destination authority ("host:port", a name resolved here or an IP
// literal), takes a slot of lim (waiting while ctx lasts), dials with the
// identity's policy pol (see flowDialer) and the server's dialer
// (flowDial), answers through rep (a policy refusal is
// destination_ip_prohibited), and splices the stream and the TCP
// connection until both are done or spliceCtx ends. Every outcome is
// counted in the server's stats.
func (s *Server) serveFlow(ctx, spliceCtx context.Context, lim *flow.Limiter, pol *policy, transport, authority string, rep flowReply) {
	owner := pol.id.Owner
	if _, _, err := flow.ParseHostPort(authority); err != nil {
		s.refuseFlow(rep, owner, transport, authority, &flow.Error{Kind: flow.Other, Dst: authority, Err: err}, true)
		return
	}
	if err := lim.Acquire(ctx); err != nil {
		s.refuseFlow(rep, owner, transport, authority, err, false)
		return
	}
	defer lim.Release()
	conn, dst, err := s.flowDialer(pol).DialHostPort(ctx, authority)
	if err != nil {
		s.refuseFlow(rep, owner, transport, authority, err, false)
		return
	}
	str, err := rep.accept()
	if err != nil {
		conn.Close()
		s.stats.FlowsRefused.Add(1)
		s.log.Debug("flow answer failed", "client", owner, "transport", transport, "dst", authority, "err", err)
		return
	}
	s.stats.FlowsTotal.Add(1)
	s.stats.FlowsActive.Add(1)
	defer s.stats.FlowsActive.Add(-1)
	down, up, err := flow.Splice(spliceCtx, str, conn, flow.WithCounters(&s.stats.FlowBytesDown, &s.stats.FlowBytesUp))
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("flow ended", "client", owner, "transport", transport, "dst", authority, "addr", dst, "up", up, "down", down, "err", err)
	}
}

// refuseFlow answers a flow that could not be opened.
func (s *Server) refuseFlow(rep flowReply, owner, transport, authority string, err error, bad bool) {
	var fe *flow.Error
	if !errors.As(err, &fe) {
		fe = &flow.Error{Kind: flow.Classify(err), Dst: authority, Err: err}
	}
	s.stats.FlowsRefused.Add(1)
	s.log.Debug("flow refused", "client", owner, "transport", transport, "dst", authority, "err", fe)
	rep.refuse(fe, bad)
}

// handleFlow serves one native flow: an HTTP/3 CONNECT (RFC 9114 §4.4)
// whose authority is the destination host:port. It checks the token, waits
// for the handshake (a flow dials out, never for 0-RTT data that may be a
// replay) and hands the flow to serveFlow with the connection's flow
// limiter; failures are answered with the status and Proxy-Status (RFC
// 9209) the client maps to a local outcome (RST, ICMP unreachable).
//
// Each flow is authenticated on its own (its request carries the token)
// and lives while its token does: a Reload that no longer accepts the
// token, or the token's expiry, ends it.
func (s *Server) handleFlow(w http.ResponseWriter, r *http.Request) {
	a, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	cs := s.afterHandshake(w, r)
	if cs == nil {
		return
	}
	ctx, cancel := context.WithCancelCause(s.serverCtx())
	defer cancel(nil)
	lf := &liveFlow{token: a.token, authSt: a.st, cancel: cancel}
	lf.expiry = newExpiryTimer(func() { cancel(errTokenExpired) })
	defer lf.expiry.stop()
	if !s.addFlow(lf, &a) {
		// A reload came in between and refuses the token now.
		s.refuseFlow(h3FlowReply{w}, a.id.Owner, "h3", r.Host, &flow.Error{Kind: flow.Prohibited, Dst: r.Host, Err: errors.New("token no longer accepted")}, false)
		return
	}
	defer s.removeFlow(lf)
	pol := newPolicy(a.id, a.st.routes, nil)
	s.serveFlow(r.Context(), ctx, cs.flowLimiter(s.cfg.MaxFlows), pol, "h3", r.Host, h3FlowReply{w})
}

// liveFlow is a native flow as Reload sees it: its token, and how to end
// it.
type liveFlow struct {
	token  string
	authSt *authState // guarded by Server.mu
	cancel context.CancelCauseFunc
	expiry *expiryTimer
}

// addFlow registers a flow for Reload and arms its expiry. If a reload
// swapped the Authenticator after the flow's request was verified, the
// token is verified again here and a is updated; false means it is no
// longer accepted.
func (s *Server) addFlow(lf *liveFlow, a *authResult) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.auth.Load(); cur != a.st {
		id, err := verify(cur, lf.token, time.Now())
		if err != nil {
			return false
		}
		a.id, a.st = id, cur
	}
	lf.authSt = a.st
	lf.expiry.set(a.id.Expires)
	s.flows[lf] = struct{}{}
	return true
}

func (s *Server) removeFlow(lf *liveFlow) {
	s.mu.Lock()
	delete(s.flows, lf)
	s.mu.Unlock()
}

// serverCtx is Serve's context (Background before Serve).
func (s *Server) serverCtx() context.Context {
	if p := s.ctx.Load(); p != nil {
		return *p
	}
	return context.Background()
}

// h3FlowReply answers a native flow: 200 and the request stream, or an
// error status with a Proxy-Status field.
type h3FlowReply struct{ w http.ResponseWriter }

func (h h3FlowReply) refuse(fe *flow.Error, bad bool) {
	if bad {
		http.Error(h.w, fmt.Sprintf("CONNECT authority: %v", fe.Err), http.StatusBadRequest)
		return
	}
	h.w.Header().Set("Proxy-Status", fe.ProxyStatusField(flow.ProxyStatusName))
	h.w.WriteHeader(fe.HTTPStatus())
}

func (h h3FlowReply) accept() (flow.Stream, error) {
	h.w.WriteHeader(http.StatusOK)
	h.w.(http.Flusher).Flush()
	return &flowStream{s: h.w.(http3.HTTPStreamer).HTTPStream()}, nil
}

// openFlow is the client's side of a flow: it opens a CONNECT request
// stream to dst on the current connection (waiting while the client
// reconnects, or moves to a new connection after the server's GOAWAY) and
// returns it once the server has dialed, or a *flow.Error that tells the
// caller which local outcome to give the application. On a connection
// whose server has sent GOAWAY it opens nothing: Kind Other (a TCP reset)
// wrapping errGoaway.
func (s *supervisor) openFlow(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
	if !s.state.Load().routes.allows(dst.Addr(), 6) {
		return nil, &flow.Error{Kind: flow.Prohibited, Dst: dst.String(), Err: errors.New("outside the server's routes")}
	}
	var l *link
	for {
		if l = s.cur.Load(); l != nil {
			break
		}
		select {
		case <-s.curChanged():
		case <-ctx.Done():
			return nil, &flow.Error{Kind: flow.Timeout, Dst: dst.String(), Err: errors.New("no connection to the server")}
		}
	}
	select {
	case <-l.goingAway():
		// RFC 9114 §5.2: no new requests after GOAWAY. The supervisor
		// is moving the tunnel to a new connection (and clears cur
		// meanwhile); a flow that finds this one fails at once: the
		// application gets a reset and can retry.
		return nil, &flow.Error{Kind: flow.Other, Dst: dst.String(), Err: errGoaway}
	default:
	}
	str, err := l.cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, &flow.Error{Kind: flow.Other, Dst: dst.String(), Err: fmt.Errorf("opening a stream: %w", err)}
	}
	req := &http.Request{
		Method: http.MethodConnect,
		Host:   dst.String(),
		URL:    &url.URL{Host: dst.String()},
		Header: http.Header{"Authorization": {"Bearer " + s.c.cfg.Token}},
	}
	if err := str.SendRequestHeader(req); err != nil {
		str.CancelWrite(errCodeRequestCancelled)
		return nil, &flow.Error{Kind: flow.Other, Dst: dst.String(), Err: fmt.Errorf("sending CONNECT: %w", err)}
	}
	stop := context.AfterFunc(ctx, func() { str.CancelRead(errCodeRequestCancelled) })
	resp, err := str.ReadResponse()
	stop()
	if err != nil {
		str.CancelWrite(errCodeRequestCancelled)
		kind := flow.Other
		if ctx.Err() != nil {
			kind = flow.Timeout
		}
		return nil, &flow.Error{Kind: kind, Dst: dst.String(), Err: fmt.Errorf("waiting for the server: %w", err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		str.CancelWrite(errCodeRequestCancelled)
		str.CancelRead(errCodeRequestCancelled)
		kind, ok := flow.ParseProxyStatus(strings.Join(resp.Header.Values("Proxy-Status"), ", "))
		if !ok {
			kind = flow.KindForStatus(resp.StatusCode)
		}
		return nil, &flow.Error{Kind: kind, Dst: dst.String(), Err: fmt.Errorf("server answered %s", resp.Status)}
	}
	return newCountedFlow(&flowStream{s: str}, &s.c.flowsOpen), nil
}

// countedFlow counts a client flow in open from its start until it is
// done: aborted, or its read side has ended (EOF or error) and its write
// side too (CloseWrite, or a failed Write).
type countedFlow struct {
	flow.Stream
	open *atomic.Int64

	mu                  sync.Mutex
	readDone, writeDone bool // guarded by mu
	done                bool // guarded by mu: open was decremented
}

func newCountedFlow(s flow.Stream, open *atomic.Int64) *countedFlow {
	open.Add(1)
	return &countedFlow{Stream: s, open: open}
}

// mark records that one side ended (or both) and uncounts the flow once
// both have.
func (f *countedFlow) mark(read, write bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readDone = f.readDone || read
	f.writeDone = f.writeDone || write
	if f.readDone && f.writeDone && !f.done {
		f.done = true
		f.open.Add(-1)
	}
}

func (f *countedFlow) Read(p []byte) (int, error) {
	n, err := f.Stream.Read(p)
	if err != nil {
		f.mark(true, false)
	}
	return n, err
}

func (f *countedFlow) Write(p []byte) (int, error) {
	n, err := f.Stream.Write(p)
	if err != nil {
		f.mark(false, true)
	}
	return n, err
}

func (f *countedFlow) CloseWrite() error {
	err := f.Stream.CloseWrite()
	f.mark(false, true)
	return err
}

func (f *countedFlow) Abort() {
	f.Stream.Abort()
	f.mark(true, true)
}
