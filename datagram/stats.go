package datagram

import "sync/atomic"

// Stats are packet counters, updated atomically by the pump and the
// Writer (hot loops add once per batch where they can) and safe to read at
// any time with Load. Nothing on the packet path logs per packet; these are
// the record. One Stats may be shared by several pumps and Writers. A Stats
// must not be copied after first use.
//
// "Tx" is the direction device -> peer (packets read from the device and
// sent as datagrams), "Rx" is peer -> device. Byte counts are IP packet
// bytes, without the datagram prefix.
type Stats struct {
	// TxPackets and TxBytes count packets sent with SendDatagram.
	TxPackets, TxBytes atomic.Uint64
	_                  [64]byte // keeps the reader's counters off the receiver's cache line

	// RxPackets and RxBytes count packets received from the peer that
	// passed every check and were queued for the device.
	RxPackets, RxBytes atomic.Uint64
	// RxDatagrams counts datagrams taken from the connection (every one
	// ReceiveDatagram returned), before any check. The peer's TxPackets
	// minus RxDatagrams is what was lost on the way: on the wire, in the
	// kernel's socket buffer, or in the QUIC library's receive queues,
	// which drop silently when the receiver falls behind.
	RxDatagrams atomic.Uint64
	_           [64]byte

	// DropMalformed counts packets or datagrams that failed ParsePrefix
	// or Packet.Decode, and device reads reporting an impossible size.
	DropMalformed atomic.Uint64
	// DropSrc counts packets an Allow func rejected with DropReasonSrc.
	DropSrc atomic.Uint64
	// DropDst counts packets an Allow func rejected with DropReasonDst.
	DropDst atomic.Uint64
	// DropPolicy counts packets an Allow func rejected with
	// DropReasonPolicy or a reason this package does not know.
	DropPolicy atomic.Uint64
	// DropTooBig counts packets SendDatagram refused as too large for the
	// current datagram limit (each may have been answered with ICMP).
	DropTooBig atomic.Uint64
	// DropQueueFull counts packets the Writer's queue had no room for.
	DropQueueFull atomic.Uint64
	// DropContext counts datagrams with a context ID other than 0 (RFC
	// 9484 §6: silently dropped).
	DropContext atomic.Uint64
	// DropStream counts datagrams whose quarter stream ID is not the
	// pump's request stream.
	DropStream atomic.Uint64
	// DropNoLink counts packets read from the device while the pump had no
	// link (paused, or reconnecting), or left in a batch whose link failed.
	DropNoLink atomic.Uint64
	// ICMPTooBig counts ICMP fragmentation-needed / packet-too-big
	// messages written back towards the device.
	ICMPTooBig atomic.Uint64
	// ReadErrors counts Device.Read calls that failed other than by
	// closure.
	ReadErrors atomic.Uint64
	// WriteErrors counts Device.Write calls that failed other than by
	// closure (the batch's packets are lost; how many is not known).
	WriteErrors atomic.Uint64
	// WriteBatches and WritePackets count the Writer's Device.Write calls
	// and the packets passed to them; their ratio is the mean batch size.
	WriteBatches, WritePackets atomic.Uint64
}

// DropReason is an Allow func's verdict on a packet: NoDrop lets it
// through, anything else drops it and selects the counter.
type DropReason uint8

const (
	// NoDrop forwards the packet.
	NoDrop DropReason = iota
	// DropReasonSrc drops it for its source address (counted in DropSrc).
	DropReasonSrc
	// DropReasonDst drops it for its destination address or protocol
	// (counted in DropDst).
	DropReasonDst
	// DropReasonPolicy drops it for any other policy (counted in
	// DropPolicy).
	DropReasonPolicy
)

// String returns the reason's name, for logs and metrics labels.
func (r DropReason) String() string {
	switch r {
	case NoDrop:
		return "none"
	case DropReasonSrc:
		return "src"
	case DropReasonDst:
		return "dst"
	case DropReasonPolicy:
		return "policy"
	}
	return "unknown"
}

// dropCounts accumulates one batch's verdicts so that shared atomics are
// touched once per batch, not once per packet.
type dropCounts struct {
	malformed, src, dst, policy, tooBig, icmp, noLink uint64
}

func (d *dropCounts) reason(r DropReason) {
	switch r {
	case DropReasonSrc:
		d.src++
	case DropReasonDst:
		d.dst++
	default:
		d.policy++
	}
}

func (d *dropCounts) flush(s *Stats) {
	add(&s.DropMalformed, d.malformed)
	add(&s.DropSrc, d.src)
	add(&s.DropDst, d.dst)
	add(&s.DropPolicy, d.policy)
	add(&s.DropTooBig, d.tooBig)
	add(&s.ICMPTooBig, d.icmp)
	add(&s.DropNoLink, d.noLink)
	*d = dropCounts{}
}

// add skips the atomic (and its cache-line traffic) when there is nothing
// to add.
func add(c *atomic.Uint64, n uint64) {
	if n != 0 {
		c.Add(n)
	}
}
