package fec

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Conn wraps a UDP socket for a quic.Transport. To addresses with FEC state
// it sends every QUIC packet as a data frame, followed by parity frames
// after each block, and from them it turns frames back into QUIC packets
// (see Decoder). Plain QUIC packets pass through untouched both ways, so
// peers that never send FEC frames see a plain UDP socket.
//
// Conn implements quic-go's OOBCapablePacketConn and batch reads (ReadBatch),
// so quic-go keeps GSO, ECN and recvmmsg. Where the kernel has it, Conn
// also turns on UDP GRO on the socket and splits the coalesced datagrams
// it reads back into packets (quic-go does not read with GRO itself).
// Close closes the wrapped socket.
type Conn struct {
	PacketConn
	cfg   Config
	batch *ipv4.PacketConn

	mu      sync.RWMutex
	peers   map[netip.AddrPort]*peer // guarded by mu
	retired Stats                    // counters of removed peers; guarded by mu
	lastK   atomic.Int64             // K<<8|M of the last block shape used
	sweep   time.Time                // guarded by mu
	// Server side (see Bind): the bound connections and the address each
	// is counted at (the zero AddrPort: none), and how many are counted
	// at each address; guarded by mu.
	binds  map[Remote]netip.AddrPort
	bound  map[netip.AddrPort]int
	scanAt time.Time // the last rescan; read side only

	noPeer, refused, malformed, reports atomic.Uint64
	gsoSeen                             atomic.Bool

	// Read side: one reader at a time.
	rmu   sync.Mutex
	rmsgs []ipv4.Message
	// The messages of the last socket read not yet handled: rmsgs[ri:rn],
	// the next segment of rmsgs[ri] at roff, rseg long (see splitNext).
	rn, ri, roff, rseg int
	rnow               time.Time // when they were read
	// gro: the socket coalesces datagrams (UDP_GRO is on); coalesced
	// counts the datagrams read that held more than one segment.
	gro       bool
	coalesced atomic.Uint64
	ready     []readyPkt
	spare     [][]byte
	out       []ipv4.Message // the caller's messages during a read
	nout      int
	curOOB    []byte
	curTo     net.Addr
	dfn       func([]byte)
	// holding are the peers whose decoders hold packets behind a gap.
	holding map[*peer]struct{}

	// Deadlines: the caller's and the one set on the socket.
	dlMu    sync.Mutex
	userDL  time.Time // guarded by dlMu
	innerDL time.Time // guarded by dlMu
}

type readyPkt struct {
	buf, oob []byte
	addr     net.Addr
}

type peer struct {
	key  netip.AddrPort
	addr *net.UDPAddr
	want Policy // the parity asked of the peer (client: its --fec)
	// send: packets to the peer are framed. Always on a client (Enable);
	// on a server while key is the address of a bound connection.
	send atomic.Bool

	wmu        sync.Mutex
	enc        *Encoder
	policy     Policy  // what to send; guarded by wmu
	lossAcc    float64 // decayed lost and total counts from reports; guarded by wmu
	totAcc     float64
	lossRate   float64
	lastReport time.Time
	timer      *time.Timer
	armed      bool
	wbuf, pbuf []byte
	oob, poob  []byte
	batches    [][3]int // parity batches in pbuf: start, frames, frame length

	rmu  sync.Mutex
	dec  *Decoder
	last atomic.Int64 // unix nanoseconds of the last frame received
}

