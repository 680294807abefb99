package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/capsule"
)

// HTTP/3 error codes used to abort a request stream (RFC 9114 §8.1).
const (
	errCodeRequestCancelled quic.StreamErrorCode = 0x10c // H3_REQUEST_CANCELLED
	errCodeMessageError     quic.StreamErrorCode = 0x10e // H3_MESSAGE_ERROR: malformed capsule (RFC 9297 §3.3)
)

// capsuleStream is the request stream of a CONNECT-IP session once the
// headers are done: capsules are read and written as the stream's data.
// *http3.Stream and *http3.RequestStream implement it.
type capsuleStream interface {
	io.ReadWriter
	ReceiveDatagram(context.Context) ([]byte, error)
	Close() error
	CancelRead(quic.StreamErrorCode)
	CancelWrite(quic.StreamErrorCode)
}

// addrSet is a session's current tunnel addresses; replaced as a whole.
type addrSet struct {
	v4, v6     netip.Addr
	req4, req6 uint64 // request IDs they were assigned under (0 = unsolicited)
}

// outPkt is a packet on its way to a session's client: the buffer holds it
// at datagram.Headroom and is owned by whoever holds the outPkt.
type outPkt struct {
	buf *[datagram.BufSize]byte
	n   int
}

// session is one CONNECT-IP tunnel on the server.
type session struct {
	srv   *Server
	cs    *connState
	str   capsuleStream
	qsid  uint64
	owner string   // the identity's Owner at setup: keys the address leases
	token string   // as presented, to re-authenticate on Reload
	scope routeSet // the request's {target}/{ipproto}
	since time.Time
	log   *slog.Logger

	// pol is the session's identity and what it may reach; loaded once
	// per packet, replaced by Reload. authSt is the authState pol was
	// made under (guarded by srv.mu).
	pol    atomic.Pointer[policy]
	authSt *authState
	expiry *expiryTimer

	wmu     sync.Mutex // serializes writes (and the close) of str
	closing bool       // str was closed; guarded by wmu

	addrs atomic.Pointer[addrSet]
	out   *sendQueue
	ctx   context.Context
	end   context.CancelCauseFunc

	txPackets, txBytes, rxPackets, rxBytes atomic.Uint64
	rxDatagrams                            atomic.Uint64 // every datagram the stream returned, before checks

	icmp []byte // scratch for ICMP too-big replies, made on first use; used by the sender only
}

func newSession(s *Server, cs *connState, str capsuleStream, a authResult, scope routeSet) *session {
	var qsid uint64
	if ider, ok := str.(interface{ StreamID() quic.StreamID }); ok {
		qsid = uint64(ider.StreamID()) / 4
	}
	sess := &session{
		srv:    s,
		cs:     cs,
		str:    str,
		qsid:   qsid,
		owner:  a.id.Owner,
		token:  a.token,
		scope:  scope,
		authSt: a.st,
		out:    newSendQueue(s.cfg.SessionQueue),
	}
	sess.pol.Store(newPolicy(a.id, a.st.routes, scope))
	return sess
}

// reauth verifies the session's token again under st (a reload) and
// installs the identity's new policy. It returns whether the advertised
// routes changed, or why the session must end.
func (sess *session) reauth(st *authState, now time.Time) (routesChanged bool, err error) {
	id, err := verify(st, sess.token, now)
	if err != nil {
		return false, err
	}
	pol := newPolicy(id, st.routes, sess.scope)
	if len(pol.routes) == 0 {
		return false, errors.New("the token allows none of the session's routes any more")
	}
	old := sess.pol.Swap(pol)
	sess.expiry.set(id.Expires)
	return !sameRoutes(old, pol), nil
}

// advertiseRoutes sends the current policy's routes in a fresh
// ROUTE_ADVERTISEMENT (after a reload changed them). Errors mean the
// session is ending; they are not reported.
func (sess *session) advertiseRoutes() {
	adv := capsule.RouteAdvertisement{Ranges: sess.pol.Load().routes.ranges()}
	b, err := adv.Append(nil)
	if err != nil {
		return
	}
	sess.wmu.Lock()
	defer sess.wmu.Unlock()
	if !sess.closing && sess.ctx.Err() == nil {
		sess.str.Write(b)
	}
}

