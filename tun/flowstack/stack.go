package flowstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/flow"
)

// Defaults for the zero values of Config.
const (
	DefaultMaxPending     = 256
	DefaultMaxFlows       = 4096
	DefaultConnectTimeout = 15 * time.Second
)

// TCP tuning (see the package doc, "Memory").
const (
	tcpBufDefault  = 1 << 20
	tcpBufMax      = 4 << 20
	tcpTimeWait    = 5 * time.Second
	outQueueLen    = 2048
	outQueueWait   = time.Second // see link
	protoTCP       = 6
	nicID          = tcpip.NICID(1)
	minMTU, maxMTU = 576, 65535
)

// Config configures a Stack. The zero value of each optional field selects
// the documented default.
type Config struct {
	// Dev is the packet device the Stack reads from and writes to: the
	// TUN. Required. The Stack owns it from New on (also when New fails)
	// and closes it on Close.
	Dev datagram.Device

	// MTU is the MTU gVisor uses on the device side (its TCP MSS is
	// derived from it). If zero, Dev.MTU(). It must be in [576, 65535];
	// IPv6 flows need at least 1280.
	MTU int

	// Connect opens the upstream flow for a TCP connection from src (the
	// application) to dst (the address it connected to), before the
	// local handshake completes. ctx carries ConnectTimeout and is
	// cancelled by Close; Connect must return when it is done. On
	// success the Stack owns the returned Stream (and aborts it if the
	// local handshake then fails). An error chooses what the application
	// sees: a *flow.Error (in the chain) of Kind Unreachable gives an
	// ICMP unreachable, anything else a RST. Required.
	Connect func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error)

	// ConnectTimeout bounds each Connect; when it elapses the application
	// gets a RST. If zero, DefaultConnectTimeout (15 s).
	ConnectTimeout time.Duration

	// MaxPending bounds SYNs waiting for Connect (gVisor's forwarder
	// maxInFlight); further SYNs are dropped and retransmitted by the
	// application. If zero, DefaultMaxPending (256).
	MaxPending int

	// MaxFlows bounds flows, connecting or established; beyond it a SYN
	// gets a RST. If zero, DefaultMaxFlows (4096).
	MaxFlows int

	// MaxInbound bounds the TCP connections opened toward the host from
	// the tunnel that are tracked at once (see the package doc, "Inbound
	// TCP"); while the table is full, new inbound SYNs are dropped and
	// counted (the peer retransmits them). An entry takes about 160
	// bytes (10 MiB for 65536). If zero, DefaultMaxInbound (65536).
	MaxInbound int

	// Logger receives start/stop and per-flow debug messages, never one
	// per packet. If nil, nothing is logged.
	Logger *slog.Logger
}

// Stats are counters since New (FlowsActive and FlowsPending are gauges).
type Stats struct {
	FlowsOpened      uint64 // Connect succeeded and the local handshake completed
	FlowsActive      int64  // established flows being spliced
	FlowsPending     int64  // SYNs whose Connect is in progress
	FlowsRefused     uint64 // Connect failed with Refused, Prohibited or LimitReached: RST
	FlowsUnreachable uint64 // Connect failed with Unreachable: ICMP unreachable (or RST if the SYN was not recorded)
	FlowsFailed      uint64 // Connect failed otherwise (Timeout, Other, ...) -- RST -- or the local handshake failed after it
	FlowsOverLimit   uint64 // SYNs answered with RST because MaxFlows flows exist
	FlowErrors       uint64 // established flows that ended with a reset or error rather than two FINs

	BytesUp   uint64 // application -> upstream stream
	BytesDown uint64 // upstream stream -> application

	PacketsDiverted uint64 // TCP packets Read took from the device into gVisor
	PacketsInbound  uint64 // TCP packets of inbound connections Read passed through (not diverted)
	PacketsOut      uint64 // packets written to the device by gVisor (and ICMP errors)
	DropOutQueue    uint64 // gVisor packets dropped because the device writer fell behind: the queue stayed full for a write's 1 s, or after that until the writer took a packet
	DropBufTooSmall uint64 // non-TCP packets Read dropped: the caller's bufs differ in size and one did not fit (or the device reported an impossible size)
	WriteErrors     uint64 // device writes of gVisor's packets that failed other than by closure

	// Inbound TCP connections (opened toward the host from the tunnel;
	// see the package doc, "Inbound TCP").
	InboundTracked uint64 // entries created by an inbound SYN
	InboundActive  int64  // entries in the table (expired ones until they are swept)
	InboundClosed  uint64 // entries ended by a RST, or by FINs both ways and the linger
	InboundExpired uint64 // entries ended by their idle timeout
	InboundDropped uint64 // inbound SYNs dropped: the table was full, or the connection is one of the flows
}

