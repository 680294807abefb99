package usernat

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

// icmpConn is the part of x/net's *icmp.PacketConn the proxy uses (tests
// substitute other sockets).
type icmpConn interface {
	ReadFrom(b []byte) (int, net.Addr, error)
	WriteTo(b []byte, dst net.Addr) (int, error)
	SetReadDeadline(t time.Time) error
	Close() error
}

// listenICMP opens a host ICMP socket with x/net/icmp.
func listenICMP(network, address string) (icmpConn, error) {
	c, err := icmp.ListenPacket(network, address)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// maxEchoFlows bounds the ICMP echo mappings of one address family (each is
// a host socket and a goroutine in ping-socket mode).
const maxEchoFlows = 1024

// echoMode is how an echoProxy reaches the host's ICMP.
type echoMode uint8

const (
	echoUnknown echoMode = iota // not tried yet
	echoPing                    // unprivileged ping sockets, one per mapping
	echoRaw                     // one raw ICMP socket, identifiers remapped
	echoNone                    // neither works: echo requests are dropped
)

func (m echoMode) String() string {
	switch m {
	case echoPing:
		return "ping socket"
	case echoRaw:
		return "raw socket"
	case echoNone:
		return "none"
	}
	return "unknown"
}

// echoKey identifies one client's echo "session": the client address, the
// identifier its ping uses and the destination.
type echoKey struct {
	client netip.Addr
	dst    netip.Addr
	id     uint16
}

// echoFlow is one mapping from an echoKey to the host.
type echoFlow struct {
	key    echoKey
	hostID uint16       // raw mode: identifier used on the host
	conn   icmpConn     // ping mode: this mapping's socket
	last   atomic.Int64 // monotonic nanoseconds of the last request
}

// echoProxy re-originates ICMP echo requests of one address family from a
// host ICMP socket and turns the replies back into IP packets for the client.
//
// It first tries an unprivileged ping socket (Linux: needs the process's group
// in net.ipv4.ping_group_range, which also covers IPv6), where the kernel
// assigns the identifier and hands each socket only its own replies; it falls
// back to a raw socket (needs CAP_NET_RAW), where one socket sees every echo
// reply and identifiers are allocated and mapped here. If neither can be
// opened, echo requests are dropped and counted and that is logged once.
type echoProxy struct {
	v6      bool
	idle    time.Duration
	mtu     int
	epoch   time.Time
	log     *slog.Logger
	deliver func(pkt []byte) bool // queues a reply packet for Stack.Read
	// listen opens a host ICMP socket; icmp.ListenPacket unless a test
	// replaced it.
	listen func(network, address string) (icmpConn, error)
	// forceMode, if not echoUnknown, skips probing (tests).
	forceMode echoMode

	sent, replies, drops *atomic.Uint64

	mu      sync.Mutex
	mode    echoMode              // guarded by mu
	closed  bool                  // guarded by mu
	flows   map[echoKey]*echoFlow // guarded by mu
	byID    map[uint16]*echoFlow  // guarded by mu; raw mode
	nextID  uint16                // guarded by mu; raw mode
	raw     icmpConn              // guarded by mu; raw mode
	scratch []byte                // guarded by mu; request being sent
	wg      sync.WaitGroup        // reader goroutines
}

func newEchoProxy(v6 bool, idle time.Duration, mtu int, log *slog.Logger, deliver func([]byte) bool, sent, replies, drops *atomic.Uint64) *echoProxy {
	return &echoProxy{
		v6:      v6,
		idle:    idle,
		mtu:     mtu,
		epoch:   time.Now(),
		log:     log,
		deliver: deliver,
		listen:  listenICMP,
		sent:    sent,
		replies: replies,
		drops:   drops,
		flows:   make(map[echoKey]*echoFlow),
		byID:    make(map[uint16]*echoFlow),
	}
}

func (p *echoProxy) now() int64 { return int64(time.Since(p.epoch)) }

func (p *echoProxy) networks() (ping, raw, any string) {
	if p.v6 {
		return "udp6", "ip6:ipv6-icmp", "::"
	}
	return "udp4", "ip4:icmp", "0.0.0.0"
}

// send re-originates one echo request (ICMP header fields id and seq, data =
// everything after the 8-byte ICMP header) from client to dst. It never
// blocks for long: the host socket write is a datagram send. Failures are
// counted in drops.
func (p *echoProxy) send(client, dst netip.Addr, id, seq uint16, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.drops.Add(1)
		return
	}
	if p.mode == echoUnknown {
		p.chooseModeLocked()
	}
	key := echoKey{client: client, dst: dst, id: id}
	var err error
	switch p.mode {
	case echoPing:
		err = p.sendPingLocked(key, seq, data)
	case echoRaw:
		err = p.sendRawLocked(key, seq, data)
	default:
		err = errNoICMPSocket
	}
	if err != nil {
		p.drops.Add(1)
		return
	}
	p.sent.Add(1)
}

