// Package addrpool leases tunnel addresses out of one IPv4 or IPv6 prefix.
//
// A [Pool] hands each session an address of its prefix. The first address
// after the network address is the gateway (the server's own tunnel
// address); every other address except the network address and, for IPv4,
// the broadcast address is leasable. Leases belong to an owner, an opaque
// string (Roam uses the token ID): an owner gets its previous address back
// when it is free, may take over an address it already holds from an older
// session, and only the current owner can release a lease.
//
// Memory: IPv4 pools and IPv6 pools of up to 2^24 addresses keep a bitmap
// (one bit per address, 2 MiB for a /8) to find free addresses quickly;
// larger IPv6 pools keep only the leased addresses in a map and allocate
// with a rotating cursor. For IPv6 prefixes shorter than /64, Allocate
// picks addresses from the first 2^64 of the prefix; Request accepts any.
package addrpool

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"
	"time"
)

// Errors returned by Allocate and Request; match them with errors.Is.
var (
	// ErrExhausted: every leasable address is leased.
	ErrExhausted = errors.New("addrpool: no free address")
	// ErrInUse: the address is leased to another owner.
	ErrInUse = errors.New("addrpool: address leased to another owner")
	// ErrOutside: the address is not in the pool's prefix.
	ErrOutside = errors.New("addrpool: address outside the pool")
	// ErrReserved: the address is the network, gateway or broadcast address.
	ErrReserved = errors.New("addrpool: address is reserved")
)

// RememberOwners is how many released leases a Pool remembers (the most
// recent per owner) so [Pool.Allocate] can give an owner its last address.
const RememberOwners = 4096

// bitmapMaxBits: spaces of up to 2^24 addresses get a bitmap.
const bitmapMaxBits = 24

// Pool leases the addresses of one prefix. It is safe for concurrent use.
// The zero value is not usable; call [New].
type Pool struct {
	prefix  netip.Prefix
	gateway netip.Addr
	is4     bool
	netHi   uint64 // network address as two halves (IPv4: netLo only)
	netLo   uint64
	first   uint64 // lowest leasable offset (2: after network and gateway)
	last    uint64 // highest offset Allocate hands out
	space   uint64 // number of offsets in [first, last]

	mu      sync.Mutex
	leases  map[netip.Addr]*lease    // guarded by mu; every leased address, grace included
	inSpace uint64                   // guarded by mu; leases with an offset in [first, last]
	used    []uint64                 // guarded by mu; bitmap by offset, nil for large pools
	cursor  uint64                   // guarded by mu; next offset Allocate tries
	grace   map[string][]*lease      // guarded by mu; owner -> leases waiting in ReleaseAfter
	recent  map[string]*list.Element // guarded by mu; owner -> element of lru
	lru     list.List                // guarded by mu; of *remembered, most recent first
}

type lease struct {
	addr  netip.Addr
	owner string
	timer *time.Timer // non-nil while in a ReleaseAfter grace period
}

type remembered struct {
	owner string
	addr  netip.Addr
}

// New returns a pool for prefix. The prefix must be a plain IPv4 or IPv6
// prefix with its host bits zero, leaving room for the gateway and at least
// one client: /30 or shorter for IPv4, /126 or shorter for IPv6.
func New(prefix netip.Prefix) (*Pool, error) {
	const form = "want a network prefix such as 100.96.0.0/16 or fd00:96::/64"
	switch {
	case !prefix.IsValid():
		return nil, fmt.Errorf("addrpool: invalid prefix %v: %s", prefix, form)
	case prefix.Addr().Is4In6():
		return nil, fmt.Errorf("addrpool: prefix %v is IPv4-mapped IPv6: %s", prefix, form)
	case prefix.Masked() != prefix:
		return nil, fmt.Errorf("addrpool: prefix %v has host bits set: want %v", prefix, prefix.Masked())
	case prefix.Addr().BitLen()-prefix.Bits() < 2:
		return nil, fmt.Errorf("addrpool: prefix %v leaves no address for a client: want /%d or shorter", prefix, prefix.Addr().BitLen()-2)
	}
	p := &Pool{
		prefix:  prefix,
		gateway: prefix.Addr().Next(),
		is4:     prefix.Addr().Is4(),
		first:   2,
		leases:  make(map[netip.Addr]*lease),
		grace:   make(map[string][]*lease),
		recent:  make(map[string]*list.Element),
	}
	p.netHi, p.netLo = halves(prefix.Addr())
	host := prefix.Addr().BitLen() - prefix.Bits()
	if host >= 64 {
		p.last = ^uint64(0)
	} else {
		p.last = 1<<host - 1
	}
	if p.is4 {
		p.last-- // broadcast
	}
	p.space = p.last - p.first + 1
	p.cursor = p.first
	if host <= bitmapMaxBits {
		p.used = make([]uint64, (p.last+1+63)/64)
		// mark network and gateway, and the offsets after last, as used so
		// the scan never returns them
		p.used[0] |= 3
		for off := p.last + 1; off < uint64(len(p.used))*64; off++ {
			p.used[off/64] |= 1 << (off % 64)
		}
	}
	return p, nil
}