// NewConn wraps pc. It does not enable FEC toward anyone: see Enable and
// Config.Accept.
//
// NewConn turns on UDP_GRO on pc if the kernel allows it (a failure keeps
// reads one datagram per packet): reads from pc that bypass the Conn get
// coalesced datagrams from then on. With GRO the Conn holds readBatchGRO
// read buffers of rbufSizeGRO (256 KiB), else readBatch of rbufSize (16 KiB).
func NewConn(pc PacketConn, cfg Config) *Conn {
	if cfg.Hold <= 0 {
		cfg.Hold = defaultHold
	}
	if cfg.Flush <= 0 {
		cfg.Flush = defaultFlush
	}
	if cfg.MaxPeers <= 0 {
		cfg.MaxPeers = defaultMaxPeers
	}
	if cfg.Idle <= 0 {
		cfg.Idle = defaultIdle
	}
	c := &Conn{
		PacketConn: pc, cfg: cfg, batch: ipv4.NewPacketConn(pc),
		peers: make(map[netip.AddrPort]*peer),
		binds: make(map[Remote]netip.AddrPort),
		bound: make(map[netip.AddrPort]int),
	}
	c.gro = enableGRO(pc)
	batch, size := readBatch, rbufSize
	if c.gro {
		batch, size = readBatchGRO, rbufSizeGRO
	}
	c.rmsgs = make([]ipv4.Message, batch)
	for i := range c.rmsgs {
		c.rmsgs[i].Buffers = [][]byte{make([]byte, size)}
		c.rmsgs[i].OOB = make([]byte, 256)
	}
	c.dfn = c.deliver
	c.holding = make(map[*peer]struct{})
	return c
}

// Enable starts FEC toward addr: from now on every packet to it is framed,
// with the parity p asks for (and the peer is asked, in reports, to send
// the same). Call it only once the peer said it speaks FEC.
func (c *Conn) Enable(addr *net.UDPAddr, p Policy) {
	key := addrKey(addr)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.peers[key]; old != nil {
		c.removeLocked(old)
	}
	np := c.newPeer(key, p, p)
	np.send.Store(true)
	c.peers[key] = np
}

// Bind lets a server's Conn (Config.Accept) frame what it sends to r's
// current address, following r when it migrates, until r's context is
// done. Call it for a connection on which the client asked for FEC and
// was answered, before the answer leaves: the client frames once it reads
// it. An address is sent frames only while it is the current address of a
// bound connection and has sent valid frames itself, so frames that
// anyone else sends from a plain client's address (spoofed) never turn
// framing on toward that client. Binding a bound connection, or binding
// on a Conn without Accept, does nothing. r must be comparable (a pointer,
// as *quic.Conn is).
func (c *Conn) Bind(r Remote) {
	if !c.cfg.Accept {
		return
	}
	c.mu.Lock()
	if _, ok := c.binds[r]; ok {
		c.mu.Unlock()
		return
	}
	c.binds[r] = netip.AddrPort{}
	c.followLocked(r)
	c.mu.Unlock()
	context.AfterFunc(r.Context(), func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if at, ok := c.binds[r]; ok {
			delete(c.binds, r)
			c.countLocked(at, -1)
		}
	})
}

// addrKey is the table key of addr: IPv4-mapped addresses unmapped; the
// zero AddrPort for nil or a non-UDP address.
func addrKey(addr net.Addr) netip.AddrPort {
	ua, ok := addr.(*net.UDPAddr)
	if !ok || ua == nil {
		return netip.AddrPort{}
	}
	key := ua.AddrPort()
	return netip.AddrPortFrom(key.Addr().Unmap(), key.Port())
}

// followLocked moves r's count to the address r has now.
func (c *Conn) followLocked(r Remote) {
	at := addrKey(r.RemoteAddr())
	if old := c.binds[r]; at != old {
		c.binds[r] = at
		c.countLocked(old, -1)
		c.countLocked(at, 1)
	}
}

// countLocked adds d to the bound connections at key, and turns framing
// toward key's peer on or off to match.
func (c *Conn) countLocked(key netip.AddrPort, d int) {
	if !key.IsValid() {
		return
	}
	n := c.bound[key] + d
	if n > 0 {
		c.bound[key] = n
	} else {
		delete(c.bound, key)
	}
	if p := c.peers[key]; p != nil {
		p.send.Store(n > 0)
	}
}