// errClientClosed is the end reason when the client closes the stream.
var errClientClosed = errors.New("client closed the tunnel")

// run serves the session until the client leaves, the connection dies, a
// capsule is malformed, or ctx (the server) ends. It reads capsules inline
// and runs the datagram sender alongside; it returns only after the sender
// has stopped and the session's addresses are released.
func (sess *session) run(ctx context.Context, remote string) {
	s := sess.srv
	start := time.Now()
	sess.ctx, sess.end = context.WithCancelCause(ctx)
	stop := context.AfterFunc(sess.cs.conn.Context(), func() { sess.end(context.Cause(sess.cs.conn.Context())) })
	defer stop()
	as := sess.addrs.Load()
	sess.since = start
	pol := sess.pol.Load()
	sess.log = s.log.With("remote", remote, "client", sess.owner, "ipv4", as.v4, "ipv6", as.v6)
	if pol.id.User != "" {
		sess.log = sess.log.With("user", pol.id.User)
	}
	sess.expiry = newExpiryTimer(func() {
		s.stats.SessionsExpired.Add(1)
		sess.end(errTokenExpired)
	})
	defer sess.expiry.stop()
	sess.expiry.set(pol.id.Expires)

	s.mu.Lock()
	s.updateTableLocked(func(m map[netip.Addr]*session) {
		m[as.v4] = sess
		m[as.v6] = sess
	})
	s.sessions[sess] = struct{}{}
	var reauthErr error
	if cur := s.auth.Load(); cur != sess.authSt {
		// A reload came between the request's authentication and here,
		// and did not see this session: re-authenticate it ourselves.
		sess.authSt = cur
		_, reauthErr = sess.reauth(cur, time.Now())
	}
	s.mu.Unlock()
	s.stats.SessionsTotal.Add(1)
	s.stats.SessionsActive.Add(1)
	sess.log.Info("session started")
	if reauthErr != nil {
		s.stats.SessionsRevoked.Add(1)
		sess.end(fmt.Errorf("token no longer accepted after a reload: %w", reauthErr))
	}

	var loops sync.WaitGroup
	loops.Go(sess.sendLoop)
	loops.Go(sess.receiveLoop)
	// Unblock the capsule reader when the session is ended from outside
	// (server shutdown, address takeover, connection loss).
	stopAbort := context.AfterFunc(sess.ctx, func() {
		if !errors.Is(context.Cause(sess.ctx), errClientClosed) {
			sess.str.CancelRead(errCodeRequestCancelled)
		}
	})

	var err error
	if err = sess.writeCapsules(nil, true); err == nil {
		err = sess.readCapsules()
	}
	stopAbort()
	var capErr *capsuleError
	switch {
	case errors.Is(err, io.EOF):
		err = errClientClosed
		if sess.wmu.TryLock() {
			sess.closing = true
			sess.str.Close()
			sess.wmu.Unlock()
		} else {
			// A route update is blocked writing to a client that does
			// not read: no FIN after it, a reset.
			sess.str.CancelWrite(errCodeRequestCancelled)
		}
	case errors.As(err, &capErr):
		s.stats.CapsuleErrors.Add(1)
		sess.str.CancelRead(errCodeMessageError)
		sess.str.CancelWrite(errCodeMessageError)
	default:
		if c := context.Cause(sess.ctx); c != nil {
			err = c
		}
		sess.str.CancelWrite(errCodeRequestCancelled)
	}
	sess.end(err)
	loops.Wait()
	sess.cleanup(err)
	sess.log.Info("session ended", "reason", err, "duration", time.Since(start).Round(time.Millisecond),
		"tx_packets", sess.txPackets.Load(), "tx_bytes", sess.txBytes.Load(),
		"rx_packets", sess.rxPackets.Load(), "rx_bytes", sess.rxBytes.Load())
}