// Prefix returns the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway returns the first address after the network address, which the
// pool never leases.
func (p *Pool) Gateway() netip.Addr { return p.gateway }

// Leased returns the number of leased addresses, including those in a
// ReleaseAfter grace period.
func (p *Pool) Leased() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.leases)
}

// Allocate leases a free address to owner. In order of preference it
// returns: an address owner holds in a [Pool.ReleaseAfter] grace period
// (the grace period ends, the lease continues); the address owner released
// most recently, if it is free; the next free address after the previous
// allocation. It returns [ErrExhausted] when no address is free.
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if gs := p.grace[owner]; len(gs) > 0 {
		l := gs[len(gs)-1]
		p.endGraceLocked(l)
		return l.addr, nil
	}
	if e, ok := p.recent[owner]; ok {
		a := e.Value.(*remembered).addr
		p.forgetLocked(owner)
		if _, taken := p.leases[a]; !taken {
			p.leaseLocked(a, owner)
			return a, nil
		}
	}
	off, ok := p.findFreeLocked()
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w in %v (%d leased)", ErrExhausted, p.prefix, len(p.leases))
	}
	p.cursor = off + 1
	if off == p.last {
		p.cursor = p.first
	}
	a := p.addrAt(off)
	p.leaseLocked(a, owner)
	return a, nil
}

// Request leases the specific address addr to owner. It succeeds if addr is
// free, or already leased to owner: then takeover reports whether that lease
// was held by a live session (one not in a ReleaseAfter grace period), which
// the caller should now end, as the lease moves to the new session. It
// fails with [ErrOutside], [ErrReserved] or [ErrInUse] (leased to another
// owner).
func (p *Pool) Request(addr netip.Addr, owner string) (takeover bool, err error) {
	if !p.prefix.Contains(addr) {
		return false, fmt.Errorf("%w: %v is not in %v", ErrOutside, addr, p.prefix)
	}
	if reason := p.reserved(addr); reason != "" {
		return false, fmt.Errorf("%w: %v is the %s of %v", ErrReserved, addr, reason, p.prefix)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.leases[addr]; ok {
		if l.owner != owner {
			return false, fmt.Errorf("%w: %v", ErrInUse, addr)
		}
		if l.timer != nil {
			p.endGraceLocked(l)
			return false, nil
		}
		return true, nil
	}
	p.leaseLocked(addr, owner)
	return false, nil
}

// Release ends owner's lease of addr now. It does nothing if addr is not
// leased to owner, so a stale session cannot free an address that has
// moved to another session or owner. A lease in a grace period is released
// at once. The pool remembers addr as owner's last address.
func (p *Pool) Release(addr netip.Addr, owner string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.leases[addr]; ok && l.owner == owner {
		p.releaseLocked(l)
	}
}

// ReleaseAfter releases owner's lease of addr after d, unless owner claims
// it again first through Allocate or Request (which end the grace period)
// or releases it with Release. Until then the address stays leased to
// owner. It does nothing if addr is not leased to owner. If d <= 0 it is
// Release. Calling it again on a lease already in grace restarts the
// period with the new d (and the new expired).
//
// expired, if not nil, is called when the grace period runs out, just
// before the lease is released, on the timer's goroutine with the pool
// locked: it must be quick and must not call the Pool. It is the place to
// end state tied to the address (connections through a NAT) before the
// address can go to another owner.
//
// The grace period runs on a time.AfterFunc timer; there is nothing to
// close: a pool that is dropped simply lets its timers fire.
func (p *Pool) ReleaseAfter(addr netip.Addr, owner string, d time.Duration, expired func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.leases[addr]
	if !ok || l.owner != owner {
		return
	}
	if d <= 0 {
		p.releaseLocked(l)
		return
	}
	if l.timer != nil {
		p.endGraceLocked(l)
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		// Only if this very grace period is still running: the lease may
		// have been reclaimed, released, or put in a new grace period.
		if l.timer == t && p.leases[l.addr] == l {
			if expired != nil {
				expired()
			}
			p.releaseLocked(l)
		}
	})
	l.timer = t
	p.grace[owner] = append(p.grace[owner], l)
}

