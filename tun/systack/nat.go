package systack

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// NAT entry timeouts (see the package doc, "NAT table"). An entry ends
// when no packet of its connection has passed for:
const (
	// synTimeout: the application sent its SYN but the listener has not
	// answered (its accept backlog is full, or the SYN was lost). The
	// local answer takes microseconds; conntrack's SYN_SENT is 120 s.
	synTimeout = 30 * time.Second
	// estTimeout: the listener has answered and at most one side has
	// sent a FIN. conntrack's ESTABLISHED default (5 days): a shorter
	// one would cut idle connections kept by TCP keepalive (first probe
	// after 2 h). Both ends are this host's sockets, which always send a
	// FIN or RST when they close, so entries do not leak this way.
	estTimeout = 5 * 24 * time.Hour
	// finTimeout: both sides have sent a FIN. The last ACK or a
	// retransmitted FIN may still pass, and the listener side's socket
	// may sit in TIME_WAIT for 60 s on its NAT port: the port is not
	// reused before. conntrack's TIME_WAIT is 120 s.
	finTimeout = 60 * time.Second
	// rstTimeout: a RST passed. conntrack's CLOSE is 10 s.
	rstTimeout = 10 * time.Second
)

// Sweeps: a new entry triggers a sweep of expired entries at most every
// sweepEvery, or every fullSweepEvery while the table is full.
const (
	sweepEvery     = 10 * time.Second
	fullSweepEvery = time.Second
)

// NAT ports: each entry takes one port of [minNATPort, 65535] (not the
// listener's), the source port of its rewritten packets.
const minNATPort = 1024

// Entry states (natEntry.state bits).
const (
	stAnswered     = 1 << iota // the listener has sent a packet (its SYN-ACK)
	stAppFIN                   // the application has sent a FIN
	stLnFIN                    // the listener has sent a FIN
	stRST                      // a RST passed
	stResetWritten             // Read has written a RST of the listener's toward the application (set after the write)
)

type natEntry struct {
	t     tuple // the application's connection
	port  uint16
	state uint8
	last  int64 // natTable.now() when a packet last passed
	born  int64 // natTable.now() when the entry was made
}

// unansweredAfter is how long after its first SYN a retransmitted SYN of
// an entry the listener never answered counts as unanswered
// (natTable.unanswered): the local answer takes microseconds, and Linux
// retransmits a SYN after 1 s.
const unansweredAfter = 900 * time.Millisecond

func (e *natEntry) timeout() int64 {
	switch {
	case e.state&stRST != 0:
		return int64(rstTimeout)
	case e.state&(stAppFIN|stLnFIN) == stAppFIN|stLnFIN:
		return int64(finTimeout)
	case e.state&stAnswered == 0:
		return int64(synTimeout)
	}
	return int64(estTimeout)
}

// closing reports whether the connection has ended (both FINs or a RST):
// a SYN of the same tuple then opens a new entry.
func (e *natEntry) closing() bool {
	return e.state&stRST != 0 || e.state&(stAppFIN|stLnFIN) == stAppFIN|stLnFIN
}

// natTable maps the application's connections to NAT ports. The Stack's
// Read holds mu for a whole batch (lock, then the *Locked methods); the
// accept path takes it once per connection (lookup). Lookups by tuple are
// one map access, by port one slice index; neither allocates. A new entry
// allocates it (about 100 bytes with its map slot).
type natTable struct {
	mu        sync.Mutex
	byTuple   map[tuple]*natEntry // guarded by mu
	byPort    []*natEntry         // guarded by mu; 65536 slots, indexed by NAT port
	next      int                 // guarded by mu; next-fit cursor into byPort
	nextSweep int64               // guarded by mu
	fullSweep int64               // guarded by mu
	max       int
	skip      uint16 // the listener's port, never a NAT port

	// now is a monotonic clock in nanoseconds (time.Since an epoch taken
	// when the table was made, so testing/synctest's clock drives it).
	now func() int64

	active                   atomic.Int64
	opened, expired, dropped atomic.Uint64
	unanswered               atomic.Uint64 // SYNs retransmitted to a listener that never answered
}

func newNATTable(max int, listenerPort uint16) *natTable {
	epoch := time.Now()
	return &natTable{
		byTuple: make(map[tuple]*natEntry),
		byPort:  make([]*natEntry, 1<<16),
		next:    minNATPort,
		max:     max,
		skip:    listenerPort,
		now:     func() int64 { return int64(time.Since(epoch)) },
	}
}

