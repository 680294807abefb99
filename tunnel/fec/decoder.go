package fec

import (
	"encoding/binary"
	"time"
)

// window is how many sequence numbers the decoder remembers: data of
// blocks whose parity may still come, and packets held behind a gap.
const window = 1024

// maxBlocks bounds the parity the decoder keeps for incomplete blocks.
const maxBlocks = 64

// DecoderStats counts what a Decoder did. Lost counts data packets that
// never arrived (Recovered of them were rebuilt from parity, Unrecovered
// were given up on); Held counts packets delivered later than they arrived
// because an earlier one was missing; HoldTimeouts counts gaps given up on
// after the hold bound, Hopeless gaps given up on before it because a
// later block's parity arrived; Malformed counts frames dropped as invalid.
type DecoderStats struct {
	Received, Duplicates, Late, Resyncs uint64
	Recovered, Unrecovered, Lost        uint64
	Held, HoldTimeouts, Hopeless        uint64
	Parity, ParityUnused, Malformed     uint64
}

type slot struct {
	seq       uint32
	have      bool // buf holds seq's packet (shard form)
	delivered bool
	arrived   time.Time
	buf       []byte // length prefix, packet; cap maxShard
}

type block struct {
	n, m, size int
	parity     [][]byte // by index; nil if not received
	count      int
}

// Decoder undoes one peer's framing: it delivers QUIC packets in sequence
// order, rebuilds missing ones from parity, and holds packets that follow a
// gap until the gap is filled or Hold has passed since the first of them
// arrived, so quic-go sees neither the loss nor reordering. It is not safe
// for concurrent use.
type Decoder struct {
	// Hold bounds how long a packet waits for an earlier, missing one.
	Hold time.Duration

	Stats DecoderStats

	started  bool
	next     uint32 // next sequence number to deliver
	held     int    // packets in slots with seq > next, not delivered
	deadline time.Time
	slots    [window]slot
	blocks   map[uint32]*block
	free     [][]byte // spare shard buffers
	freeBlk  []*block
	scratch  [][]byte

	// Since the last TakeReport.
	repReceived, repLost uint32
}

// NewDecoder returns a decoder holding packets at most hold.
func NewDecoder(hold time.Duration) *Decoder {
	return &Decoder{Hold: hold, blocks: make(map[uint32]*block)}
}

// TakeReport returns the data frames received and lost since the previous
// call.
func (d *Decoder) TakeReport() (received, lost uint32) {
	r, l := d.repReceived, d.repLost
	d.repReceived, d.repLost = 0, 0
	return r, l
}

// Deadline is when Expire next has work to do; zero if nothing is held.
func (d *Decoder) Deadline() time.Time { return d.deadline }

// Receive handles one parsed data or parity frame. deliver is called for
// each QUIC packet that is ready, in order; its argument is valid only
// during the call.
func (d *Decoder) Receive(f Frame, now time.Time, deliver func([]byte)) {
	switch f.Type {
	case TypeData, TypeDataProtected:
		d.data(f.Seq, f.Type == TypeDataProtected, f.Payload, now, deliver)
	case TypeParity:
		d.parity(f, now, deliver)
	}
}

func (d *Decoder) data(seq uint32, protected bool, pkt []byte, now time.Time, deliver func([]byte)) {
	if len(pkt)+shardLenPrefix > maxShard {
		d.Stats.Malformed++
		return
	}
	if !d.started {
		d.started = true
		d.next = seq
	}
	off := int32(seq - d.next)
	if off >= window || off <= -window {
		// The peer restarted its sequence numbers (or a long outage):
		// release what is held and start over here.
		d.releaseAll(deliver)
		d.Stats.Resyncs++
		d.next = seq
		off = 0
	}
	sl := &d.slots[seq%window]
	if sl.seq == seq && sl.have {
		d.Stats.Duplicates++
		return
	}
	d.Stats.Received++
	d.repReceived++
	if off < 0 {
		// Given up on already (or delivered as rebuilt); deliver it now.
		d.Stats.Late++
		d.store(sl, seq, pkt, now)
		sl.delivered = true
		deliver(pkt)
		return
	}
	if off == 0 {
		if protected {
			d.store(sl, seq, pkt, now)
		} else {
			sl.seq, sl.have = seq, true
			sl.buf = sl.buf[:0]
		}
		sl.delivered = true
		deliver(pkt)
		d.next++
		d.drain(deliver)
		return
	}
	d.store(sl, seq, pkt, now)
	sl.delivered = false
	d.held++
	d.Stats.Held++
	if !protected {
		// No parity will come for this gap: do not wait for it.
		d.releaseAll(deliver)
		return
	}
	if d.deadline.IsZero() {
		d.deadline = now.Add(d.Hold)
	}
}