// rescan follows every bound connection to its current address. quic-go
// says nothing when it switches a connection to a new path (its remote
// address changes), so the read side rescans when frames come from a
// peer that is not sent frames (at most every rescanMin: a migrated
// client frames from its first packet on the new path, before and after
// quic-go validates the path and switches to it) and every rescanMax
// anyway. A rescan costs one atomic load and compare per bound connection.
//
// The scan runs under the read lock, so that a flood of frames from an
// unbound address (anyone can send them) does not hold off the senders'
// lookups; the write lock is taken only when a connection has moved.
func (c *Conn) rescan(now time.Time) {
	c.scanAt = now
	c.mu.RLock()
	moved := false
	for r, at := range c.binds {
		if addrKey(r.RemoteAddr()) != at {
			moved = true
			break
		}
	}
	c.mu.RUnlock()
	if !moved {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for r := range c.binds {
		c.followLocked(r)
	}
}

func (c *Conn) newPeer(key netip.AddrPort, want, send Policy) *peer {
	p := &peer{
		key:    key,
		addr:   net.UDPAddrFromAddrPort(key),
		want:   want,
		policy: send,
		enc:    NewEncoder(send, rand.Uint32()),
		dec:    NewDecoder(c.cfg.Hold),
		// The auto policy starts as if the link lost packets, until
		// reports say otherwise (a second or two of clean traffic): a
		// loss early in a connection ends quic-go's slow start at a
		// small window, which CUBIC then takes many seconds to grow.
		lossAcc: priorLost,
		totAcc:  priorTotal,
	}
	p.enc.SetPolicy(send, lossBound(p.lossAcc, p.totAcc))
	p.last.Store(time.Now().UnixNano())
	p.timer = time.AfterFunc(time.Hour, func() { c.flushTimer(p) })
	p.timer.Stop()
	return p
}

func (c *Conn) removeLocked(p *peer) {
	delete(c.peers, p.key)
	p.wmu.Lock()
	p.timer.Stop()
	c.retired.DataFrames += p.enc.DataFrames
	c.retired.ParityFrames += p.enc.ParityFrames
	p.wmu.Unlock()
	p.rmu.Lock()
	addDecoderStats(&c.retired.DecoderStats, &p.dec.Stats)
	p.rmu.Unlock()
}

// SetWriteBuffer sets the socket's send buffer size (quic-go asks for a
// large one).
func (c *Conn) SetWriteBuffer(n int) error {
	if wb, ok := c.PacketConn.(interface{ SetWriteBuffer(int) error }); ok {
		return wb.SetWriteBuffer(n)
	}
	return errors.New("fec: the wrapped socket cannot set its send buffer size")
}

// Stats returns the counters.
func (c *Conn) Stats() Stats {
	c.mu.RLock()
	s := c.retired
	s.Peers = len(c.peers)
	for _, p := range c.peers {
		if p.send.Load() {
			s.Sending++
		}
		p.wmu.Lock()
		s.DataFrames += p.enc.DataFrames
		s.ParityFrames += p.enc.ParityFrames
		s.PeerLoss = p.lossRate
		p.wmu.Unlock()
		p.rmu.Lock()
		addDecoderStats(&s.DecoderStats, &p.dec.Stats)
		p.rmu.Unlock()
	}
	c.mu.RUnlock()
	s.NoPeer = c.noPeer.Load()
	s.Reports = c.reports.Load()
	s.PeersRefused = c.refused.Load()
	s.Malformed += c.malformed.Load()
	km := c.lastK.Load()
	s.K, s.M = int(km>>8), int(km&0xff)
	return s
}

func (c *Conn) lookup(addr *net.UDPAddr) *peer {
	if addr == nil {
		return nil
	}
	key := addrKey(addr)
	c.mu.RLock()
	p := c.peers[key]
	c.mu.RUnlock()
	return p
}

// WriteTo sends b to addr (framed if addr has FEC state).
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return c.PacketConn.WriteTo(b, addr)
	}
	n, _, err := c.WriteMsgUDP(b, nil, ua)
	return n, err
}

