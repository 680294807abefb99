package flowstack

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/roamvpn/roam/datagram"
)

// DefaultMaxInbound is the default of Config.MaxInbound.
const DefaultMaxInbound = 65536

// Inbound connection timeouts (see the package doc, "Inbound TCP"). An
// entry ends when no packet of its connection has passed for:
const (
	// inboundSynTimeout: only the peer has sent (its SYN, perhaps
	// retransmitted); the host's SYN-ACK or RST comes at once if it
	// comes at all. conntrack's SYN_RECV is 60 s.
	inboundSynTimeout = 30 * time.Second
	// inboundEstTimeout: both sides have sent and at most one has sent a
	// FIN. conntrack's ESTABLISHED default (nf_conntrack_tcp_timeout_
	// established, 5 days): a shorter one would reset idle connections
	// that rely on TCP keepalive, whose first probe comes after 2 h.
	inboundEstTimeout = 5 * 24 * time.Hour
	// inboundCloseLinger: both sides have sent a FIN. The host's last ACK
	// or a retransmitted FIN may still have to pass; 60 s is Linux's
	// TIME_WAIT (conntrack's is 120 s).
	inboundCloseLinger = 60 * time.Second
)

// Sweeps of the inbound table: a new entry triggers a sweep of expired
// entries at most every sweepEvery, or every fullSweepEvery while the
// table is full.
const (
	sweepEvery     = 10 * time.Second
	fullSweepEvery = time.Second
)

// TCP header flags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// connKey identifies an inbound connection as the host sends it: host is
// the host's address (the SYN's destination), peer the tunnel side's (the
// SYN's source). IPv4 addresses fill the first 4 bytes; v6 keeps them apart
// from IPv6 addresses. It has no padding, so the map hashes it as one block
// of memory, and its 40 bytes copy without overlapping moves.
type connKey struct {
	host, peer         [16]byte
	hostPort, peerPort uint16
	v6                 uint32 // 1 for IPv6
}

// maybeTCP reports whether pkt may be a TCP packet, looking only at its
// first header: the cheap test that spares the decoding of the others.
func maybeTCP(pkt []byte) bool {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		return pkt[9] == protoTCP
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		switch pkt[6] {
		case 17, protoICMPv6, 59: // UDP, ICMPv6, no next header
			return false
		}
	}
	return true
}

// tcpHeader returns the fixed TCP header of the decoded TCP packet pkt
// (pkt[:p.Len]), or nil for a packet without one: a non-initial fragment
// or a truncated packet.
func tcpHeader(pkt []byte, p *datagram.Packet) []byte {
	if p.FragOffset != 0 || p.HdrLen+20 > p.Len {
		return nil
	}
	return pkt[p.HdrLen : p.HdrLen+20]
}

// tcpKey returns the connKey of the decoded TCP packet pkt whose TCP
// header is th (from tcpHeader); fromHost says which way it goes (host ->
// tunnel, as Read sees it, or tunnel -> host, as Write sees it).
func tcpKey(pkt []byte, p *datagram.Packet, th []byte, fromHost bool) (k connKey) {
	th = th[:4]
	src, dst := uint16(th[0])<<8|uint16(th[1]), uint16(th[2])<<8|uint16(th[3])
	if fromHost {
		k.hostPort, k.peerPort = src, dst
	} else {
		k.hostPort, k.peerPort = dst, src
	}
	// Fixed-size copies: no calls to memmove.
	h, q := &k.host, &k.peer
	if !fromHost {
		h, q = q, h
	}
	if p.Version == 4 {
		*(*[4]byte)(h[:4]) = [4]byte(pkt[12:16])
		*(*[4]byte)(q[:4]) = [4]byte(pkt[16:20])
		return k
	}
	*h, *q = [16]byte(pkt[8:24]), [16]byte(pkt[24:40])
	k.v6 = 1
	return k
}

// addrs returns the key's host and peer addresses.
func (k connKey) addrs() (host, peer netip.AddrPort) {
	if k.v6 == 0 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(k.host[:4])), k.hostPort),
			netip.AddrPortFrom(netip.AddrFrom4([4]byte(k.peer[:4])), k.peerPort)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(k.host), k.hostPort),
		netip.AddrPortFrom(netip.AddrFrom16(k.peer), k.peerPort)
}

