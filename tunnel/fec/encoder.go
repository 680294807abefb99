package fec

import (
	"encoding/binary"
	"time"
)

// maxShard bounds a shard: the length prefix and the largest UDP payload
// quic-go sends (1452 bytes) with room to spare.
const maxShard = shardLenPrefix + 1500

// Encoder frames the QUIC packets sent to one peer and computes the parity
// of each block. It is not safe for concurrent use.
type Encoder struct {
	policy Policy // what the caller asked for
	k, m   int    // the current block's shape (m == 0: unprotected)
	// pendingK and pendingM are the shape of the next block.
	pendingK, pendingM int
	seq                uint32 // next data sequence number
	base               uint32 // first sequence number of the current block
	n                  int    // data packets in the current block
	start              time.Time
	size               int      // longest shard of the block
	shards             [][]byte // n shards: length prefix, packet (cap maxShard)
	all                [][]byte // scratch: data and parity shards for the codec

	// Counters.
	DataFrames, ParityFrames, Blocks uint64
}

// NewEncoder returns an encoder whose sequence numbers start at seq (pick
// it at random, so a restarted sender is not mistaken for a late one).
func NewEncoder(p Policy, seq uint32) *Encoder {
	e := &Encoder{seq: seq}
	e.SetPolicy(p, 0)
	return e
}

// SetPolicy sets the parity from the next block on; loss is the peer's
// reported loss rate, used by the auto policy.
func (e *Encoder) SetPolicy(p Policy, loss float64) {
	e.policy = p
	k, m := p.K, p.M
	if p.Auto {
		m = AutoParity(k, loss)
	}
	if k < 1 {
		k = 1
	}
	e.pendingK, e.pendingM = k, m
}

// Parity returns the current block shape (k data, m parity packets).
func (e *Encoder) Parity() (k, m int) { return e.pendingK, e.pendingM }

// Pending reports how many data packets of the current block still wait
// for their parity and when the first of them was framed.
func (e *Encoder) Pending() (int, time.Time) { return e.n, e.start }

// AppendData appends the data frame for pkt to b. full reports that the
// block is complete: call AppendParity next.
func (e *Encoder) AppendData(b, pkt []byte, now time.Time) (_ []byte, full bool) {
	if e.n == 0 {
		e.k, e.m = e.pendingK, e.pendingM
		e.base = e.seq
		e.start = now
		e.size = 0
	}
	seq := e.seq
	e.seq++
	e.DataFrames++
	if e.m == 0 {
		return AppendData(b, false, seq, pkt), false
	}
	if e.n == len(e.shards) {
		e.shards = append(e.shards, make([]byte, 0, maxShard))
	}
	if cap(e.shards[e.n]) < shardLenPrefix+len(pkt) {
		e.shards[e.n] = make([]byte, 0, shardLenPrefix+len(pkt))
	}
	s := e.shards[e.n][:shardLenPrefix+len(pkt)]
	binary.BigEndian.PutUint16(s, uint16(len(pkt)))
	copy(s[shardLenPrefix:], pkt)
	e.shards[e.n] = s
	e.n++
	e.size = max(e.size, len(s))
	return AppendData(b, true, seq, pkt), e.n >= e.k
}

// Unappend takes back the data packet AppendData framed last (its send
// failed, e.g. EMSGSIZE on an MTU probe): its sequence number is reused
// and it leaves the block.
func (e *Encoder) Unappend() {
	e.seq--
	e.DataFrames--
	if e.m == 0 || e.n == 0 {
		return
	}
	e.n--
	e.size = 0
	for _, s := range e.shards[:e.n] {
		e.size = max(e.size, len(s))
	}
}

// AppendParity appends the parity frames of the current block (possibly
// partial: ceil(m*n/k) of them, at least min(m, 2)) to b, one after the other, each frameLen
// bytes long, and starts a new block. It appends nothing if no protected
// packet is pending.
func (e *Encoder) AppendParity(b []byte) (_ []byte, frames, frameLen int) {
	n := e.n
	if n == 0 {
		return b, 0, 0
	}
	e.n = 0
	// A partial block gets its share of the parity, but at least two
	// packets of it (when M allows): a short block of n packets with one
	// parity packet would fail far more often than a full one.
	m := (e.m*n + e.k - 1) / e.k
	m = max(m, min(e.m, 2))
	m = max(1, min(m, MaxM))
	frameLen = ParityHeaderLen + e.size
	start := len(b)
	b = append(b, make([]byte, m*frameLen)...)
	all := append(e.all[:0], e.shards[:n]...)
	for i := range all {
		s := all[i][:e.size]
		clear(s[len(all[i]):])
		all[i] = s
	}
	for i := range m {
		f := b[start+i*frameLen : start+(i+1)*frameLen]
		AppendParityHeader(f[:0], e.base, n, m, i)
		all = append(all, f[ParityHeaderLen:])
	}
	e.all = all[:0]
	c, err := codec(n, m)
	if err == nil {
		err = c.Encode(all)
	}
	if err != nil { // cannot happen with n <= MaxK, m <= MaxM
		return b[:start], 0, 0
	}
	e.Blocks++
	e.ParityFrames += uint64(m)
	return b, m, frameLen
}