// WriteMsgUDP sends b (one QUIC packet, or several of the UDP_SEGMENT size
// oob carries) to addr, framed if addr has FEC state, and the parity of
// every block the packets complete.
func (c *Conn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	p := c.lookup(addr)
	if p == nil || !p.send.Load() {
		return c.PacketConn.WriteMsgUDP(b, oob, addr)
	}
	segOff := findSegment(oob)
	seg := len(b)
	if segOff >= 0 {
		c.gsoSeen.Store(true)
		seg = int(binary.NativeEndian.Uint16(oob[segOff:]))
		if seg <= 0 {
			seg = len(b)
		}
	}
	now := time.Now()
	p.wmu.Lock()
	defer p.wmu.Unlock()
	k, m := p.enc.Parity()
	c.lastK.Store(int64(k<<8 | m))
	buf := p.wbuf[:0]
	p.pbuf = p.pbuf[:0]
	p.batches = p.batches[:0]
	segs := 0
	for off := 0; off < len(b); off += seg {
		var full bool
		buf, full = p.enc.AppendData(buf, b[off:min(off+seg, len(b))], now)
		segs++
		if full {
			c.appendParity(p)
		}
	}
	p.wbuf = buf
	woob := oob
	if segOff >= 0 {
		p.oob = append(p.oob[:0], oob...)
		binary.NativeEndian.PutUint16(p.oob[segOff:], uint16(seg+Overhead))
		woob = p.oob
	}
	// Parity and reports go out with the same source address and ECN
	// marking as the packets, without the segment size.
	p.poob = stripSegment(p.poob[:0], oob)
	_, _, err := c.PacketConn.WriteMsgUDP(buf, woob, addr)
	if err != nil {
		if segs == 1 && errors.Is(err, syscall.EMSGSIZE) {
			p.enc.Unappend() // an MTU probe: it never left
		}
		return 0, 0, err
	}
	c.sendParity(p)
	if now.Sub(p.lastReport) >= reportInterval {
		c.sendReport(p, now)
	}
	if n, _ := p.enc.Pending(); n > 0 && !p.armed {
		p.armed = true
		p.timer.Reset(c.cfg.Flush)
	}
	return len(b), len(oob), nil
}

func (c *Conn) appendParity(p *peer) {
	start := len(p.pbuf)
	var frames, flen int
	p.pbuf, frames, flen = p.enc.AppendParity(p.pbuf)
	if frames > 0 {
		p.batches = append(p.batches, [3]int{start, frames, flen})
	}
}

// sendParity sends the parity batches in p.pbuf, with GSO when quic-go
// uses it. Send errors are loss: quic-go's own packets report them.
func (c *Conn) sendParity(p *peer) {
	for _, bt := range p.batches {
		start, frames, flen := bt[0], bt[1], bt[2]
		data := p.pbuf[start : start+frames*flen]
		if frames > 1 && c.gsoSeen.Load() {
			oob := appendSegment(p.poob, flen)
			if _, _, err := c.PacketConn.WriteMsgUDP(data, oob, p.addr); err == nil {
				continue
			}
		}
		for i := range frames {
			c.PacketConn.WriteMsgUDP(data[i*flen:(i+1)*flen], p.poob, p.addr)
		}
	}
	p.batches = p.batches[:0]
}

func (c *Conn) sendReport(p *peer, now time.Time) {
	p.lastReport = now
	p.rmu.Lock()
	recv, lost := p.dec.TakeReport()
	p.rmu.Unlock()
	k, m := p.want.wantFields()
	var b [ReportLen]byte
	c.reports.Add(1)
	c.PacketConn.WriteMsgUDP(AppendReport(b[:0], k, m, recv, lost), p.poob, p.addr)
}

func (c *Conn) flushTimer(p *peer) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	n, start := p.enc.Pending()
	if n == 0 || !p.send.Load() {
		// Nothing to protect, or the peer is no longer framed to (its
		// connection moved away): no parity toward it.
		p.armed = false
		return
	}
	if wait := c.cfg.Flush - time.Since(start); wait > 0 {
		p.timer.Reset(wait)
		return
	}
	p.armed = false
	p.pbuf = p.pbuf[:0]
	p.batches = p.batches[:0]
	c.appendParity(p)
	c.sendParity(p)
}