func (d *Decoder) store(sl *slot, seq uint32, pkt []byte, now time.Time) {
	if cap(sl.buf) < shardLenPrefix+len(pkt) {
		sl.buf = d.alloc()
	}
	sl.buf = sl.buf[:shardLenPrefix+len(pkt)]
	binary.BigEndian.PutUint16(sl.buf, uint16(len(pkt)))
	copy(sl.buf[shardLenPrefix:], pkt)
	sl.seq, sl.have, sl.arrived = seq, true, now
}

func (d *Decoder) alloc() []byte {
	if n := len(d.free); n > 0 {
		b := d.free[n-1]
		d.free = d.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, maxShard)
}

// drain delivers the held packets that are next in order.
func (d *Decoder) drain(deliver func([]byte)) {
	for d.held > 0 {
		sl := &d.slots[d.next%window]
		if sl.seq != d.next || !sl.have {
			break
		}
		if !sl.delivered {
			sl.delivered = true
			d.held--
			deliver(sl.buf[shardLenPrefix:])
		}
		d.next++
	}
	d.updateDeadline()
}

// skipGap gives up on the missing packets before the first held one.
func (d *Decoder) skipGap(deliver func([]byte)) {
	for n := 0; d.held > 0 && n < window; n++ {
		sl := &d.slots[d.next%window]
		if sl.seq == d.next && sl.have {
			break
		}
		d.Stats.Unrecovered++
		d.Stats.Lost++
		d.repLost++
		d.next++
	}
	d.drain(deliver)
}

func (d *Decoder) releaseAll(deliver func([]byte)) {
	for i := 0; d.held > 0 && i < window; i++ {
		d.skipGap(deliver)
	}
	d.held = 0 // nothing is left behind a gap (defensive: the count is exact)
	d.deadline = time.Time{}
}

func (d *Decoder) updateDeadline() {
	d.deadline = time.Time{}
	if d.held == 0 {
		return
	}
	for i := uint32(0); i < window; i++ {
		sl := &d.slots[(d.next+i)%window]
		if sl.seq == d.next+i && sl.have && !sl.delivered {
			d.deadline = sl.arrived.Add(d.Hold)
			return
		}
	}
}

// Expire gives up on gaps whose hold bound has passed at now and delivers
// what was held behind them.
func (d *Decoder) Expire(now time.Time, deliver func([]byte)) {
	for d.held > 0 && !d.deadline.IsZero() && !now.Before(d.deadline) {
		d.Stats.HoldTimeouts++
		d.skipGap(deliver)
	}
}

func (d *Decoder) parity(f Frame, now time.Time, deliver func([]byte)) {
	if !d.started {
		d.Stats.ParityUnused++
		return
	}
	if len(f.Payload) > maxShard {
		d.Stats.Malformed++
		return
	}
	d.Stats.Parity++
	if int32(f.Seq+uint32(f.N)-d.next) <= -window/2 || int32(f.Seq-d.next) >= window/2 {
		d.Stats.ParityUnused++ // stale, or from far ahead
		return
	}
	b := d.blocks[f.Seq]
	if b == nil {
		if len(d.blocks) >= maxBlocks {
			d.prune()
		}
		if n := len(d.freeBlk); n > 0 {
			b, d.freeBlk = d.freeBlk[n-1], d.freeBlk[:n-1]
		} else {
			b = &block{parity: make([][]byte, 0, MaxM)}
		}
		b.n, b.m, b.size, b.count = f.N, f.M, len(f.Payload), 0
		b.parity = b.parity[:f.M]
		clear(b.parity)
		d.blocks[f.Seq] = b
	}
	if b.n != f.N || b.m != f.M || b.size != len(f.Payload) {
		d.Stats.Malformed++
		return
	}
	if b.parity[f.Index] != nil {
		d.Stats.Duplicates++
		return
	}
	p := d.alloc()[:len(f.Payload)]
	copy(p, f.Payload)
	b.parity[f.Index] = p
	b.count++
	d.recover(f.Seq, b, now, deliver)
	// The sender sends parity block by block: parity of this block
	// means an earlier block's missing packets had their chance. Gaps
	// before it are given up on now rather than at the hold bound.
	for i := 0; d.held > 0 && int32(d.next-f.Seq) < 0 && i < window; i++ {
		sl := &d.slots[d.next%window]
		if sl.seq == d.next && sl.have {
			break
		}
		d.Stats.Hopeless++
		d.skipGap(deliver)
	}
}

