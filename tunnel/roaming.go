package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/capsule"
)

// Roaming timings.
const (
	// livenessInterval is how often the client checks that the server
	// still answers.
	livenessInterval = 250 * time.Millisecond
	// minStall and maxStall bound how long the client waits for any
	// packet from the server after it sent a datagram before it calls the
	// path dead (8 smoothed RTTs in between).
	minStall, maxStall = 1500 * time.Millisecond, 8 * time.Second
	// minProbe and maxProbe bound a migration's path validation (4 RTTs).
	// A path that does not validate in that time costs a reconnect, which
	// takes two round trips with 0-RTT (the server answers the request
	// once the handshake completes); waiting longer only stretches the
	// outage.
	minProbe, maxProbe = 250 * time.Millisecond, 2 * time.Second
	// maxLinkSockets bounds the UDP sockets one connection holds: a
	// migration to a new local address opens one (moving back to an
	// address takes that address's socket again), and quic-go destroys a
	// connection when any transport it has used is closed, so they all
	// stay open until the connection ends. A migration that would open
	// one more reconnects instead (0-RTT), which frees them. quic-go v0.66 servers let a connection migrate any number of
	// times (v0.64 only twice: it never retired the connection ID of the
	// path it switched to); this cap is about the client's own file
	// descriptors.
	maxLinkSockets = 16
	// Reconnect backoff: the first retry after minBackoff, doubling up to
	// maxBackoff while the outage is young, maxBackoffLate after
	// lateOutage, each with jitter.
	minBackoff, maxBackoff, maxBackoffLate = 100 * time.Millisecond, 2 * time.Second, 15 * time.Second
	lateOutage                             = time.Minute
	// attempt bounds one reconnect attempt (dial, request, assignment).
	minAttempt, maxAttempt = 2 * time.Second, 10 * time.Second
)

// supervisor keeps the tunnel's link alive under one pump and device.
type supervisor struct {
	c        *Client
	pump     *datagram.Pump
	state    atomic.Pointer[clientState]
	linkErr  chan *datagram.Link // the pump's OnLinkError
	pumpDone chan error
	paused   bool // no route to the server: the pump has no link
	lastRTT  time.Duration

	// dnsDev is the device from NewDevice if it can change the host's DNS
	// (nil otherwise); dns is what the host uses now.
	dnsDev DNSUpdater
	dnsMu  sync.Mutex
	dns    []netip.Addr // guarded by dnsMu (Run sets it before any goroutine)

	// cur is the link carrying the tunnel now (nil while reconnecting),
	// for flows; curMu/curCh signal its changes.
	cur   atomic.Pointer[link]
	curMu sync.Mutex
	curCh chan struct{} // guarded by curMu; closed at every change of cur
}

// setCurrent publishes the link flows open their streams on.
func (s *supervisor) setCurrent(l *link) {
	s.curMu.Lock()
	defer s.curMu.Unlock()
	s.cur.Store(l)
	if s.curCh != nil {
		close(s.curCh)
	}
	s.curCh = make(chan struct{})
}

// curChanged returns a channel closed at the next change of cur.
func (s *supervisor) curChanged() <-chan struct{} {
	s.curMu.Lock()
	defer s.curMu.Unlock()
	if s.curCh == nil {
		s.curCh = make(chan struct{})
	}
	return s.curCh
}

// errLost is returned by serve when the link is gone but the tunnel can
// go on with a new one.
type lostError struct{ reason string }

func (e *lostError) Error() string { return e.reason }

func lost(format string, args ...any) error { return &lostError{fmt.Sprintf(format, args...)} }

// takeOver makes l, a link from a reconnect, the one the tunnel uses,
// and counts the reconnect.
func (s *supervisor) takeOver(l *link) {
	s.c.reconnects.Add(1)
	s.adopt(l)
	s.setLink(l.dl)
	s.setCurrent(l)
	s.c.status.set(stateConnected)
}