// report handles a peer's report: its loss counts steer the auto policy,
// and (server side) its wish sets the parity sent to it.
func (c *Conn) report(p *peer, f Frame) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if c.cfg.Accept && f.WantK != 0 {
		p.policy = policyFromWant(f.WantK, f.WantM)
	}
	p.lossAcc = p.lossAcc*lossDecay + float64(f.Lost)
	p.totAcc = p.totAcc*lossDecay + float64(f.Received) + float64(f.Lost)
	p.lossRate = 0
	if p.totAcc > 0 {
		p.lossRate = p.lossAcc / p.totAcc
	}
	p.enc.SetPolicy(p.policy, lossBound(p.lossAcc, p.totAcc))
}

// SetReadDeadline sets the deadline of reads (ReadBatch, ReadMsgUDP,
// ReadFrom); held packets are still released on time before it.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	c.userDL = t
	c.innerDL = t
	return c.PacketConn.SetReadDeadline(t)
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.PacketConn.SetWriteDeadline(t)
}

// Close stops the parity timers and closes the wrapped socket.
func (c *Conn) Close() error {
	c.mu.Lock()
	for _, p := range c.peers {
		p.wmu.Lock()
		p.timer.Stop()
		p.wmu.Unlock()
	}
	c.mu.Unlock()
	return c.PacketConn.Close()
}

// ReadFrom reads one QUIC packet.
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, _, _, addr, err := c.ReadMsgUDP(b, nil)
	if addr == nil {
		return n, nil, err
	}
	return n, addr, err
}

// ReadMsgUDP reads one QUIC packet and its control messages.
func (c *Conn) ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	ms := []ipv4.Message{{Buffers: [][]byte{b}, OOB: oob}}
	if _, err := c.ReadBatch(ms, 0); err != nil {
		return 0, 0, 0, nil, err
	}
	addr, _ = ms[0].Addr.(*net.UDPAddr)
	return ms[0].N, ms[0].NN, ms[0].Flags, addr, nil
}

// ReadBatch reads QUIC packets into ms (quic-go's batch interface): plain
// QUIC packets as they come, framed ones in order, rebuilt or released
// from the hold. It returns at least one packet unless there is an error.
func (c *Conn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.out, c.nout = ms, 0
	defer func() { c.out = nil }()
	c.popReady()
	if c.ri < c.rn {
		// Segments of datagrams read before, which did not fit then.
		c.handleRead()
		c.expire(c.rnow)
	}
	for c.nout == 0 {
		c.setInnerDeadline()
		k, err := c.batch.ReadBatch(c.rmsgs, flags)
		now := time.Now()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !c.userExpired(now) {
				c.expire(now)
				continue
			}
			return 0, err
		}
		c.rn, c.ri, c.roff, c.rnow = k, 0, 0, now
		c.handleRead()
		c.expire(now)
	}
	return c.nout, nil
}

// handleRead handles the segments of the datagrams read until the
// caller's messages are full (what the decoder releases beyond them is
// queued; unhandled segments wait for the next ReadBatch in rmsgs).
func (c *Conn) handleRead() {
	for c.ri < c.rn && c.nout < len(c.out) {
		m := &c.rmsgs[c.ri]
		if c.roff == 0 {
			c.rseg = c.segmentSize(m)
		}
		start := c.roff
		end := min(start+c.rseg, m.N)
		c.roff = end
		if end >= m.N {
			c.ri++
			c.roff = 0
		}
		c.handle(m, m.Buffers[0][start:end], c.rnow)
	}
}

// segmentSize returns the size of m's segments (all but the last have it)
// and strips the UDP_GRO message from m's control messages: it is about
// the whole datagram, the others (ECN, packet info) hold for every
// segment. A datagram without one, or with a size that is not between 1
// and its length, is one segment.
func (c *Conn) segmentSize(m *ipv4.Message) int {
	n := m.N
	if !c.gro || m.NN == 0 {
		return max(n, 1)
	}
	oob := m.OOB[:m.NN]
	seg := 0
	w := 0
	for r := 0; r < len(oob); {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob[r:])
		if err != nil {
			// Keep the rest as it was: quic-go reports it.
			w += copy(oob[w:], oob[r:])
			break
		}
		next := len(oob) - len(rest)
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO {
			if len(body) >= 4 {
				seg = int(int32(binary.NativeEndian.Uint32(body)))
			} else if len(body) >= 2 {
				seg = int(binary.NativeEndian.Uint16(body))
			}
		} else {
			w += copy(oob[w:], oob[r:next])
		}
		r = next
	}
	m.NN = w
	if seg <= 0 || seg >= n {
		return max(n, 1)
	}
	c.coalesced.Add(1)
	return seg
}