var (
	errNoICMPSocket  = errors.New("no ICMP socket available")
	errTooManyEchoes = errors.New("too many ICMP echo mappings")
)

// chooseModeLocked probes which kind of ICMP socket this process may open.
func (p *echoProxy) chooseModeLocked() {
	if p.forceMode != echoUnknown {
		p.mode = p.forceMode
	} else {
		pingNet, rawNet, any := p.networks()
		c, perr := p.listen(pingNet, any)
		if perr == nil {
			c.Close()
			p.mode = echoPing
		} else {
			c, rerr := p.listen(rawNet, any)
			if rerr == nil {
				c.Close()
				p.mode = echoRaw
			} else {
				p.mode = echoNone
				p.log.Warn("ICMP echo to remote addresses disabled: neither a ping socket nor a raw socket can be opened",
					"family", p.family(), "ping_error", perr, "raw_error", rerr,
					"hint", "allow ping sockets (sysctl net.ipv4.ping_group_range) or grant CAP_NET_RAW")
				return
			}
		}
	}
	p.log.Info("ICMP echo proxy ready", "family", p.family(), "mode", p.mode.String())
}

func (p *echoProxy) family() string {
	if p.v6 {
		return "ipv6"
	}
	return "ipv4"
}

// requestLocked builds the echo request message in p.scratch.
func (p *echoProxy) requestLocked(id, seq uint16, data []byte) []byte {
	n := 8 + len(data)
	if cap(p.scratch) < n {
		p.scratch = make([]byte, n, max(n, 1500))
	}
	m := p.scratch[:n]
	if p.v6 {
		m[0] = icmpv6Echo
	} else {
		m[0] = icmpv4Echo
	}
	m[1] = 0
	m[2], m[3] = 0, 0
	binary.BigEndian.PutUint16(m[4:6], id)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], data)
	if !p.v6 {
		// The kernel fills in ICMPv6 checksums (it knows the source
		// address); an IPv4 raw socket sends what it is given.
		binary.BigEndian.PutUint16(m[2:4], fold(sum16(0, m)))
	}
	return m
}

func (p *echoProxy) sendPingLocked(key echoKey, seq uint16, data []byte) error {
	f := p.flows[key]
	if f == nil {
		if len(p.flows) >= maxEchoFlows {
			return errTooManyEchoes
		}
		pingNet, _, any := p.networks()
		c, err := p.listen(pingNet, any)
		if err != nil {
			return err
		}
		f = &echoFlow{key: key, conn: c}
		f.last.Store(p.now())
		p.flows[key] = f
		p.wg.Add(1)
		go p.pingReader(f)
	}
	f.last.Store(p.now())
	// The kernel replaces the identifier with the socket's own.
	_, err := f.conn.WriteTo(p.requestLocked(0, seq, data), &net.UDPAddr{IP: key.dst.AsSlice()})
	return err
}

// pingReader is the goroutine of one ping-socket mapping: it turns replies
// into packets for the client and closes the mapping when it has been idle.
func (p *echoProxy) pingReader(f *echoFlow) {
	defer p.wg.Done()
	defer f.conn.Close()
	buf := make([]byte, p.mtu+1)
	for {
		deadline := p.epoch.Add(time.Duration(f.last.Load()) + p.idle)
		f.conn.SetReadDeadline(deadline)
		n, peer, err := f.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if p.expirePing(f) {
					return
				}
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors queued on the socket (unreachable, ...).
			continue
		}
		ua, ok := peer.(*net.UDPAddr)
		if !ok {
			continue
		}
		src, _ := netip.AddrFromSlice(ua.IP)
		p.reply(f, src.Unmap(), buf[:n], n == len(buf))
	}
}

