// Package fec is Roam's forward-error-correction layer under QUIC: a
// packet-level Reed-Solomon code between a Roam client and server, so that
// random loss on the path is repaired before quic-go's loss detection (and
// its loss-based congestion controller) sees it.
//
// The portable core is the frame format (this file), the Encoder (one per
// peer, sending side) and the Decoder (one per peer, receiving side); they
// work on byte slices and keep no sockets. Conn (Linux) wraps a UDP socket
// for a quic.Transport and keeps quic-go's GSO, ECN and batched reads.
//
// FEC frames are told apart from QUIC packets by the first byte: every QUIC
// packet has the fixed bit (0x40) set, every FEC frame has both 0x80 and
// 0x40 clear. The wire format is described in docs/fec.md.
package fec

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Frame types (the first byte of a frame; 0x80 and 0x40 are always clear).
const (
	// TypeData carries one QUIC packet that no parity protects: the
	// receiver delivers it at once.
	TypeData byte = 0x01
	// TypeDataProtected carries one QUIC packet that belongs to a block
	// parity frames will follow for: the receiver holds later packets
	// while one is missing, for a bounded time.
	TypeDataProtected byte = 0x02
	// TypeParity carries one Reed-Solomon parity shard of a block.
	TypeParity byte = 0x03
	// TypeReport carries the receiver's loss counts and the parity it
	// asks its peer for.
	TypeReport byte = 0x04
)

// Header sizes.
const (
	DataHeaderLen   = 5  // type, sequence number (4)
	ParityHeaderLen = 8  // type, block base (4), data count - 1, parity count - 1, index
	ReportLen       = 11 // type, want K, want M, received (4), lost (4)
	shardLenPrefix  = 2  // every shard starts with the packet's length

	// Overhead is what FEC adds to each QUIC packet on the wire.
	Overhead = DataHeaderLen
	// ParityOverhead is how much larger than the largest QUIC packet of
	// its block a parity frame is.
	ParityOverhead = ParityHeaderLen + shardLenPrefix
)

// Limits of the code.
const (
	MaxK = 64 // data packets per block
	MaxM = 32 // parity packets per block
	// AutoM in a report's want-M field asks the peer to choose the parity
	// from the reported loss.
	AutoM = 0xff
)

// IsFEC reports whether a datagram starting with b0 is an FEC frame (both
// the QUIC form bit and the fixed bit clear) rather than a QUIC packet.
func IsFEC(b0 byte) bool { return b0&0xc0 == 0 }

// Frame is a parsed frame. Payload aliases the buffer it was parsed from.
type Frame struct {
	Type byte
	// Seq is the data sequence number (data frames) or the sequence
	// number of the first data packet of the block (parity frames).
	Seq uint32
	// N and M are the block's data and parity counts, Index the parity
	// shard's index (0..M-1); parity frames only.
	N, M, Index int
	// Payload is the QUIC packet (data frames) or the parity shard.
	Payload []byte
	// Report fields: the parity the sender of the report asks for (WantK
	// 0: no request; WantM AutoM: adapt to loss) and its counts of data
	// frames received and lost since its previous report.
	WantK, WantM   int
	Received, Lost uint32
}

// Errors from Parse; a frame that fails to parse is dropped and counted.
var (
	ErrNotFEC    = errors.New("fec: not an FEC frame")
	ErrTruncated = errors.New("fec: truncated frame")
	ErrBadFrame  = errors.New("fec: malformed frame")
)

// Parse parses one frame. The returned Payload aliases b.
func Parse(b []byte) (Frame, error) {
	if len(b) == 0 || !IsFEC(b[0]) {
		return Frame{}, ErrNotFEC
	}
	f := Frame{Type: b[0]}
	switch f.Type {
	case TypeData, TypeDataProtected:
		if len(b) <= DataHeaderLen {
			return Frame{}, ErrTruncated
		}
		f.Seq = binary.BigEndian.Uint32(b[1:])
		f.Payload = b[DataHeaderLen:]
	case TypeParity:
		if len(b) <= ParityHeaderLen+shardLenPrefix {
			return Frame{}, ErrTruncated
		}
		f.Seq = binary.BigEndian.Uint32(b[1:])
		f.N, f.M, f.Index = int(b[5])+1, int(b[6])+1, int(b[7])
		if f.N > MaxK || f.M > MaxM || f.Index >= f.M {
			return Frame{}, fmt.Errorf("%w: parity %d of %d for %d packets", ErrBadFrame, f.Index, f.M, f.N)
		}
		f.Payload = b[ParityHeaderLen:]
	case TypeReport:
		if len(b) < ReportLen {
			return Frame{}, ErrTruncated
		}
		f.WantK, f.WantM = int(b[1]), int(b[2])
		if f.WantK > MaxK || (f.WantM > MaxM && f.WantM != AutoM) || (f.WantK == 0) != (f.WantM == 0) {
			return Frame{}, fmt.Errorf("%w: report asks for %d:%d", ErrBadFrame, f.WantK, f.WantM)
		}
		f.Received = binary.BigEndian.Uint32(b[3:])
		f.Lost = binary.BigEndian.Uint32(b[7:])
	default:
		return Frame{}, fmt.Errorf("%w: type %#x", ErrBadFrame, f.Type)
	}
	return f, nil
}

// AppendData appends a data frame carrying pkt.
func AppendData(b []byte, protected bool, seq uint32, pkt []byte) []byte {
	t := TypeData
	if protected {
		t = TypeDataProtected
	}
	b = append(b, t)
	b = binary.BigEndian.AppendUint32(b, seq)
	return append(b, pkt...)
}

// AppendParityHeader appends a parity frame's header; the shard follows.
func AppendParityHeader(b []byte, base uint32, n, m, index int) []byte {
	b = append(b, TypeParity)
	b = binary.BigEndian.AppendUint32(b, base)
	return append(b, byte(n-1), byte(m-1), byte(index))
}

// AppendReport appends a report frame.
func AppendReport(b []byte, wantK, wantM int, received, lost uint32) []byte {
	b = append(b, TypeReport, byte(wantK), byte(wantM))
	b = binary.BigEndian.AppendUint32(b, received)
	return binary.BigEndian.AppendUint32(b, lost)
}