func (c *Conn) userExpired(now time.Time) bool {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return !c.userDL.IsZero() && !now.Before(c.userDL)
}

// setInnerDeadline puts the earlier of the caller's deadline and the
// first hold bound on the socket.
func (c *Conn) setInnerDeadline() {
	var hold time.Time
	for p := range c.holding {
		p.rmu.Lock()
		d := p.dec.Deadline()
		p.rmu.Unlock()
		if d.IsZero() {
			delete(c.holding, p)
		} else if hold.IsZero() || d.Before(hold) {
			hold = d
		}
	}
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	dl := c.userDL
	if !hold.IsZero() && (dl.IsZero() || hold.Before(dl)) {
		dl = hold
	}
	if !dl.Equal(c.innerDL) {
		c.innerDL = dl
		c.PacketConn.SetReadDeadline(dl)
	}
}

// expire releases what the peers that hold packets held too long.
func (c *Conn) expire(now time.Time) {
	for p := range c.holding {
		p.rmu.Lock()
		if d := p.dec.Deadline(); !d.IsZero() && !now.Before(d) {
			c.curTo = p.addr
			p.dec.Expire(now, c.dfn)
		}
		if p.dec.Deadline().IsZero() {
			delete(c.holding, p)
		}
		p.rmu.Unlock()
	}
}

// handle handles data, one packet or frame (a segment) of m.
func (c *Conn) handle(m *ipv4.Message, data []byte, now time.Time) {
	c.curOOB = m.OOB[:m.NN]
	c.curTo = m.Addr
	if len(data) == 0 || !IsFEC(data[0]) {
		if c.cfg.Accept && len(data) > 0 && data[0]&0xf0 == 0xc0 {
			// A QUIC v1 Initial: a new connection from this address,
			// which does not speak FEC (or not yet).
			if ua, ok := m.Addr.(*net.UDPAddr); ok {
				if p := c.lookup(ua); p != nil {
					c.mu.Lock()
					if c.peers[p.key] == p {
						c.removeLocked(p)
					}
					c.mu.Unlock()
				}
			}
		}
		c.deliver(data)
		return
	}
	f, err := Parse(data)
	if err != nil {
		c.malformed.Add(1)
		return
	}
	ua, _ := m.Addr.(*net.UDPAddr)
	p := c.lookup(ua)
	if c.cfg.Accept {
		if d := now.Sub(c.scanAt); d >= rescanMax || (d >= rescanMin && (p == nil || !p.send.Load())) {
			c.rescan(now)
		}
	}
	if p == nil {
		if p = c.accept(ua, now); p == nil {
			if c.cfg.Accept && (f.Type == TypeData || f.Type == TypeDataProtected) {
				// No room for its state: the packet still goes to
				// quic-go (QUIC drops what it cannot authenticate),
				// unordered and unprotected.
				c.deliver(f.Payload)
			}
			return
		}
	}
	p.last.Store(now.UnixNano())
	if f.Type == TypeReport {
		c.report(p, f)
		return
	}
	c.curTo = p.addr
	p.rmu.Lock()
	p.dec.Receive(f, now, c.dfn)
	if !p.dec.Deadline().IsZero() {
		c.holding[p] = struct{}{}
	}
	p.rmu.Unlock()
}

