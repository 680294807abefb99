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

// flowAllow is the server's destination policy for flows: what packets may
// reach (the advertised routes) minus loopback, link-local, multicast and
// the like (flow.DenySpecial).
func (s *Server) flowAllow(dst netip.AddrPort) error {
	if err := flow.DenySpecial(dst.Addr()); err != nil {
		return err
	}
	if !s.routes.allows(dst.Addr(), 6) {
		return fmt.Errorf("destination %v is outside the server's routes", dst.Addr())
	}
	return nil
}

// flowDial dials a flow's destination. The pools' gateway addresses are
// the server itself; with GatewayLoopback they map to the host's loopback,
// as the userspace NAT does for packets.
func (s *Server) flowDial(ctx context.Context, network, address string) (net.Conn, error) {
	if s.cfg.GatewayLoopback {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			switch ap.Addr() {
			case s.cfg.Pool4.Gateway():
				address = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port()).String()
			case s.cfg.Pool6.Gateway():
				address = netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port()).String()
			}
		}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// handleFlow serves one flow: an HTTP/3 CONNECT (RFC 9114 §4.4) whose
// authority is the destination ip:port. It checks the token and the
// destination, takes a flow slot of the connection, dials, answers 200 and
// splices the stream and the TCP connection; failures are answered with
// the status and Proxy-Status (RFC 9209) the client maps to a local
// outcome (RST, ICMP unreachable).
func (s *Server) handleFlow(w http.ResponseWriter, r *http.Request) {
	owner, ok := s.authenticate(r)
	if !ok {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	dst, err := netip.ParseAddrPort(r.Host)
	if err != nil {
		http.Error(w, fmt.Sprintf("CONNECT authority %q: expected a literal IP:port", r.Host), http.StatusBadRequest)
		return
	}
	cs, _ := r.Context().Value(ctxKey{}).(*connState)
	if cs == nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	// A flow dials out: never for 0-RTT data that may be a replay.
	select {
	case <-cs.conn.HandshakeComplete():
	case <-r.Context().Done():
		return
	}
	ctx := r.Context()
	if err := cs.flowLimiter(s.cfg.MaxFlows).Acquire(ctx); err != nil {
		s.refuseFlow(w, owner, dst, err)
		return
	}
	defer cs.flows.Release()
	conn, err := s.dialer.DialFlow(ctx, dst)
	if err != nil {
		s.refuseFlow(w, owner, dst, err)
		return
	}
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	str := w.(http3.HTTPStreamer).HTTPStream()
	s.stats.FlowsTotal.Add(1)
	s.stats.FlowsActive.Add(1)
	defer s.stats.FlowsActive.Add(-1)
	sctx := context.Background()
	if p := s.ctx.Load(); p != nil {
		sctx = *p
	}
	up, down, err := flow.Splice(sctx, &flowStream{s: str}, conn, flow.WithCounters(&s.stats.FlowBytesDown, &s.stats.FlowBytesUp))
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("flow ended", "client", owner, "dst", dst, "up", down, "down", up, "err", err)
	}
}

// refuseFlow answers a flow that could not be opened.
func (s *Server) refuseFlow(w http.ResponseWriter, owner string, dst netip.AddrPort, err error) {
	var fe *flow.Error
	if !errors.As(err, &fe) {
		fe = &flow.Error{Kind: flow.Classify(err), Dst: dst.String(), Err: err}
	}
	s.stats.FlowsRefused.Add(1)
	s.log.Debug("flow refused", "client", owner, "dst", dst, "err", fe)
	w.Header().Set("Proxy-Status", fe.ProxyStatusField("roam"))
	w.WriteHeader(fe.HTTPStatus())
}

// openFlow is the client's side of a flow: it opens a CONNECT request
// stream to dst on the current connection (waiting while the client
// reconnects) and returns it once the server has dialed, or a *flow.Error
// that tells the caller which local outcome to give the application.
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
	return &flowStream{s: str}, nil
}
