package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/capsule"
	"github.com/roamvpn/roam/tunnel/fec"
)

// link is one QUIC connection carrying the tunnel: its CONNECT-IP request
// stream and every transport (UDP socket) it has used. The client replaces
// the link on reconnect; the device and the pump stay.
type link struct {
	conn   *quic.Conn
	cc     *http3.ClientConn // opens flow streams
	ctrl   *h3Control        // reads the server's control stream (SETTINGS, GOAWAY)
	str    *ipStream         // the CONNECT-IP request stream
	rd     *capsule.Reader
	dl     *datagram.Link
	assign *capsule.AddressAssign
	routes *capsule.RouteAdvertisement
	server netip.Addr // the server's address this connection dialed
	path   netPath    // where the current path leaves the host (zero if unknown)
	qpath  *quic.Path // the path migrated to last; nil for the dialed one

	// dns is the DNS_ASSIGN that came with the configuration; nil if none.
	dns *capsule.DNSAssign

	// tr is the transport of the current path; set by dial and migrate
	// (the supervisor's goroutine), read there only.
	tr *quic.Transport

	mu      sync.Mutex
	sockets []linkSocket // guarded by mu; closed with the link
	closed  bool         // guarded by mu
	// fecs are the sockets' FEC wrappers (ClientConfig.FEC); fecOn is set
	// once the server agreed to FEC, and new paths frame from the start.
	fecs  []*fec.Conn // guarded by mu
	fecOn bool        // guarded by mu
	raddr *net.UDPAddr
	// fecDone receives the FEC counters of l's sockets when l closes.
	fecDone *fecTotals
}

// linkSocket is one UDP socket a link's connection has used, with its
// transport and the local address it was opened on.
type linkSocket struct {
	pc    net.PacketConn
	tr    *quic.Transport
	local netip.Addr
}

// netPath is the host side of a network path: the local address and
// interface the route to the server uses.
type netPath struct {
	local   netip.Addr
	ifindex int
}

// addSocket opens a socket on local with ListenPacket and a transport on
// it that belongs to l from now on: quic-go destroys a connection when any
// transport it has used is closed, so they all live as long as the link.
func (c *Client) addSocket(l *link, local netip.Addr) (*quic.Transport, error) {
	pc, err := c.cfg.ListenPacket(local)
	if err != nil {
		return nil, fmt.Errorf("opening a UDP socket: %w", err)
	}
	conn := lossy(pc, &c.pathDrops)
	var fc *fec.Conn
	if !c.cfg.FEC.Off() && fec.Supported {
		if u, ok := conn.(*lossyUDPConn); ok {
			fc = fec.NewConn(u, fec.Config{})
			conn = fc
		}
	}
	tr := &quic.Transport{Conn: conn, ConnectionIDLength: 4}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		pc.Close()
		return nil, net.ErrClosed
	}
	if fc != nil {
		l.fecs = append(l.fecs, fc)
		if l.fecOn {
			fc.Enable(l.raddr, c.cfg.FEC)
		}
	}
	l.sockets = append(l.sockets, linkSocket{pc, tr, local})
	return tr, nil
}

// earlierSocket returns the transport of the socket l last opened on
// local, unless that is the current path's: moving back to a network it
// has used before, the connection takes its socket again instead of
// holding one more. It returns nil if there is none (or local is
// unspecified: such a socket sends from whatever address the host has).
func (l *link) earlierSocket(local netip.Addr) *quic.Transport {
	if !local.IsValid() || local.IsUnspecified() {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.sockets) - 1; i >= 0; i-- {
		if ls := l.sockets[i]; ls.local == local {
			if ls.tr == l.tr {
				return nil
			}
			return ls.tr
		}
	}
	return nil
}

// goingAway returns a channel closed once the server has sent GOAWAY on
// l's connection (nil, never closed, before the request set it up).
func (l *link) goingAway() <-chan struct{} {
	if l.ctrl == nil {
		return nil
	}
	return l.ctrl.goingAway()
}

// socketCount is the number of sockets l holds.
func (l *link) socketCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sockets)
}

// close ends the request stream and the connection and closes every
// transport and socket. It is idempotent.
func (l *link) close(reason string) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.mu.Unlock()
	if l.fecDone != nil {
		s, _ := l.fecStats()
		l.fecDone.add(s)
	}
	if l.str != nil {
		l.str.CancelRead(errCodeRequestCancelled)
		l.str.Close()
	}
	if l.conn != nil {
		l.conn.CloseWithError(0, reason)
	}
	for _, ls := range l.sockets {
		ls.tr.Close()
	}
	for _, ls := range l.sockets {
		ls.pc.Close()
	}
}