// run serves links until ctx ends (nil), the pump stops, or a reconnect
// is refused for good.
func (s *supervisor) run(ctx context.Context, l *link) error {
	c := s.c
	for {
		next, err := s.serve(ctx, l)
		if rtt := l.conn.ConnectionStats().SmoothedRTT; rtt > 0 {
			s.lastRTT = rtt
		}
		if next != nil {
			// Make-before-break after the server's GOAWAY: the new
			// link takes over, then the old one is closed.
			old := l
			l = next
			s.takeOver(l)
			old.close("moved to a new connection after GOAWAY")
			cs := l.conn.ConnectionState()
			c.log.Info("moved to a new connection after the server's GOAWAY", "resumed", cs.TLS.DidResume, "0rtt", cs.Used0RTT, "addresses", s.state.Load().addrs)
			continue
		}
		var le *lostError
		if !errors.As(err, &le) {
			l.close("client exiting")
			return err
		}
		s.setLink(nil)
		s.setCurrent(nil)
		c.status.set(stateReconnecting)
		l.close("reconnecting: " + le.reason)
		c.log.Warn("connection lost", "reason", le.reason)
		lostAt := time.Now()
		nl, attempts, err := s.reconnect(ctx, s.state.Load().addrs)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reconnecting: %w", err)
		}
		l = nl
		s.takeOver(l)
		cs := l.conn.ConnectionState()
		c.log.Info("reconnected", "reason", le.reason, "took", time.Since(lostAt).Round(time.Millisecond),
			"attempts", attempts, "resumed", cs.TLS.DidResume, "0rtt", cs.Used0RTT, "addresses", s.state.Load().addrs)
	}
}

// setLink gives the pump its link (nil pauses it) and forgets a pause.
func (s *supervisor) setLink(dl *datagram.Link) {
	s.paused = false
	s.pump.SetLink(dl)
}

// adopt takes the routes of a new link's advertisement into the uplink
// filter (the device's routes stay as installed).
func (s *supervisor) adopt(l *link) {
	old := s.state.Load()
	routes := intersect(routesFromRanges(l.routes.Ranges), routesFromPrefixes(s.c.cfg.Routes))
	if !slices.Equal(routes.prefixes(), old.routes.prefixes()) {
		s.c.log.Info("server advertises other routes now; the device keeps its own", "routes", routes.prefixes())
	}
	s.state.Store(&clientState{addrs: old.addrs, routes: routes})
	s.noteDNS(l.dns)
}

// handoff is the outcome of the reconnect serve starts after a GOAWAY.
type handoff struct {
	l   *link
	err error
}

// serve watches one link until it is lost (a *lostError), ctx ends (nil),
// the pump stops (its error), or a new link has replaced it after the
// server's GOAWAY (next, for run to adopt and then close l).
//
// GOAWAY (RFC 9114 §5.2): the server will take no new requests on l's
// connection, so flows cannot open there (openFlow); the CONNECT-IP
// session still carries packets until the server ends it. serve clears
// the current link (new flows wait for the next one) and reconnects in
// the background (reconnect: backoff, the same addresses), while l keeps
// carrying the tunnel: make-before-break. If l is lost before the new
// link is up, the pump pauses and serve waits for that same reconnect. A
// reconnect that fails for good (a permanent error) ends the client, as
// it would after a loss.
func (s *supervisor) serve(ctx context.Context, l *link) (next *link, err error) {
	caps := make(chan error, 1)
	go func() { caps <- s.watchCapsules(l) }()
	tick := time.NewTicker(livenessInterval)
	defer tick.Stop()
	tickC := tick.C
	var changes <-chan struct{}
	if s.c.cfg.Monitor != nil {
		changes = s.c.cfg.Monitor.Changes()
	}
	connDone := l.conn.Context().Done()
	goaway := l.goingAway()
	var handoffCh chan handoff // set once GOAWAY started a reconnect
	hctx, cancelHandoff := context.WithCancel(ctx)
	defer func() {
		cancelHandoff()
		if handoffCh != nil { // still running: close what it got
			if h := <-handoffCh; h.l != nil {
				h.l.close("not needed")
			}
		}
	}()
	oldGone := false // l was lost while the handoff runs
	// loss returns err, or nil once a handoff is running (which is then
	// the reconnect): the pump pauses and l's events are ignored.
	loss := func(err error) error {
		if handoffCh == nil {
			return err
		}
		s.c.log.Warn("connection lost while moving to a new one after GOAWAY", "reason", err)
		oldGone = true
		s.pump.SetLink(nil)
		s.c.status.set(stateReconnecting)
		connDone, caps, tickC, changes = nil, nil, nil, nil
		return nil
	}
	live := liveness{}
	live.reset(time.Now(), l.conn.ConnectionStats(), s.c.stats.TxPackets.Load())
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case err := <-s.pumpDone:
			s.pumpDone <- err // for Run
			if err == nil {
				err = errors.New("the tunnel device was closed")
			}
			return nil, err
		case <-goaway:
			goaway = nil
			s.c.log.Info("the server sent GOAWAY; moving the tunnel to a new connection")
			s.setCurrent(nil) // new flows wait for the next link
			handoffCh = make(chan handoff, 1)
			want := s.state.Load().addrs
			go func() {
				nl, _, err := s.reconnect(hctx, want)
				handoffCh <- handoff{nl, err}
			}()
		case h := <-handoffCh:
			handoffCh = nil
			if h.err != nil {
				if ctx.Err() != nil {
					return nil, nil
				}
				return nil, fmt.Errorf("moving to a new connection after GOAWAY: %w", h.err)
			}
			return h.l, nil
		case <-connDone:
			if err := loss(lost("connection closed: %v", context.Cause(l.conn.Context()))); err != nil {
				return nil, err
			}
		case err := <-caps:
			if errors.Is(err, io.EOF) {
				err = lost("server closed the tunnel")
			} else {
				err = lost("tunnel stream failed: %v", err)
			}
			if err := loss(err); err != nil {
				return nil, err
			}
		case dl := <-s.linkErr:
			if dl == l.dl && !oldGone {
				if err := loss(lost("datagram path failed")); err != nil {
					return nil, err
				}
			}
		case <-changes:
			if err := s.networkChanged(ctx, l); err != nil {
				if err := loss(err); err != nil {
					return nil, err
				}
				continue
			}
			live.reset(time.Now(), l.conn.ConnectionStats(), s.c.stats.TxPackets.Load())
		case now := <-tickC:
			if s.paused {
				continue // no route: nothing can answer; the QUIC idle timeout bounds the wait
			}
			silent, stalled := live.check(now, l.conn.ConnectionStats(), s.c.stats.TxPackets.Load())
			if !stalled {
				continue
			}
			to := l.path
			if m := s.c.cfg.Monitor; m != nil {
				if local, ifindex, err := m.PathTo(l.server); err == nil {
					to = netPath{local, ifindex}
				}
			}
			// A fresh socket: the silence may be a NAT mapping that died.
			if err := s.migrate(ctx, l, fmt.Sprintf("no answer from the server for %v", silent.Round(time.Millisecond)), to, true); err != nil {
				if err := loss(err); err != nil {
					return nil, err
				}
				continue
			}
			live.reset(time.Now(), l.conn.ConnectionStats(), s.c.stats.TxPackets.Load())
		}
	}
}