// cleanup removes the session from the tables and releases the addresses it
// still holds (an address taken over by a newer session is not released).
// Unless the client closed the tunnel itself, the addresses stay reserved
// for the same client for the lease grace period, and the NAT's flows of
// those addresses live on until it ends, so a client that reconnects in
// time carries on where it was.
func (sess *session) cleanup(reason error) {
	s := sess.srv
	as := sess.addrs.Load()
	grace := s.cfg.LeaseGrace
	if grace < 0 || errors.Is(reason, errClientClosed) || s.ctx.Load() == nil || (*s.ctx.Load()).Err() != nil {
		grace = 0
	}
	var released []netip.Addr
	s.mu.Lock()
	delete(s.sessions, sess)
	s.updateTableLocked(func(m map[netip.Addr]*session) {
		for _, a := range []netip.Addr{as.v4, as.v6} {
			if m[a] != sess {
				continue
			}
			delete(m, a)
			pool := s.cfg.Pool4
			if a.Is6() {
				pool = s.cfg.Pool6
			}
			if grace > 0 {
				pool.ReleaseAfter(a, sess.owner, grace, func() { s.closeFlows(a) })
			} else {
				pool.Release(a, sess.owner)
				released = append(released, a)
			}
		}
	})
	s.mu.Unlock()
	s.closeFlows(released...)
	s.stats.SessionsActive.Add(-1)
	sess.out.drain()
}

// capsuleError marks a malformed capsule from the client.
type capsuleError struct{ err error }

func (e *capsuleError) Error() string { return e.err.Error() }
func (e *capsuleError) Unwrap() error { return e.err }

// readCapsules reads the client's capsules until the stream ends.
func (sess *session) readCapsules() error {
	rd := capsule.NewReader(sess.str)
	var p datagram.Packet
	for {
		t, v, err := rd.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			if errors.Is(err, io.ErrUnexpectedEOF) || sess.ctx.Err() != nil {
				return err
			}
			var se *quic.StreamError
			var ae *quic.ApplicationError
			if errors.As(err, &se) || errors.As(err, &ae) || errors.Is(err, context.Canceled) {
				return err
			}
			return &capsuleError{fmt.Errorf("reading capsules: %w", err)}
		}
		switch t {
		case capsule.TypeAddressRequest:
			req, err := capsule.ParseAddressRequest(v)
			if err != nil {
				return &capsuleError{err}
			}
			if err := sess.handleAddressRequest(req); err != nil {
				return err
			}
		case capsule.TypeDatagram:
			// RFC 9297 §3.5: an HTTP Datagram carried in a capsule; same
			// payload as a QUIC datagram minus the quarter stream ID.
			ctxID, n, err := quicvarint.Parse(v)
			if err != nil {
				sess.srv.stats.DropMalformed.Add(1)
				continue
			}
			sess.fromClient(ctxID, v[n:], &p, false)
		case capsule.TypeAddressAssign:
			// A client may assign addresses to the proxy (RFC 9484 §4.7.1);
			// Roam's server has no use for them but still checks the form.
			if _, err := capsule.ParseAddressAssign(v); err != nil {
				return &capsuleError{err}
			}
		case capsule.TypeRouteAdvertisement:
			if _, err := capsule.ParseRouteAdvertisement(v); err != nil {
				return &capsuleError{err}
			}
		case capsule.TypeDNSAssign:
			// A client's DNS configuration is ignored (draft §3.5).
			if _, err := capsule.ParseDNSAssign(v); err != nil {
				return &capsuleError{err}
			}
		default:
			// Unknown capsule types are skipped (RFC 9297 §3.2).
		}
	}
}