func (p *echoProxy) sendRawLocked(key echoKey, seq uint16, data []byte) error {
	if p.raw == nil {
		_, rawNet, any := p.networks()
		c, err := p.listen(rawNet, any)
		if err != nil {
			return err
		}
		p.raw = c
		p.filterRaw(c)
		p.wg.Add(1)
		go p.rawReader(c)
	}
	f := p.flows[key]
	if f == nil {
		if len(p.flows) >= maxEchoFlows {
			return errTooManyEchoes
		}
		// Pick an identifier no live mapping uses.
		for {
			p.nextID++
			if _, used := p.byID[p.nextID]; !used {
				break
			}
		}
		f = &echoFlow{key: key, hostID: p.nextID}
		p.flows[key] = f
		p.byID[f.hostID] = f
	}
	f.last.Store(p.now())
	_, err := p.raw.WriteTo(p.requestLocked(f.hostID, seq, data), &net.IPAddr{IP: key.dst.AsSlice()})
	return err
}

// rawReader is the goroutine reading the shared raw socket. It also expires
// idle mappings.
func (p *echoProxy) rawReader(c icmpConn) {
	defer p.wg.Done()
	buf := make([]byte, 65536)
	sweep := max(p.idle/2, time.Second)
	nextSweep := time.Now().Add(sweep)
	for {
		c.SetReadDeadline(nextSweep)
		n, peer, err := c.ReadFrom(buf)
		if time.Now().After(nextSweep) {
			p.expireRaw()
			nextSweep = time.Now().Add(sweep)
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m := buf[:n]
		if n < 8 || !p.isReply(m) {
			continue // echo requests and errors also arrive here
		}
		ia, ok := peer.(*net.IPAddr)
		if !ok {
			continue
		}
		src, _ := netip.AddrFromSlice(ia.IP)
		id := binary.BigEndian.Uint16(m[4:6])
		p.mu.Lock()
		f := p.byID[id]
		p.mu.Unlock()
		if f == nil {
			continue // another program's ping
		}
		p.reply(f, src.Unmap(), m, false)
	}
}

func (p *echoProxy) isReply(m []byte) bool {
	if p.v6 {
		return m[0] == icmpv6EchoReply && m[1] == 0
	}
	return m[0] == icmpv4EchoReply && m[1] == 0
}

// expireRaw removes raw-mode mappings idle for longer than p.idle.
func (p *echoProxy) expireRaw() {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, f := range p.flows {
		if time.Duration(now-f.last.Load()) >= p.idle {
			delete(p.flows, k)
			delete(p.byID, f.hostID)
		}
	}
}

// reply turns the echo reply message m, received from src for mapping f,
// into an IP packet for the client and queues it.
func (p *echoProxy) reply(f *echoFlow, src netip.Addr, m []byte, truncated bool) {
	if truncated || len(m) < 8 || !p.isReply(m) || src != f.key.dst {
		return
	}
	hl := 20
	if p.v6 {
		hl = 40
	}
	if hl+len(m) > p.mtu {
		p.drops.Add(1)
		return
	}
	seq := binary.BigEndian.Uint16(m[6:8])
	pkt := buildEchoReply(p.v6, f.key.dst, f.key.client, f.key.id, seq, m[8:])
	p.replies.Add(1) // before queueing, so a reader that got the packet sees the count
	p.deliver(pkt)
}

// expirePing removes the ping-mode mapping f if it has been idle for
// p.idle, deciding under p.mu so that a request sent meanwhile keeps it.
func (p *echoProxy) expirePing(f *echoFlow) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Duration(p.now()-f.last.Load()) < p.idle {
		return false
	}
	if p.flows[f.key] == f {
		delete(p.flows, f.key)
	}
	return true
}

// forgetClient drops every mapping of client (its address now belongs to
// someone else, or the session ended). It returns how many were dropped.
func (p *echoProxy) forgetClient(client netip.Addr) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for k, f := range p.flows {
		if k.client != client {
			continue
		}
		n++
		delete(p.flows, k)
		if f.conn != nil {
			f.conn.Close() // its reader exits
		} else {
			delete(p.byID, f.hostID)
		}
	}
	return n
}

// close closes every host socket and waits for the reader goroutines.
func (p *echoProxy) close() {
	p.mu.Lock()
	p.closed = true
	for k, f := range p.flows {
		if f.conn != nil {
			f.conn.Close()
		}
		delete(p.flows, k)
	}
	clear(p.byID)
	if p.raw != nil {
		p.raw.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// filterRaw asks the kernel to pass only echo replies to the raw ICMPv6
// socket (best effort; rawReader filters anyway).
func (p *echoProxy) filterRaw(c icmpConn) {
	ic, ok := c.(*icmp.PacketConn)
	if !p.v6 || !ok {
		return
	}
	if pc := ic.IPv6PacketConn(); pc != nil {
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeEchoReply)
		_ = pc.SetICMPFilter(&f)
	}
}