// networkChanged looks at the route to the server after a network event:
// no route pauses the pump (datagrams sent into nothing would only fill
// the congestion window and stall path validation later); the same path
// resumes; a new one is migrated to.
func (s *supervisor) networkChanged(ctx context.Context, l *link) error {
	local, ifindex, err := s.c.cfg.Monitor.PathTo(l.server)
	if err != nil {
		if !s.paused {
			s.c.log.Info("no route to the server; holding tunnel traffic until the network is back", "err", err)
			s.pump.SetLink(nil)
			s.paused = true
		}
		return nil
	}
	to := netPath{local, ifindex}
	if to == l.path {
		if s.paused {
			s.c.log.Info("route to the server is back on the same path", "local", local)
			s.setLink(l.dl)
		}
		return nil
	}
	return s.migrate(ctx, l, fmt.Sprintf("network changed: local address %v -> %v", l.path.local, local), to, false)
}

// migrate moves l's connection to a socket on to.local (AddPath, Probe,
// Switch), with the pump paused while the path is probed: the socket the
// connection used on that address before unless fresh is set or there is
// none, else a new one. It returns a *lostError when the connection cannot
// move (the caller reconnects instead).
func (s *supervisor) migrate(ctx context.Context, l *link, reason string, to netPath, fresh bool) error {
	c := s.c
	start := time.Now()
	var tr *quic.Transport
	if !fresh {
		tr = l.earlierSocket(to.local)
	}
	if tr == nil {
		if n := l.socketCount(); n >= maxLinkSockets {
			return lost("%s; this connection holds %d sockets already; a new connection frees them", reason, n)
		}
		var err error
		if tr, err = c.addSocket(l, to.local); err != nil {
			return lost("%s; migration failed: %v", reason, err)
		}
	}
	path, err := l.conn.AddPath(tr)
	if err != nil {
		return lost("%s; migration failed: %v", reason, err)
	}
	s.pump.SetLink(nil)
	cs := l.conn.ConnectionStats()
	timeout := min(max(4*cs.SmoothedRTT, minProbe), maxProbe)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	err = path.Probe(pctx)
	cancel()
	if err == nil {
		err = path.Switch()
	}
	if err != nil {
		path.Close()
		if ctx.Err() != nil {
			return nil
		}
		return lost("%s; the new path did not validate within %v: %v", reason, timeout, err)
	}
	s.setLink(l.dl)
	if l.qpath != nil {
		// Abandon the previous path. Switch already retired its
		// connection ID (quic-go v0.65+; on v0.64 only Close did, and the
		// server issues only a few). Its socket stays open (see
		// addSocket).
		l.qpath.Close()
	}
	l.qpath = path
	l.tr = tr
	l.path = to
	c.migrations.Add(1)
	c.log.Info("path changed", "reason", reason, "local", tr.Conn.LocalAddr(), "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// reconnect dials until a new link carries the tunnel with the addresses
// in want, backing off with jitter between attempts and retrying at once
// when the network changes.
func (s *supervisor) reconnect(ctx context.Context, want []netip.Prefix) (*link, int, error) {
	c := s.c
	start := time.Now()
	backoff := minBackoff
	var changes <-chan struct{}
	if c.cfg.Monitor != nil {
		changes = c.cfg.Monitor.Changes()
	}
	for attempt := 1; ; attempt++ {
		timeout := min(max(minAttempt, 8*s.lastRTT), maxAttempt)
		actx, cancel := context.WithTimeout(ctx, timeout)
		l, err := c.connect(actx, want)
		cancel()
		if err == nil {
			if got := assigned(l.assign); !sameSet(got, want) {
				l.close("addresses changed")
				return nil, attempt, permanent(fmt.Errorf("the server assigned %v instead of this client's addresses %v, and the device cannot change its addresses; restart the client", got, want))
			}
			return l, attempt, nil
		}
		if ctx.Err() != nil {
			return nil, attempt, ctx.Err()
		}
		if isPermanent(err) {
			return nil, attempt, err
		}
		c.log.Debug("reconnect attempt failed", "attempt", attempt, "err", err)
		limit := maxBackoff
		if time.Since(start) > lateOutage {
			limit = maxBackoffLate
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, limit)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-changes:
			t.Stop() // the network changed: try now
		case <-ctx.Done():
			t.Stop()
			return nil, attempt, ctx.Err()
		}
	}
}

func sameSet(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			return false
		}
	}
	return true
}