// forwardLocked finds (or, for a SYN without ACK, creates) the entry of a
// packet the application sent and records its flags. It returns nil if
// the packet has no entry and is not a SYN (the caller passes it on), or
// if it is a SYN and the table is full (the caller drops it; full is then
// true).
func (t *natTable) forwardLocked(tu tuple, flags uint8, now int64) (e *natEntry, full bool) {
	syn := flags&(flagSYN|flagACK) == flagSYN
	e = t.byTuple[tu]
	if e != nil && (now-e.last > e.timeout() || (syn && e.closing())) {
		t.removeLocked(e, now-e.last > e.timeout())
		e = nil
	}
	if e == nil {
		if !syn {
			return nil, false
		}
		if e = t.insertLocked(tu, now); e == nil {
			return nil, true
		}
	}
	if syn && e.state&stAnswered == 0 && now-e.born >= int64(unansweredAfter) {
		t.unanswered.Add(1)
	}
	e.last = now
	switch {
	case flags&flagRST != 0:
		e.state |= stRST
	case flags&flagFIN != 0:
		e.state |= stAppFIN
	}
	return e, false
}

// reverseLocked finds the entry of tp, a packet the listener sent: to
// the entry's NAT port (tp's destination port), from the application's
// address to the destination's (the entry tuple's addresses, of tp's
// family). It records tp's flags and returns nil if there is no such
// entry (or it expired).
func (t *natTable) reverseLocked(tp *tcpPacket, now int64) *natEntry {
	e := t.byPort[tp.dstPort()]
	if e == nil || (e.t.v6 == 1) != tp.v6 || !tp.addrsAre(&e.t.a, &e.t.d) {
		return nil
	}
	flags := tp.flags
	if now-e.last > e.timeout() {
		t.removeLocked(e, true)
		return nil
	}
	e.last = now
	e.state |= stAnswered
	switch {
	case flags&flagRST != 0:
		e.state |= stRST
	case flags&flagFIN != 0:
		e.state |= stLnFIN
	}
	return e
}

// lookup returns the application's connection whose NAT port is port, as
// the listener's accepted connection from d:port sees it; ok is false if
// there is none.
func (t *natTable) lookup(d netip.Addr, port uint16) (app, dst netip.AddrPort, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byPort[port]
	if e == nil || t.now()-e.last > e.timeout() {
		return app, dst, false
	}
	app, dst = e.t.addrs()
	if dst.Addr() != d {
		return netip.AddrPort{}, netip.AddrPort{}, false
	}
	return app, dst, true
}

// insertLocked adds an entry for tu with a free NAT port, or returns nil
// if the table is full even after a sweep (at most one per
// fullSweepEvery); it sweeps every sweepEvery.
func (t *natTable) insertLocked(tu tuple, now int64) *natEntry {
	if now >= t.nextSweep || (len(t.byTuple) >= t.max && now >= t.fullSweep) {
		t.sweepLocked(now)
	}
	if len(t.byTuple) >= t.max {
		t.dropped.Add(1)
		return nil
	}
	// Next fit: ports are handed out in turn, so a port is reused as late
	// as possible. At most max < half the ports are taken, so the scan is
	// short on average.
	const span = 1<<16 - minNATPort
	for range span {
		p := t.next
		if t.next++; t.next > 0xffff {
			t.next = minNATPort
		}
		if uint16(p) == t.skip {
			continue
		}
		if old := t.byPort[p]; old != nil {
			if now-old.last <= old.timeout() {
				continue
			}
			t.removeLocked(old, true)
		}
		e := &natEntry{t: tu, port: uint16(p), last: now, born: now}
		t.byPort[p] = e
		t.byTuple[tu] = e
		t.active.Store(int64(len(t.byTuple)))
		t.opened.Add(1)
		return e
	}
	t.dropped.Add(1)
	return nil
}

// removeLocked deletes e; expired says whether it timed out (counted).
func (t *natTable) removeLocked(e *natEntry, expired bool) {
	if t.byTuple[e.t] == e {
		delete(t.byTuple, e.t)
	}
	if t.byPort[e.port] == e {
		t.byPort[e.port] = nil
	}
	t.active.Store(int64(len(t.byTuple)))
	if expired {
		t.expired.Add(1)
	}
}

// sweepLocked removes the expired entries: O(entries).
func (t *natTable) sweepLocked(now int64) {
	for _, e := range t.byTuple {
		if now-e.last > e.timeout() {
			t.removeLocked(e, true)
		}
	}
	t.nextSweep = now + int64(sweepEvery)
	t.fullSweep = now + int64(fullSweepEvery)
}