// leaseLocked records a new lease of a free address.
func (p *Pool) leaseLocked(a netip.Addr, owner string) {
	p.leases[a] = &lease{addr: a, owner: owner}
	if off, ok := p.offset(a); ok {
		p.inSpace++
		if p.used != nil {
			p.used[off/64] |= 1 << (off % 64)
		}
	}
}

// releaseLocked ends lease l and remembers its address for the owner.
func (p *Pool) releaseLocked(l *lease) {
	if l.timer != nil {
		p.endGraceLocked(l)
	}
	delete(p.leases, l.addr)
	if off, ok := p.offset(l.addr); ok {
		p.inSpace--
		if p.used != nil {
			p.used[off/64] &^= 1 << (off % 64)
		}
	}
	p.rememberLocked(l.owner, l.addr)
}

// endGraceLocked stops l's grace period; the lease continues.
func (p *Pool) endGraceLocked(l *lease) {
	l.timer.Stop()
	l.timer = nil
	gs := p.grace[l.owner]
	for i, g := range gs {
		if g == l {
			gs = append(gs[:i], gs[i+1:]...)
			break
		}
	}
	if len(gs) == 0 {
		delete(p.grace, l.owner)
	} else {
		p.grace[l.owner] = gs
	}
}

func (p *Pool) rememberLocked(owner string, a netip.Addr) {
	if e, ok := p.recent[owner]; ok {
		e.Value.(*remembered).addr = a
		p.lru.MoveToFront(e)
		return
	}
	p.recent[owner] = p.lru.PushFront(&remembered{owner: owner, addr: a})
	if p.lru.Len() > RememberOwners {
		old := p.lru.Back()
		p.lru.Remove(old)
		delete(p.recent, old.Value.(*remembered).owner)
	}
}

func (p *Pool) forgetLocked(owner string) {
	if e, ok := p.recent[owner]; ok {
		p.lru.Remove(e)
		delete(p.recent, owner)
	}
}

// findFreeLocked returns the first free offset at or after the cursor,
// wrapping around, or false if every offset in [first, last] is leased.
func (p *Pool) findFreeLocked() (uint64, bool) {
	if p.inSpace >= p.space {
		return 0, false
	}
	if p.used != nil {
		return p.scanBitmapLocked()
	}
	// Not full, so this ends; with a rotating cursor over a large space it
	// almost always ends at the first try.
	for off := p.cursor; ; {
		if _, taken := p.leases[p.addrAt(off)]; !taken {
			return off, true
		}
		if off == p.last {
			off = p.first
		} else {
			off++
		}
	}
}

func (p *Pool) scanBitmapLocked() (uint64, bool) {
	n := uint64(len(p.used))
	w := p.cursor / 64
	// bits below the cursor in its word count as used on the first pass
	free := ^p.used[w] &^ (1<<(p.cursor%64) - 1)
	for i := uint64(0); i <= n; i++ {
		if free != 0 {
			return w*64 + uint64(bits.TrailingZeros64(free)), true
		}
		w = (w + 1) % n
		free = ^p.used[w]
	}
	return 0, false // unreachable while inSpace < space
}

// reserved names the role of a non-leasable address of the prefix, or "".
func (p *Pool) reserved(a netip.Addr) string {
	switch {
	case a == p.prefix.Addr():
		return "network address"
	case a == p.gateway:
		return "gateway"
	case p.is4 && a == p.addrAt(p.last+1):
		return "broadcast address"
	}
	return ""
}

// offset returns a's offset from the network address if it lies in
// [first, last]. a must be in the prefix.
func (p *Pool) offset(a netip.Addr) (uint64, bool) {
	hi, lo := halves(a)
	if hi != p.netHi {
		return 0, false
	}
	off := lo - p.netLo
	return off, off >= p.first && off <= p.last
}

// addrAt returns the address at offset off (off < 2^64; the addition never
// carries out of the low half because the prefix's host bits are zero).
func (p *Pool) addrAt(off uint64) netip.Addr {
	if p.is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(p.netLo+off))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], p.netHi)
	binary.BigEndian.PutUint64(b[8:], p.netLo+off)
	return netip.AddrFrom16(b)
}

func halves(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return 0, uint64(binary.BigEndian.Uint32(b[:]))
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}