// connect dials the server on a new socket and sets up a CONNECT-IP
// session: request, ADDRESS_REQUEST (want, or "any address" of each family
// when want is nil), and waits for the answering ADDRESS_ASSIGN and a
// ROUTE_ADVERTISEMENT. With a session ticket from an earlier connection it
// resumes (0-RTT offered, but no stream opened before the handshake
// completes), and the request leaves with the server's SETTINGS, one
// round trip in (see request); if the server refuses the 0-RTT (it has
// other keys now) it dials again.
func (c *Client) connect(ctx context.Context, want []netip.Prefix) (*link, error) {
	l, err := c.connectOnce(ctx, want)
	if errors.Is(err, quic.Err0RTTRejected) {
		// The ticket is no good with this server (crypto/tls keys the
		// cache by server name); forget it, or the next dial offers it
		// again before the server's new ticket has arrived.
		c.sessions.Put(c.tlsConfig().ServerName, nil)
		c.log.Debug("the server refused 0-RTT; dialing again", "err", err)
		l, err = c.connectOnce(ctx, want)
	}
	return l, err
}

func (c *Client) connectOnce(ctx context.Context, want []netip.Prefix) (_ *link, err error) {
	raddr, err := net.ResolveUDPAddr("udp", c.cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("resolving server %q: %w", c.cfg.Server, err)
	}
	l := &link{server: raddr.AddrPort().Addr().Unmap(), raddr: raddr, fecDone: &c.fecTotal}
	defer func() {
		if err != nil {
			l.close("setup failed")
		}
	}()
	if c.cfg.Monitor != nil {
		if local, ifindex, err := c.cfg.Monitor.PathTo(l.server); err == nil {
			l.path = netPath{local, ifindex}
		}
	}
	tr, err := c.addSocket(l, l.path.local)
	if err != nil {
		return nil, err
	}
	l.tr = tr
	conn, err := tr.DialEarly(ctx, raddr, c.tlsConfig(), clientQUICConfig())
	if err != nil {
		return nil, classifyDialError(c.cfg.Server, err)
	}
	l.conn = conn
	if err := c.request(ctx, l, want); err != nil {
		return nil, err
	}
	if l.assign, l.routes, l.dns, err = awaitConfig(ctx, l.str, l.rd, want); err != nil {
		return nil, err
	}
	l.dl = &datagram.Link{
		Conn: l.conn, // sends: the prefix is written in place, no copy
		// Recv unset: the pump reads the connection's datagrams itself
		// and checks the quarter stream ID (h3client.go says why).
		QuarterStreamID: uint64(l.str.StreamID()) / 4,
	}
	return l, nil
}

// addressRequest asks for want, or for any address of each family.
func addressRequest(want []netip.Prefix) capsule.AddressRequest {
	if want == nil {
		// RFC 9484 §4.7.1: all-zero addresses mean "any address of this
		// family"; a server that assigns unprompted (as Roam's does)
		// confirms its assignment.
		want = []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 32), netip.PrefixFrom(netip.IPv6Unspecified(), 128)}
	}
	var req capsule.AddressRequest
	for i, p := range want {
		req.Addresses = append(req.Addresses, capsule.RequestedAddress{RequestID: uint64(i + 1), Prefix: p})
	}
	return req
}