// handleAddressRequest honours each requested address that is free or was
// this client's (same token), and answers with the complete assignment
// (RFC 9484 §4.7.2): a matching Request ID for every requested address,
// all-zero for the ones refused.
func (sess *session) handleAddressRequest(req *capsule.AddressRequest) error {
	s := sess.srv
	var rejected []capsule.AssignedAddress
	var revoke []*session
	s.mu.Lock()
	cur := *sess.addrs.Load()
	next := cur
	for _, ra := range req.Addresses {
		a := ra.Prefix.Addr()
		pool, slot, id := s.cfg.Pool4, &next.v4, &next.req4
		if a.Is6() {
			pool, slot, id = s.cfg.Pool6, &next.v6, &next.req6
		}
		if a.IsUnspecified() || a == *slot {
			*id = ra.RequestID
			continue
		}
		takeover, err := pool.Request(a, sess.owner)
		if err != nil {
			rejected = append(rejected, capsule.AssignedAddress{
				RequestID: ra.RequestID,
				Prefix:    netip.PrefixFrom(zeroAddr(a.Is4()), a.BitLen()),
			})
			continue
		}
		if takeover {
			if other := s.sessionFor(a); other != nil && other != sess {
				revoke = append(revoke, other)
			}
		}
		if *slot != cur.v4 && *slot != cur.v6 {
			// assigned earlier in this same capsule: give it back
			pool.Release(*slot, sess.owner)
		}
		*slot = a
		*id = ra.RequestID
	}
	s.updateTableLocked(func(m map[netip.Addr]*session) {
		for _, pair := range [][2]netip.Addr{{cur.v4, next.v4}, {cur.v6, next.v6}} {
			old, nw := pair[0], pair[1]
			if old == nw {
				continue
			}
			if m[old] == sess {
				delete(m, old)
				if old.Is4() {
					s.cfg.Pool4.Release(old, sess.owner)
				} else {
					s.cfg.Pool6.Release(old, sess.owner)
				}
			}
			m[nw] = sess
		}
	})
	sess.addrs.Store(&next)
	s.mu.Unlock()
	for _, old := range []netip.Addr{cur.v4, cur.v6} {
		if old != next.v4 && old != next.v6 {
			s.closeFlows(old)
		}
	}
	for _, o := range revoke {
		o.end(errors.New("address taken over by a newer session of the same client"))
	}
	if next.v4 != cur.v4 || next.v6 != cur.v6 {
		sess.log.Info("addresses changed on request", "ipv4", next.v4, "ipv6", next.v6)
	}
	return sess.writeCapsules(rejected, false)
}