type counters struct {
	opened, refused, unreach, failed, overLimit, flowErr atomic.Uint64
	active, pending                                      atomic.Int64
	up, down                                             atomic.Uint64
	diverted, out, dropQueue, dropSmall, writeErr        atomic.Uint64
}

// Stack is the userspace TCP terminator; it implements datagram.Device.
// Create it with New.
type Stack struct {
	cfg     Config
	log     *slog.Logger
	dev     datagram.Device
	st      *stack.Stack
	link    *link
	ctx     context.Context // cancelled by Close; parent of every Connect and Splice
	cancel  context.CancelFunc
	syns    synTable
	conns   *connTable // inbound TCP connections
	gro     gro.GRO    // used by Read only (one goroutine at a time)
	cnt     counters
	devMu   sync.Mutex // serializes dev.Write between Write and the gVisor writer
	flowCnt atomic.Int64

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	writerWG  sync.WaitGroup

	mu      sync.Mutex
	closing bool           // guarded by mu; set once by Close
	flows   sync.WaitGroup // forwarder handlers that passed enter; Add only under mu with !closing
}

var _ datagram.Device = (*Stack)(nil)

// New validates cfg and starts the Stack (gVisor and one device writer
// goroutine). It does not read from the device: the caller's Read does. If
// New fails, it closes cfg.Dev.
func New(cfg Config) (*Stack, error) {
	s, err := newStack(cfg)
	if err != nil {
		if cfg.Dev != nil {
			cfg.Dev.Close()
		}
		return nil, err
	}
	return s, nil
}

func newStack(cfg Config) (*Stack, error) {
	switch {
	case cfg.Dev == nil:
		return nil, errors.New("flowstack: Config.Dev is nil: want the TUN device")
	case cfg.Connect == nil:
		return nil, errors.New("flowstack: Config.Connect is nil: want the func that opens upstream flows")
	case cfg.MaxPending < 0:
		return nil, fmt.Errorf("flowstack: Config.MaxPending %d is negative (0 = %d)", cfg.MaxPending, DefaultMaxPending)
	case cfg.MaxFlows < 0:
		return nil, fmt.Errorf("flowstack: Config.MaxFlows %d is negative (0 = %d)", cfg.MaxFlows, DefaultMaxFlows)
	case cfg.MaxInbound < 0:
		return nil, fmt.Errorf("flowstack: Config.MaxInbound %d is negative (0 = %d)", cfg.MaxInbound, DefaultMaxInbound)
	case cfg.ConnectTimeout < 0:
		return nil, fmt.Errorf("flowstack: Config.ConnectTimeout %v is negative (0 = %v)", cfg.ConnectTimeout, DefaultConnectTimeout)
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxInbound == 0 {
		cfg.MaxInbound = DefaultMaxInbound
	}
	mtu := cfg.MTU
	if mtu == 0 {
		m, err := cfg.Dev.MTU()
		if err != nil {
			return nil, fmt.Errorf("flowstack: Config.MTU is 0 and Dev.MTU failed: %w", err)
		}
		mtu = m
	}
	if mtu < minMTU || mtu > maxMTU {
		return nil, fmt.Errorf("flowstack: MTU %d out of range: want %d..%d (Config.MTU, or Dev.MTU when it is 0)", mtu, minMTU, maxMTU)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "flowstack")

	s := &Stack{
		cfg:   cfg,
		log:   log,
		dev:   cfg.Dev,
		syns:  synTable{m: make(map[synKey][]byte), max: 2*cfg.MaxPending + 64},
		conns: newConnTable(cfg.MaxInbound),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.link = newLink(uint32(mtu), outQueueLen, outQueueWait, &s.cnt.dropQueue)
	s.gro.Init(true)
	if err := s.startGVisor(); err != nil {
		s.cancel()
		return nil, err
	}
	s.writerWG.Add(1)
	go s.deviceWriter()
	log.Info("flow stack started", "mtu", mtu, "max_pending", cfg.MaxPending, "max_flows", cfg.MaxFlows,
		"connect_timeout", cfg.ConnectTimeout, "max_inbound", cfg.MaxInbound)
	return s, nil
}

// startGVisor creates the gVisor stack: one NIC, promiscuous and spoofing,
// default routes for both families, TCP only, with the forwarder.
func (s *Stack) startGVisor() error {
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	fail := func(what string, err tcpip.Error) error {
		st.Destroy()
		return fmt.Errorf("flowstack: gVisor: %s: %s", what, err)
	}
	sack := tcpip.TCPSACKEnabled(true)
	cc := tcpip.CongestionControlOption("cubic")
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	timeWait := tcpip.TCPTimeWaitTimeoutOption(tcpTimeWait)
	opts := []tcpip.SettableTransportProtocolOption{
		&sack, &cc, &moderate, &timeWait,
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufDefault, Max: tcpBufMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufDefault, Max: tcpBufMax},
	}
	for _, o := range opts {
		if err := st.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fail(fmt.Sprintf("TCP option %T", o), err)
		}
	}
	if err := st.CreateNICWithOptions(nicID, s.link, stack.NICOptions{Name: "flowstack"}); err != nil {
		return fail("create NIC", err)
	}
	// Accept segments for any destination, and answer from it.
	if err := st.SetPromiscuousMode(nicID, true); err != nil {
		return fail("promiscuous mode", err)
	}
	if err := st.SetSpoofing(nicID, true); err != nil {
		return fail("spoofing", err)
	}
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	fwd := tcp.NewForwarder(st, tcpBufDefault, s.cfg.MaxPending, s.handleSYN)
	st.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	s.st = st
	return nil
}