// request waits for the server's SETTINGS, opens the CONNECT-IP request
// stream, sends the request and the ADDRESS_REQUEST, and reads and checks
// the response.
//
// 0-RTT: the client opens no stream, not even its HTTP/3 control stream,
// before the handshake has completed. quic-go (v0.66) applies the
// server's transport parameters on its own goroutine at handshake
// completion while a stream opened in 0-RTT reads them unsynchronised (a
// data race the race detector reports; quic-go issue #4303). It costs no
// round trip: an Extended CONNECT must wait for the server's SETTINGS
// (RFC 8441 §3), which come in 1-RTT packets that the client can read
// only once the handshake is complete, so the control stream now leaves
// with the request, one round trip in, as the request always did. If
// the server refused the 0-RTT, the accept loop of the server's streams
// ends with quic.Err0RTTRejected before any SETTINGS can arrive, and
// waitSettings returns it (connect then dials again).
//
// Every step that can block is bounded by ctx: writes that wait for
// stream flow control are reset (RESET_STREAM) and reads cancelled
// (STOP_SENDING) when ctx ends.
func (c *Client) request(ctx context.Context, l *link, want []netip.Prefix) error {
	select {
	case <-l.conn.HandshakeComplete():
	case <-l.conn.Context().Done():
		// The handshake failed after DialEarly returned (a resumed
		// session's pin check, for one): say so, permanent if so.
		return classifyDialError(c.cfg.Server, context.Cause(l.conn.Context()))
	case <-ctx.Done():
		return fmt.Errorf("waiting for the QUIC handshake: %w", context.Cause(ctx))
	}
	// http3 sends the client's SETTINGS (with H3_DATAGRAM) and carries
	// the flow streams; the server's streams, and with them its SETTINGS,
	// are the client's own (h3client.go), so that http3 does not take the
	// connection's datagrams.
	cc := (&http3.Transport{EnableDatagrams: true}).NewRawClientConn(l.conn)
	ctrl := startH3Control(l.conn, c.log)
	l.cc = cc.ClientConn
	l.ctrl = ctrl
	settings, err := ctrl.waitSettings(ctx)
	if err != nil {
		switch {
		case errors.Is(err, ErrNoDatagrams):
			return permanent(err)
		case errors.Is(err, quic.Err0RTTRejected):
			return err // connect dials again
		case l.conn.Context().Err() != nil:
			// The handshake may have failed after DialEarly returned (a
			// resumed session's pin check): say so, permanent if so.
			return classifyDialError(c.cfg.Server, context.Cause(l.conn.Context()))
		}
		return err
	}
	if !settings.datagram {
		return permanent(ErrNoDatagrams)
	} else if !settings.extendedConnect {
		return permanent(errors.New("server does not support Extended CONNECT (RFC 9220)"))
	}
	if !l.conn.ConnectionState().SupportsDatagrams.Remote {
		// waitSettings has failed the connection already (H3_DATAGRAM
		// without the QUIC extension); this is the same check.
		return permanent(ErrNoDatagrams)
	}
	qs, err := l.conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("opening the request stream: %w", err)
	}
	str := newIPStream(l.conn, qs)
	l.str = str // from here on, link.close cancels it
	authority := c.cfg.Server
	header := http.Header{
		"Authorization":    {"Bearer " + c.cfg.Token},
		"Capsule-Protocol": {"?1"},
	}
	if !c.cfg.FEC.Off() && fec.Supported {
		header.Set(FECHeader, c.cfg.FEC.String())
	}
	ar := addressRequest(want)
	capsules, err := ar.Append(nil)
	if err != nil {
		return fmt.Errorf("sending ADDRESS_REQUEST: %w", err)
	}
	// The writes can block on stream flow control (a server that grants
	// no credit): reset the stream when ctx ends. The reads below are
	// cancelled with STOP_SENDING.
	stop := context.AfterFunc(ctx, func() {
		str.CancelWrite(errCodeRequestCancelled)
		str.CancelRead(errCodeRequestCancelled)
	})
	defer stop()
	bounded := func(what string, err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := str.sendRequest("connect-ip", authority, WellKnownPath+"*/*/", header); err != nil {
		return bounded("sending the CONNECT-IP request", err)
	}
	if _, err := str.Write(capsules); err != nil {
		return bounded("sending ADDRESS_REQUEST", err)
	}
	resp, err := str.readResponse()
	if err != nil {
		return bounded("reading the CONNECT-IP response", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return permanent(ErrAuthFailed)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		// Still under stop: a server that answers and leaves the stream
		// open cannot hold the attempt past ctx.
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		err := &StatusError{StatusCode: resp.StatusCode, Status: resp.Status, Reason: strings.TrimSpace(string(body))}
		if resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusRequestTimeout && resp.StatusCode != http.StatusTooManyRequests {
			return permanent(err)
		}
		return err
	}
	if !stop() {
		// ctx ended as the response came: the stream is reset.
		return fmt.Errorf("reading the CONNECT-IP response: %w", context.Cause(ctx))
	}
	l.rd = capsule.NewReader(str)
	if !c.cfg.FEC.Off() && resp.Header.Get(FECHeader) != "" {
		l.enableFEC(c.cfg.FEC)
	}
	return nil
}

// FECHeader is the CONNECT-IP request and response header that negotiates
// forward error correction (tunnel/fec): the client asks with its policy
// ("auto" or "K:M"), a server that speaks FEC answers with the policy it
// will follow. Only then do both ends frame their packets; peers that
// never ask (browsers, other CONNECT-IP clients) get plain QUIC.
const FECHeader = "Roam-Fec"

// enableFEC starts framing on every socket of l, and on the ones it opens
// later.
func (l *link) enableFEC(p fec.Policy) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fecOn = true
	for _, fc := range l.fecs {
		fc.Enable(l.raddr, p)
	}
}