func zeroAddr(is4 bool) netip.Addr {
	if is4 {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// writeCapsules sends the complete ADDRESS_ASSIGN (plus refusals) and, the
// first time, the ROUTE_ADVERTISEMENT and DNS_ASSIGN, in one write.
func (sess *session) writeCapsules(rejected []capsule.AssignedAddress, withRoutes bool) error {
	as := sess.addrs.Load()
	assign := capsule.AddressAssign{Addresses: append([]capsule.AssignedAddress{
		{RequestID: as.req4, Prefix: netip.PrefixFrom(as.v4, 32)},
		{RequestID: as.req6, Prefix: netip.PrefixFrom(as.v6, 128)},
	}, rejected...)}
	b, err := assign.Append(nil)
	if err != nil {
		return fmt.Errorf("encoding ADDRESS_ASSIGN: %w", err)
	}
	if withRoutes {
		adv := capsule.RouteAdvertisement{Ranges: sess.pol.Load().routes.ranges()}
		if b, err = adv.Append(b); err != nil {
			return fmt.Errorf("encoding ROUTE_ADVERTISEMENT: %w", err)
		}
		if b, err = sess.appendDNS(b); err != nil {
			return err
		}
	}
	sess.wmu.Lock()
	_, err = sess.str.Write(b)
	sess.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("writing capsules: %w", err)
	}
	return nil
}

// receiveLoop is the session's datagram drainer. quic-go's http3 layer
// sorts a connection's datagrams into per-stream queues of 32 and drops
// when one is full, so this goroutine does nothing but check and queue.
func (sess *session) receiveLoop() {
	var p datagram.Packet
	for {
		b, err := sess.str.ReceiveDatagram(sess.ctx)
		if err != nil {
			return
		}
		sess.rxDatagrams.Add(1)
		sess.srv.stats.RxDatagrams.Add(1)
		ctxID, n, err := quicvarint.Parse(b)
		if err != nil {
			sess.srv.stats.DropMalformed.Add(1)
			continue
		}
		sess.fromClient(ctxID, b[n:], &p, true)
	}
}

// fromClient checks and forwards one packet the client sent. p is the
// caller's scratch Packet. If owned, pkt is handed to the device writer
// without a copy; otherwise it is copied before fromClient returns.
func (sess *session) fromClient(ctxID uint64, pkt []byte, p *datagram.Packet, owned bool) {
	st := &sess.srv.stats
	if ctxID != 0 {
		// RFC 9484 §6: unknown context IDs are dropped silently.
		st.DropContext.Add(1)
		return
	}
	if err := p.Decode(pkt); err != nil {
		st.DropMalformed.Add(1)
		return
	}
	as := sess.addrs.Load()
	if p.Src != as.v4 && p.Src != as.v6 {
		st.DropSrc.Add(1)
		return
	}
	switch sess.pol.Load().checkPacket(p, pkt) {
	case datagram.NoDrop:
	case datagram.DropReasonDst:
		st.DropDst.Add(1)
		return
	default:
		st.DropPolicy.Add(1)
		return
	}
	sess.rxPackets.Add(1)
	sess.rxBytes.Add(uint64(p.Len))
	st.RxPackets.Add(1)
	st.RxBytes.Add(uint64(p.Len))
	if owned {
		sess.srv.writer.EnqueueOwned(pkt[:p.Len])
	} else {
		sess.srv.writer.Enqueue(pkt[:p.Len])
	}
}

// enqueue hands a packet from the device to the session's sender. On
// success the session owns buf; on failure (queue full, session ending) the
// caller keeps it.
func (sess *session) enqueue(buf *[datagram.BufSize]byte, n int) bool {
	if sess.ctx == nil || sess.ctx.Err() != nil {
		return false
	}
	if !sess.out.push(outPkt{buf: buf, n: n}) {
		sess.srv.stats.DropQueueFull.Add(1)
		return false
	}
	return true
}

// sendLoop is the session's datagram sender: quic-go's SendDatagram blocks
// when its queue is full, so a slow client backs up only its own queue.
func (sess *session) sendLoop() {
	if sess.log.Enabled(sess.ctx, slog.LevelDebug) {
		sess.log.Debug("sender started")
		defer sess.log.Debug("sender stopped")
	}
	for {
		select {
		case <-sess.ctx.Done():
			return
		case <-sess.out.wake:
		}
		for sess.ctx.Err() == nil {
			op, ok := sess.out.pop()
			if !ok {
				break
			}
			sess.send(op)
			datagram.PutBuf(op.buf)
		}
	}
}

func (sess *session) send(op outPkt) {
	st := &sess.srv.stats
	start, err := datagram.PutPrefix(op.buf[:], datagram.Headroom, sess.qsid, 0)
	if err != nil {
		st.DropMalformed.Add(1)
		return
	}
	err = sess.cs.conn.SendDatagram(op.buf[start : datagram.Headroom+op.n])
	if err == nil {
		sess.txPackets.Add(1)
		sess.txBytes.Add(uint64(op.n))
		st.TxPackets.Add(1)
		st.TxBytes.Add(uint64(op.n))
		return
	}
	var tl *quic.DatagramTooLargeError
	if errors.As(err, &tl) {
		st.DropTooBig.Add(1)
		mtu := int(tl.MaxDatagramPayloadSize) - datagram.PrefixLen(sess.qsid, 0)
		pkt := op.buf[datagram.Headroom : datagram.Headroom+op.n]
		if icmp, ok := datagram.AppendTooBig(sess.icmp[:0], pkt, mtu); ok {
			sess.srv.writer.Enqueue(icmp)
			sess.icmp = icmp[:0] // kept for the next one; most sessions never need it
		}
		return
	}
	sess.srv.stats.SendErrors.Add(1)
}