// Read reads packets from the device into bufs (packet i at
// bufs[i][offset:offset+sizes[i]], as datagram.Device.Read) and returns
// those that are not TCP: TCP packets go to gVisor, and the remaining
// packets are moved down (copied) to fill bufs[0:n] in order. If a whole
// batch was TCP it reads again, so it never returns 0 packets with a nil
// error. A non-TCP packet that does not fit the (smaller) buffer it is
// moved to is dropped and counted (give Read buffers of one size). TCP
// checksums are verified only for the segments GRO merges; others are
// accepted as the device delivered them (a TUN's are correct). After Close
// it returns os.ErrClosed. One goroutine at a time may call Read; it also
// runs gVisor's receive processing for the batch.
func (s *Stack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		if s.closed.Load() {
			return 0, os.ErrClosed
		}
		n, err := s.dev.Read(bufs, sizes, offset)
		k := s.divert(bufs, sizes, offset, min(n, len(bufs), len(sizes)))
		if k > 0 || err != nil {
			return k, err
		}
	}
}

// divert hands the TCP packets among the first n to gVisor and compacts the
// rest; it returns how many remain. The TCP packets of the batch go through
// gVisor's GRO, which merges consecutive segments of a flow (a Linux TUN
// splits the kernel's GSO bursts into MTU-sized packets) so that gVisor's
// TCP processes one large segment instead of dozens: this cut the upload
// CPU cost by 40% (BenchmarkKernelTUN). GRO verifies the IP and TCP
// checksums of what it merges but does not fix the IPv4 header checksum of
// a merged packet, so the link claims RX checksum offload and gVisor
// verifies nothing itself: a packet GRO passes on unverified (IP options,
// fragments, a bad checksum) is accepted as is. A TUN's packets come from
// the local kernel and carry correct checksums (wireguard's TUN completes
// partial ones), so this costs nothing in practice.
func (s *Stack) divert(bufs [][]byte, sizes []int, offset, n int) int {
	var p datagram.Packet
	var diverted uint64
	now := clock{t: s.conns}
	d := s.link.dispatcher()
	s.gro.Dispatcher = d
	k := 0
	for i := range n {
		if sizes[i] < 0 || offset+sizes[i] > len(bufs[i]) {
			// A device bug: leave it in place for the pump to count, or
			// drop it if it would have to move.
			if k == i {
				k++
			} else {
				s.cnt.dropSmall.Add(1)
			}
			continue
		}
		pkt := bufs[i][offset : offset+sizes[i]]
		if p.Decode(pkt) == nil && p.Proto == protoTCP && !s.conns.fromHost(pkt[:p.Len], &p, &now) {
			if d != nil {
				s.inject(pkt[:p.Len], &p)
			}
			diverted++
			continue
		}
		if k != i {
			if len(bufs[k])-offset < len(pkt) {
				s.cnt.dropSmall.Add(1)
				continue
			}
			copy(bufs[k][offset:], pkt)
			sizes[k] = sizes[i]
		}
		k++
	}
	if diverted > 0 {
		if d != nil {
			s.gro.Flush()
		}
		s.cnt.diverted.Add(diverted)
	}
	return k
}

// inject queues one decoded TCP packet for gVisor (s.gro, flushed by
// divert), first recording a SYN so that an ICMP error can quote it. The
// packet is copied.
func (s *Stack) inject(pkt []byte, p *datagram.Packet) {
	if p.FragOffset == 0 && p.HdrLen+14 <= len(pkt) {
		if flags := pkt[p.HdrLen+13]; flags&0x12 == 0x02 { // SYN without ACK
			th := pkt[p.HdrLen:]
			key := synKey{
				src: netip.AddrPortFrom(p.Src, uint16(th[0])<<8|uint16(th[1])),
				dst: netip.AddrPortFrom(p.Dst, uint16(th[2])<<8|uint16(th[3])),
			}
			s.syns.put(key, pkt)
		}
	}
	pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	pkb.NetworkProtocolNumber = ipv4.ProtocolNumber
	if p.Version == 6 {
		pkb.NetworkProtocolNumber = ipv6.ProtocolNumber
	}
	s.gro.Enqueue(pkb)
	pkb.DecRef()
}