// keyOf returns the connKey of the connection from peer to host (same
// family).
func keyOf(host, peer netip.AddrPort) connKey {
	k := connKey{hostPort: host.Port(), peerPort: peer.Port()}
	if host.Addr().Is4() {
		h, p := host.Addr().As4(), peer.Addr().As4()
		copy(k.host[:], h[:])
		copy(k.peer[:], p[:])
		return k
	}
	k.host, k.peer, k.v6 = host.Addr().As16(), peer.Addr().As16(), 1
	return k
}

// Entry states (connEntry.state bits).
const (
	hostSeen = 1 << iota // the host has sent a packet (its SYN-ACK)
	hostFIN              // the host has sent a FIN
	peerFIN              // the peer has sent a FIN
)

type connEntry struct {
	last  int64 // connTable.now() when a packet last passed
	state uint8
}

// timeout returns how long e may stay idle.
func (e *connEntry) timeout() int64 {
	switch {
	case e.state&(hostFIN|peerFIN) == hostFIN|peerFIN:
		return int64(inboundCloseLinger)
	case e.state&hostSeen == 0:
		return int64(inboundSynTimeout)
	}
	return int64(inboundEstTimeout)
}

// connTable tracks the TCP connections opened toward the host from the
// tunnel, so that Read passes their packets through instead of diverting
// them into gVisor. Lookups do not allocate; a new connection allocates
// its entry. A packet whose host port no entry has (every packet of a
// flow, whose host port is ephemeral, while inbound connections go to
// listening ports) is told apart without taking mu, by a bitmap of the
// entries' host ports: such a lookup costs under 10 ns, one under mu about
// 60 ns (BenchmarkConnTable). An entry takes about 160 bytes.
type connTable struct {
	mu        sync.Mutex
	m         map[connKey]*connEntry // guarded by mu
	portRefs  map[uint16]int         // guarded by mu: entries per host port
	nextSweep int64                  // guarded by mu: now() of the next periodic sweep
	fullSweep int64                  // guarded by mu: earliest now() of a sweep because the table is full
	n         atomic.Int64           // len(m), for the lock-free empty check
	ports     [1024]atomic.Uint64    // bit p set iff portRefs[p] > 0 (8 KiB)
	max       int

	// now is a monotonic clock in nanoseconds; tests replace it.
	now func() int64

	tracked, closed, expired, dropped, packets atomic.Uint64
}

func newConnTable(max int) *connTable {
	epoch := time.Now()
	return &connTable{
		m:        make(map[connKey]*connEntry),
		portRefs: make(map[uint16]int),
		max:      max,
		now:      func() int64 { return int64(time.Since(epoch)) },
	}
}

// clock reads connTable.now at most once per batch of packets: all the
// packets of a batch get the same time.
type clock struct {
	t   *connTable
	ns  int64
	set bool
}

func (c *clock) now() int64 {
	if !c.set {
		c.ns, c.set = c.t.now(), true
	}
	return c.ns
}

// fromHost looks up a TCP packet the host sent (Read) and reports whether
// it belongs to a tracked inbound connection, updating the entry: a RST
// ends it, a FIN is recorded. The packet then passes through. now is the
// batch's clock.
func (t *connTable) fromHost(pkt []byte, p *datagram.Packet, now *clock) bool {
	if t.n.Load() == 0 {
		return false
	}
	th := tcpHeader(pkt, p)
	if th == nil || !t.hasPort(uint16(th[0])<<8|uint16(th[1])) {
		return false
	}
	k, flags := tcpKey(pkt, p, th, true), th[13]
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.lookupLocked(k, now)
	if e == nil {
		return false
	}
	t.packets.Add(1)
	if flags&flagRST != 0 {
		t.deleteLocked(k, &t.closed)
		return true
	}
	e.state |= hostSeen
	if flags&flagFIN != 0 {
		e.state |= hostFIN
	}
	return true
}