// fecTotals sums the FEC counters of closed links.
type fecTotals struct {
	mu sync.Mutex
	s  fec.Stats
}

func (t *fecTotals) add(s fec.Stats) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Add(s)
}

func (t *fecTotals) get() fec.Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.s
}

// fecStats sums the FEC counters of l's sockets.
func (l *link) fecStats() (s fec.Stats, on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, fc := range l.fecs {
		s.Add(fc.Stats())
	}
	return s, l.fecOn
}

// awaitConfig reads capsules until a ROUTE_ADVERTISEMENT and an
// ADDRESS_ASSIGN that answers the request for want have arrived (in either
// order). Any assignment answers a request for "any address"; a request
// for specific addresses is answered by an assignment carrying its request
// IDs (RFC 9484 §4.7.2) or, from servers that assign without echoing IDs,
// one that contains every wanted prefix. Earlier, unprompted assignments
// are skipped. Capsules that arrived together with the last of those
// (Roam's server sends its DNS_ASSIGN in the same write) are taken too;
// dns is the last DNS_ASSIGN among them, nil if none.
func awaitConfig(ctx context.Context, str *ipStream, rd *capsule.Reader, want []netip.Prefix) (assign *capsule.AddressAssign, routes *capsule.RouteAdvertisement, dns *capsule.DNSAssign, err error) {
	stop := context.AfterFunc(ctx, func() { str.CancelRead(errCodeRequestCancelled) })
	defer stop()
	// extra bounds the capsules taken after the configuration is complete,
	// so a peer streaming capsules cannot hold the setup here.
	for extra := 0; assign == nil || routes == nil || (rd.Buffered() > 0 && extra < 16); {
		if assign != nil && routes != nil {
			extra++
		}
		t, v, err := rd.Next()
		if err != nil {
			if ctx.Err() != nil {
				what := "ADDRESS_ASSIGN"
				if assign != nil {
					what = "ROUTE_ADVERTISEMENT"
				}
				return nil, nil, nil, fmt.Errorf("waiting for the server's %s: %w", what, context.Cause(ctx))
			}
			return nil, nil, nil, fmt.Errorf("reading the server's capsules: %w", err)
		}
		switch t {
		case capsule.TypeAddressAssign:
			a, err := capsule.ParseAddressAssign(v)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("server sent a malformed capsule: %w", err)
			}
			if answers(a, want) {
				assign = a
			}
		case capsule.TypeRouteAdvertisement:
			if routes, err = capsule.ParseRouteAdvertisement(v); err != nil {
				return nil, nil, nil, fmt.Errorf("server sent a malformed capsule: %w", err)
			}
		case capsule.TypeDNSAssign:
			if dns, err = capsule.ParseDNSAssign(v); err != nil {
				return nil, nil, nil, fmt.Errorf("server sent a malformed capsule: %w", err)
			}
		}
	}
	return assign, routes, dns, nil
}

// answers reports whether a answers the request addressRequest(want).
func answers(a *capsule.AddressAssign, want []netip.Prefix) bool {
	if want == nil {
		return true
	}
	got := assigned(a)
	all := true
	for _, w := range want {
		all = all && slices.Contains(got, w)
	}
	if all {
		return true
	}
	for _, e := range a.Addresses {
		if e.RequestID >= 1 && e.RequestID <= uint64(len(want)) {
			return true
		}
	}
	return false
}

// assigned returns the assigned prefixes, without refusals (all-zero).
func assigned(a *capsule.AddressAssign) []netip.Prefix {
	var out []netip.Prefix
	for _, e := range a.Addresses {
		if !e.Prefix.Addr().IsUnspecified() {
			out = append(out, e.Prefix)
		}
	}
	return out
}

// permanentError marks a setup failure that retrying cannot fix (wrong
// token or pin, a server that cannot do CONNECT-IP, addresses gone): the
// client gives up instead of reconnecting.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

func isPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