// Write writes packets from the tunnel to the device, serialized with the
// Stack's own writes (gVisor's output). It tracks the TCP connections they
// open toward the host (see the package doc, "Inbound TCP"), and drops an
// inbound SYN that the table has no room for or whose connection is one of
// the flows; the returned count includes dropped packets, the error is
// Dev.Write's. The caller keeps ownership of bufs (the device may rewrite
// them, as datagram.Device.Write says). After Close it returns
// os.ErrClosed.
func (s *Stack) Write(bufs [][]byte, offset int) (int, error) {
	if s.closed.Load() {
		return 0, os.ErrClosed
	}
	var keep [][]byte // nil unless a packet is dropped
	var p datagram.Packet
	now := clock{t: s.conns}
	for i, b := range bufs {
		ok := true
		if offset <= len(b) && maybeTCP(b[offset:]) && p.Decode(b[offset:]) == nil && p.Proto == protoTCP {
			ok = s.conns.fromTunnel(b[offset:offset+p.Len], &p, &now, s.flowInUse)
		}
		switch {
		case !ok && keep == nil:
			keep = append(make([][]byte, 0, len(bufs)-1), bufs[:i]...)
		case ok && keep != nil:
			keep = append(keep, b)
		}
	}
	dropped := 0
	if keep != nil {
		dropped = len(bufs) - len(keep)
		if len(keep) == 0 {
			return dropped, nil
		}
		bufs = keep
	}
	s.devMu.Lock()
	defer s.devMu.Unlock()
	n, err := s.dev.Write(bufs, offset)
	return n + dropped, err
}

// BatchSize returns Dev.BatchSize().
func (s *Stack) BatchSize() int { return s.dev.BatchSize() }

// MTU returns Dev.MTU().
func (s *Stack) MTU() (int, error) { return s.dev.MTU() }

// Done is closed when Close starts.
func (s *Stack) Done() <-chan struct{} { return s.ctx.Done() }

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.cnt
	return Stats{
		FlowsOpened:      c.opened.Load(),
		FlowsActive:      c.active.Load(),
		FlowsPending:     c.pending.Load(),
		FlowsRefused:     c.refused.Load(),
		FlowsUnreachable: c.unreach.Load(),
		FlowsFailed:      c.failed.Load(),
		FlowsOverLimit:   c.overLimit.Load(),
		FlowErrors:       c.flowErr.Load(),
		BytesUp:          c.up.Load(),
		BytesDown:        c.down.Load(),
		PacketsDiverted:  c.diverted.Load(),
		PacketsOut:       c.out.Load(),
		DropOutQueue:     c.dropQueue.Load(),
		DropBufTooSmall:  c.dropSmall.Load(),
		WriteErrors:      c.writeErr.Load(),
		PacketsInbound:   s.conns.packets.Load(),
		InboundTracked:   s.conns.tracked.Load(),
		InboundActive:    s.conns.len(),
		InboundClosed:    s.conns.closed.Load(),
		InboundExpired:   s.conns.expired.Load(),
		InboundDropped:   s.conns.dropped.Load(),
	}
}

// Close stops the Stack: Connects in progress are cancelled, every flow is
// aborted (RST to the application, reset upstream), gVisor is stopped and
// the device closed; blocked and later Reads and Writes return
// os.ErrClosed. It waits for the Stack's goroutines, is idempotent, and
// returns the device's Close error.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		s.cancel()
		s.link.stopInbound()

		// Handlers blocked in a local handshake (CreateEndpoint) wait for
		// their endpoint to connect or fail; aborting the registered
		// endpoints fails them. A handler may create its endpoint just
		// after a round, so repeat until all are gone.
		done := make(chan struct{})
		go func() { s.flows.Wait(); close(done) }()
		tick := time.NewTicker(10 * time.Millisecond)
		for waiting := true; waiting; {
			for _, ep := range s.st.RegisteredEndpoints() {
				ep.Abort()
			}
			select {
			case <-done:
				waiting = false
			case <-tick.C:
			}
		}
		tick.Stop()

		s.st.Close()
		s.st.Wait()
		s.link.close()
		s.closeErr = s.dev.Close()
		s.writerWG.Wait()
		s.log.Info("flow stack stopped", "flows_opened", s.cnt.opened.Load())
	})
	return s.closeErr
}

// enter registers a forwarder handler; it fails once Close has started.
func (s *Stack) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.flows.Add(1)
	return true
}