// fromTunnel records a TCP packet from the tunnel (Write): a SYN without
// ACK opens an entry, other packets update theirs (RST ends it, FIN is
// recorded). inUse reports whether the host side of a SYN's connection is
// already a gVisor flow; it is called without t.mu held. fromTunnel
// returns false if the packet must be dropped: a SYN that finds the table
// full or its connection in use by a flow. now is the batch's clock.
func (t *connTable) fromTunnel(pkt []byte, p *datagram.Packet, now *clock, inUse func(connKey) bool) bool {
	th := tcpHeader(pkt, p)
	if th == nil {
		return true
	}
	flags := th[13]
	syn := flags&(flagSYN|flagACK) == flagSYN
	if !syn && (t.n.Load() == 0 || !t.hasPort(uint16(th[2])<<8|uint16(th[3]))) {
		return true
	}
	k := tcpKey(pkt, p, th, false)
	if syn && inUse(k) {
		t.dropped.Add(1)
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.lookupLocked(k, now)
	switch {
	case e == nil && !syn:
		return true
	case e == nil:
		return t.insertLocked(k, now.now())
	case flags&flagRST != 0:
		t.deleteLocked(k, &t.closed)
	case syn:
		if e.state&(hostFIN|peerFIN) == hostFIN|peerFIN {
			e.state = 0 // the peer reuses the 4-tuple of a closed connection
		}
	case flags&flagFIN != 0:
		e.state |= peerFIN
	}
	return true
}

// lookupLocked returns k's entry, refreshed, or nil if there is none or it
// has expired (then it is removed).
func (t *connTable) lookupLocked(k connKey, c *clock) *connEntry {
	e := t.m[k]
	if e == nil {
		return nil
	}
	now := c.now()
	if now-e.last > e.timeout() {
		t.expireLocked(k, e)
		return nil
	}
	e.last = now
	return e
}

// insertLocked adds an entry for k unless the table is full even after a
// sweep (at most one per fullSweepEvery); it sweeps every sweepEvery.
func (t *connTable) insertLocked(k connKey, now int64) bool {
	if now >= t.nextSweep || (len(t.m) >= t.max && now >= t.fullSweep) {
		t.sweepLocked(now)
	}
	if len(t.m) >= t.max {
		t.dropped.Add(1)
		return false
	}
	t.m[k] = &connEntry{last: now}
	t.n.Store(int64(len(t.m)))
	if t.portRefs[k.hostPort]++; t.portRefs[k.hostPort] == 1 {
		t.ports[k.hostPort/64].Or(1 << (k.hostPort % 64))
	}
	t.tracked.Add(1)
	return true
}

func (t *connTable) deleteLocked(k connKey, counter *atomic.Uint64) {
	delete(t.m, k)
	t.n.Store(int64(len(t.m)))
	if t.portRefs[k.hostPort]--; t.portRefs[k.hostPort] == 0 {
		delete(t.portRefs, k.hostPort)
		t.ports[k.hostPort/64].And(^uint64(1 << (k.hostPort % 64)))
	}
	counter.Add(1)
}

// expireLocked removes an entry that timed out: one that was closing
// counts as closed, others as expired.
func (t *connTable) expireLocked(k connKey, e *connEntry) {
	if e.state&(hostFIN|peerFIN) == hostFIN|peerFIN {
		t.deleteLocked(k, &t.closed)
		return
	}
	t.deleteLocked(k, &t.expired)
}

// sweepLocked removes the expired entries: O(entries), about 2.5 ms for a
// full table of 65536 (7 ms if it removes them all), during which the
// packets that need mu wait.
func (t *connTable) sweepLocked(now int64) {
	for k, e := range t.m {
		if now-e.last > e.timeout() {
			t.expireLocked(k, e)
		}
	}
	t.nextSweep = now + int64(sweepEvery)
	t.fullSweep = now + int64(fullSweepEvery)
}

// sweep removes the expired entries now.
func (t *connTable) sweep() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(t.now())
}

// hasPort reports whether an entry may have host port port.
func (t *connTable) hasPort(port uint16) bool {
	return t.ports[port/64].Load()&(1<<(port%64)) != 0
}

// len returns the number of entries (expired ones included until swept).
func (t *connTable) len() int64 { return t.n.Load() }

// flowInUse reports whether the connection k names is, from the host's
// side, one of the Stack's flows: a gVisor endpoint (connecting,
// established or in TIME_WAIT) or a SYN waiting for Connect. An inbound
// SYN for it would otherwise steal the flow's packets from gVisor.
func (s *Stack) flowInUse(k connKey) bool {
	host, peer := k.addrs()
	if s.syns.has(synKey{src: host, dst: peer}) {
		return true
	}
	id := stack.TransportEndpointID{
		LocalPort:     peer.Port(),
		LocalAddress:  tcpip.AddrFromSlice(peer.Addr().AsSlice()),
		RemotePort:    host.Port(),
		RemoteAddress: tcpip.AddrFromSlice(host.Addr().AsSlice()),
	}
	proto := ipv4.ProtocolNumber
	if k.v6 != 0 {
		proto = ipv6.ProtocolNumber
	}
	return s.st.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID) != nil
}