// accept creates FEC state for an address that sent a valid frame (server
// side), within the table's bound: frames from it are decoded, and packets
// to it are framed while it is the address of a bound connection. When the
// table is full, a bound address takes the place of the longest-silent
// address that is not.
func (c *Conn) accept(ua *net.UDPAddr, now time.Time) *peer {
	if !c.cfg.Accept || ua == nil {
		c.noPeer.Add(1)
		return nil
	}
	key := addrKey(ua)
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.peers[key]; p != nil {
		return p
	}
	if len(c.peers) >= c.cfg.MaxPeers || now.Sub(c.sweep) > c.cfg.Idle {
		c.sweep = now
		for _, p := range c.peers {
			if now.Sub(time.Unix(0, p.last.Load())) > c.cfg.Idle {
				c.removeLocked(p)
			}
		}
	}
	if len(c.peers) >= c.cfg.MaxPeers && c.bound[key] > 0 {
		var old *peer
		for _, p := range c.peers {
			if !p.send.Load() && (old == nil || p.last.Load() < old.last.Load()) {
				old = p
			}
		}
		if old != nil {
			c.removeLocked(old)
		}
	}
	if len(c.peers) >= c.cfg.MaxPeers {
		c.refused.Add(1)
		return nil
	}
	// Until the peer's first report says otherwise: adapt to loss.
	auto := Policy{K: AutoK, Auto: true}
	p := c.newPeer(key, Policy{}, auto)
	p.send.Store(c.bound[key] > 0)
	c.peers[key] = p
	return p
}

// deliver hands one QUIC packet to the caller's messages, or queues it.
func (c *Conn) deliver(pkt []byte) {
	if c.nout < len(c.out) {
		m := &c.out[c.nout]
		m.N = copy(m.Buffers[0], pkt)
		m.NN = copy(m.OOB, c.curOOB)
		m.Flags = 0
		m.Addr = c.curTo
		c.nout++
		return
	}
	// Nothing longer fits in quic-go's buffers (nor was read without GRO).
	pkt = pkt[:min(len(pkt), rbufSize)]
	var b []byte
	if n := len(c.spare); n > 0 {
		b, c.spare = c.spare[n-1], c.spare[:n-1]
	} else {
		b = make([]byte, 0, rbufSize+256)
	}
	b = append(b[:0], pkt...)
	c.ready = append(c.ready, readyPkt{buf: b, oob: append(b[len(b):len(b)], c.curOOB...), addr: c.curTo})
}

func (c *Conn) popReady() {
	i := 0
	for ; i < len(c.ready) && c.nout < len(c.out); i++ {
		r := c.ready[i]
		m := &c.out[c.nout]
		m.N = copy(m.Buffers[0], r.buf)
		m.NN = copy(m.OOB, r.oob)
		m.Flags = 0
		m.Addr = r.addr
		c.nout++
		c.spare = append(c.spare, r.buf)
	}
	n := copy(c.ready, c.ready[i:])
	clear(c.ready[n:])
	c.ready = c.ready[:n]
}

// findSegment returns the offset of the UDP_SEGMENT value in oob, or -1.
func findSegment(oob []byte) int {
	off := 0
	for off < len(oob) {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob[off:])
		if err != nil {
			return -1
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_SEGMENT && len(body) >= 2 {
			return off + unix.CmsgLen(0)
		}
		off = len(oob) - len(rest)
	}
	return -1
}

// stripSegment appends oob without its UDP_SEGMENT message to dst.
func stripSegment(dst, oob []byte) []byte {
	for len(oob) > 0 {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return dst
		}
		msg := oob[:len(oob)-len(rest)]
		if !(h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_SEGMENT) {
			dst = append(dst, msg...)
		}
		_ = body
		oob = rest
	}
	return dst
}

// appendSegment appends a UDP_SEGMENT message with size to a copy of oob.
func appendSegment(oob []byte, size int) []byte {
	b := make([]byte, len(oob), len(oob)+unix.CmsgSpace(2))
	copy(b, oob)
	start := len(b)
	b = b[:start+unix.CmsgSpace(2)]
	clear(b[start:])
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[start]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[start+unix.CmsgLen(0):], uint16(size))
	return b
}

// enableGRO turns on UDP_GRO on pc's socket and reports whether it did.
func enableGRO(pc PacketConn) bool {
	rc, err := pc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
	}); err != nil {
		return false
	}
	return serr == nil
}

// Supported reports whether Conn frames packets on this platform.
const Supported = true