// watchCapsules keeps reading the server's capsules on l. A new
// ROUTE_ADVERTISEMENT narrows or widens what the uplink lets through (the
// device's routes stay as installed); a new ADDRESS_ASSIGN that changes
// the addresses is logged (the device keeps its addresses). It returns
// when the stream ends.
func (s *supervisor) watchCapsules(l *link) error {
	for {
		t, v, err := l.rd.Next()
		if err != nil {
			return err
		}
		switch t {
		case capsule.TypeAddressAssign:
			a, err := capsule.ParseAddressAssign(v)
			if err != nil {
				return fmt.Errorf("server sent a malformed capsule: %w", err)
			}
			old := s.state.Load()
			if addrs := assigned(a); !sameSet(addrs, old.addrs) {
				s.c.log.Warn("server changed the tunnel addresses; keeping the device's", "new", addrs, "device", old.addrs)
			}
		case capsule.TypeRouteAdvertisement:
			r, err := capsule.ParseRouteAdvertisement(v)
			if err != nil {
				return fmt.Errorf("server sent a malformed capsule: %w", err)
			}
			old := s.state.Load()
			s.state.Store(&clientState{addrs: old.addrs, routes: intersect(routesFromRanges(r.Ranges), routesFromPrefixes(s.c.cfg.Routes))})
			s.c.log.Info("server updated its routes", "routes", s.state.Load().routes.prefixes())
		case capsule.TypeDNSAssign:
			d, err := capsule.ParseDNSAssign(v)
			if err != nil {
				return fmt.Errorf("server sent a malformed capsule: %w", err)
			}
			s.noteDNS(d)
		}
	}
}

// liveness notices a path that stopped answering: the client sent
// datagrams (which the server must acknowledge) but has received nothing
// for a while. An idle tunnel is never stalled; its keep-alives are
// covered by the QUIC idle timeout.
type liveness struct {
	recv     uint64    // PacketsReceived at the last check
	lastRecv time.Time // when PacketsReceived last grew
	tx       uint64    // datagrams sent when PacketsReceived last grew
	txSince  time.Time // first check that saw tx grow after lastRecv; zero if none
}

func (lv *liveness) reset(now time.Time, cs quic.ConnectionStats, tx uint64) {
	*lv = liveness{recv: cs.PacketsReceived, lastRecv: now, tx: tx}
}

// check returns how long the server has been silent and whether that
// counts as a stall.
func (lv *liveness) check(now time.Time, cs quic.ConnectionStats, tx uint64) (time.Duration, bool) {
	if cs.PacketsReceived != lv.recv {
		lv.reset(now, cs, tx)
		return 0, false
	}
	if tx == lv.tx {
		return 0, false
	}
	if lv.txSince.IsZero() {
		lv.txSince = now
		return 0, false
	}
	limit := min(max(8*cs.SmoothedRTT, minStall), maxStall)
	if now.Sub(lv.txSince) < limit {
		return 0, false
	}
	return now.Sub(lv.lastRecv), true
}