// prune drops the parity of blocks that are done or too old, and if that
// frees nothing, all of it.
func (d *Decoder) prune() {
	for base, b := range d.blocks {
		if int32(base+uint32(b.n)-d.next) <= 0 {
			d.dropBlock(base, b)
		}
	}
	if len(d.blocks) >= maxBlocks {
		for base, b := range d.blocks {
			d.dropBlock(base, b)
		}
	}
}

func (d *Decoder) dropBlock(base uint32, b *block) {
	for _, p := range b.parity {
		if p != nil && len(d.free) < window {
			d.free = append(d.free, p)
		}
	}
	delete(d.blocks, base)
	if len(d.freeBlk) < maxBlocks {
		d.freeBlk = append(d.freeBlk, b)
	}
}

// recover rebuilds the block's missing data packets if enough shards are
// there, and forgets the block once nothing of it is missing.
func (d *Decoder) recover(base uint32, b *block, now time.Time, deliver func([]byte)) {
	missing := 0
	for i := range b.n {
		seq := base + uint32(i)
		sl := &d.slots[seq%window]
		if sl.seq != seq || !sl.have {
			missing++
		} else if len(sl.buf) > b.size {
			d.Stats.Malformed++ // a packet longer than the parity: not this block
			d.dropBlock(base, b)
			return
		}
	}
	if missing == 0 {
		d.Stats.ParityUnused += uint64(b.count)
		d.dropBlock(base, b)
		return
	}
	if missing > b.count {
		return
	}
	shards := d.scratch[:0]
	for i := range b.n {
		seq := base + uint32(i)
		sl := &d.slots[seq%window]
		if sl.seq == seq && sl.have {
			s := sl.buf[:b.size]
			clear(s[len(sl.buf):])
			shards = append(shards, s)
			continue
		}
		if cap(sl.buf) < b.size {
			sl.buf = d.alloc()
		}
		shards = append(shards, sl.buf[:0])
	}
	shards = append(shards, b.parity...)
	d.scratch = shards[:0]
	c, err := codec(b.n, b.m)
	if err == nil {
		err = c.ReconstructData(shards)
	}
	if err != nil {
		d.Stats.Malformed++
		d.dropBlock(base, b)
		return
	}
	for i := range b.n {
		seq := base + uint32(i)
		sl := &d.slots[seq%window]
		if sl.seq == seq && sl.have {
			sl.buf = sl.buf[:shardLenPrefix+int(binary.BigEndian.Uint16(sl.buf))]
			continue
		}
		s := shards[i]
		l := int(binary.BigEndian.Uint16(s))
		if l == 0 || shardLenPrefix+l > len(s) {
			d.Stats.Malformed++ // corrupt parity
			continue
		}
		sl.buf = s[:shardLenPrefix+l]
		sl.seq, sl.have, sl.arrived = seq, true, now
		d.Stats.Recovered++
		d.Stats.Lost++
		d.repLost++
		if int32(seq-d.next) < 0 {
			sl.delivered = true
			d.Stats.Late++
			deliver(sl.buf[shardLenPrefix:])
		} else {
			sl.delivered = false
			d.held++
		}
	}
	d.dropBlock(base, b)
	d.drain(deliver)
}
