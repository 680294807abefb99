package fec

import (
	"context"
	"net"
	"syscall"
	"time"
)

// PacketConn is what Conn wraps: a UDP socket as quic-go uses it with GSO,
// ECN and batched reads (*net.UDPConn, or a wrapper that embeds one).
type PacketConn interface {
	net.PacketConn
	SyscallConn() (syscall.RawConn, error)
	SetReadBuffer(int) error
	ReadMsgUDP(b, oob []byte) (n, oobn, flags int, addr *net.UDPAddr, err error)
	WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error)
}

// Remote is a connection a server's Conn may send FEC frames to (a
// *quic.Conn on which FEC was negotiated; see Conn.Bind). RemoteAddr is
// its current peer address, which changes when the peer migrates or its
// NAT rebinds; Context is done once the connection is closed.
type Remote interface {
	RemoteAddr() net.Addr
	Context() context.Context
}

// Config configures a Conn. Zero fields take the defaults.
type Config struct {
	// Accept makes the Conn decode valid FEC frames from any address and
	// answer an address with FEC frames once it is also the current
	// address of a connection passed to Bind (the server). Without it,
	// only addresses passed to Enable send or get frames (the client).
	Accept bool
	// Hold bounds how long a packet that follows a missing one waits for
	// it (default 25 ms). A gap is given up on sooner once a later block's
	// parity shows its own cannot rebuild it; the bound covers parity
	// that is late (a busy sender) or lost with nothing sent after it.
	Hold time.Duration
	// Flush is how long a partial block waits for more packets before its
	// parity is sent (default 1 ms).
	Flush time.Duration
	// MaxPeers bounds the addresses with FEC state (default 4096); Idle
	// is how long an address that sends nothing keeps it (default 1 min).
	MaxPeers int
	Idle     time.Duration
}

const (
	defaultHold     = 25 * time.Millisecond
	defaultFlush    = time.Millisecond
	defaultMaxPeers = 4096
	defaultIdle     = time.Minute
	// rescanMin and rescanMax bound how often a server's Conn follows its
	// bound connections to their current addresses (see Conn.rescan).
	rescanMin      = 10 * time.Millisecond
	rescanMax      = time.Second
	reportInterval = 50 * time.Millisecond
	// lossDecay is how much of the loss history each report keeps (about
	// a second of memory at one report per 50 ms).
	lossDecay = 0.95
	// priorLost and priorTotal are the loss history a new peer starts
	// with (auto policy): one loss in 200 packets.
	priorLost, priorTotal = 1, 200
	// cleanLoss is the loss rate below which the auto policy sends no
	// parity.
	cleanLoss = 1e-5
	// The read buffers: without GRO, readBatch datagrams of up to
	// rbufSize (more than any QUIC packet quic-go sends or reads); with
	// GRO, fewer but room for a coalesced datagram (at most 64 KiB):
	// 4 × 64 KiB = 256 KiB per Conn, rather than 512 KiB at readBatch,
	// since one coalesced datagram holds up to 64 packets.
	rbufSize     = 2048
	readBatch    = 8
	rbufSizeGRO  = 64 << 10
	readBatchGRO = 4
)

// Stats counts what a Conn did, over all peers, since it was made.
type Stats struct {
	DecoderStats
	// Peers is the number of addresses with FEC state now; Sending of
	// them are sent frames (on a server: those that are the current
	// address of a bound connection), the others' frames are only
	// decoded.
	Peers, Sending int
	// DataFrames and ParityFrames count frames sent; Reports counts
	// reports sent.
	DataFrames, ParityFrames, Reports uint64
	// NoPeer counts FEC frames from addresses without FEC state (dropped);
	// PeersRefused counts addresses refused because the table was full.
	NoPeer, PeersRefused uint64
	// K and M are the block shape last used for sending (M 0: frames
	// without parity), and PeerLoss the loss rate a peer reported last;
	// on a server with several peers, of one of them.
	K, M     int
	PeerLoss float64
}

// addDecoderStats adds b's counters to a.
func addDecoderStats(a, b *DecoderStats) {
	a.Received += b.Received
	a.Duplicates += b.Duplicates
	a.Late += b.Late
	a.Resyncs += b.Resyncs
	a.Recovered += b.Recovered
	a.Unrecovered += b.Unrecovered
	a.Lost += b.Lost
	a.Held += b.Held
	a.HoldTimeouts += b.HoldTimeouts
	a.Hopeless += b.Hopeless
	a.Parity += b.Parity
	a.ParityUnused += b.ParityUnused
	a.Malformed += b.Malformed
}

// Add adds b's counters to s; the gauges (Peers is summed) are b's if b
// has peers.
func (s *Stats) Add(b Stats) {
	addDecoderStats(&s.DecoderStats, &b.DecoderStats)
	s.DataFrames += b.DataFrames
	s.ParityFrames += b.ParityFrames
	s.Reports += b.Reports
	s.NoPeer += b.NoPeer
	s.PeersRefused += b.PeersRefused
	if b.Peers > 0 {
		s.Peers += b.Peers
		s.Sending += b.Sending
		s.K, s.M, s.PeerLoss = b.K, b.M, b.PeerLoss
	}
}
