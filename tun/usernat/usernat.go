package usernat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Defaults for the zero values of Config.
const (
	DefaultMTU            = 1280
	DefaultDialTimeout    = 10 * time.Second
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultMaxFlows       = 65536
)

// batchSize is what BatchSize reports: Read fills up to len(bufs) packets
// anyway; this is the batch a caller should size its buffers for.
const batchSize = 64

// TCP tuning (see the package doc, "Memory").
const (
	tcpBufDefault = 1 << 20
	tcpBufMax     = 8 << 20
	// Keepalive on the client side of each TCP flow, so a client that
	// vanished without a FIN or RST does not pin a flow forever:
	// 10 min idle + 9 probes 30 s apart.
	tcpKeepaliveIdle     = 10 * time.Minute
	tcpKeepaliveInterval = 30 * time.Second
	tcpKeepaliveCount    = 9
	// maxInFlight bounds TCP handshakes waiting for their dial; SYNs beyond
	// it are ignored (the client retransmits).
	maxInFlight = 1024
)

const nicID tcpip.NICID = 1

// Config configures a Stack. The zero value of each field selects the
// documented default.
type Config struct {
	// MTU is the largest IP packet Read returns and the MTU the stack uses
	// for its TCP MSS and fragmentation. It should equal the MTU of the
	// tunnel the packets travel. If zero, DefaultMTU (1280) is used. It must
	// be in [576, 65535], and at least 1280 when Gateway6 is set.
	MTU int

	// Gateway4 and Gateway6 are the server's own addresses inside the
	// tunnel (the first address of each client pool). TCP and UDP to
	// Gateway4:port are dialed to 127.0.0.1:port, to Gateway6:port to
	// [::1]:port; ICMP echo to them is answered by the stack itself.
	// Either may be the zero Addr (no gateway of that family); at least one
	// is required. Gateway4 must be IPv4, Gateway6 IPv6.
	Gateway4, Gateway6 netip.Addr

	// DNS is the host's resolver (typically the first nameserver of the
	// server host's /etc/resolv.conf, see dns.HostResolver in tun/dns).
	// If set, UDP and TCP to port 53 of either gateway are forwarded to
	// it instead of to loopback port 53, so the gateways can be pushed to
	// clients as their DNS server: with a resolver such as
	// systemd-resolved's 127.0.0.53, or one on another host, loopback
	// port 53 would answer nothing. A loopback resolver is fine (the
	// server's own sockets dial it). If the zero AddrPort, gateway port 53
	// is loopback port 53 like every other port.
	DNS netip.AddrPort

	// Prefixes are the client address pools. If not empty, packets whose
	// source is outside every prefix are dropped (DropSource), as are
	// packets to pool addresses other than the gateways (client-to-client
	// traffic is the tunnel's job), and each gateway must lie inside a
	// prefix. If empty, no source check is made.
	Prefixes []netip.Prefix

	// DialTimeout bounds dialing the real destination of a TCP flow; the
	// client's handshake waits for it. If zero, DefaultDialTimeout (10 s).
	DialTimeout time.Duration

	// UDPIdleTimeout closes a UDP flow (and an ICMP echo mapping) without
	// traffic in either direction for this long. If zero,
	// DefaultUDPIdleTimeout (60 s).
	UDPIdleTimeout time.Duration

	// MaxFlows bounds concurrent TCP+UDP flows (including TCP flows still
	// dialing). Beyond it a TCP SYN gets a RST and a UDP datagram that would
	// open a flow is dropped; both are counted in Stats.FlowLimitDrops. If
	// zero, DefaultMaxFlows (65536). Separately, at most 1024 TCP dials run
	// at once; SYNs beyond that are ignored (the client retransmits them).
	MaxFlows int

	// Logger receives start/stop and configuration messages, and per-flow
	// debug messages; never one per packet. If nil, nothing is logged.
	Logger *slog.Logger

	// Dial opens the host side of a flow: network is "tcp4", "tcp6", "udp4"
	// or "udp6" and address a literal "ip:port" (a gateway already mapped
	// to loopback); ctx carries DialTimeout and is cancelled by Close. If
	// nil, a zero net.Dialer is used. Tests use it to inject failures; a
	// server may use it to bind an egress address or apply a policy (an
	// error makes a TCP client get a RST and drops the UDP datagrams).
	Dial func(ctx context.Context, network, address string) (net.Conn, error)

	// echoListen and echoMode replace the ICMP socket opener and skip
	// mode probing (tests).
	echoListen func(network, address string) (icmpConn, error)
	echoMode   echoMode
}

// Stats are cumulative counters (except the *Active gauges) since New.
type Stats struct {
	PacketsIn  uint64 // client packets accepted by Write (to the stack or the echo proxy)
	PacketsOut uint64 // packets returned by Read

	TCPFlowsOpened uint64 // TCP flows whose dial and handshake succeeded
	TCPFlowsActive int64
	UDPFlowsOpened uint64
	UDPFlowsActive int64
	DialFailures   uint64 // host dials (TCP or UDP) that failed; TCP ones were answered with RST
	FlowLimitDrops uint64 // TCP SYNs reset and UDP datagrams dropped because MaxFlows was reached
	UDPDrops       uint64 // datagrams of open UDP flows that could not be passed on

	DropMalformed   uint64 // packets that do not parse as IPv4/IPv6 (or bad ICMP checksum on echo)
	DropSource      uint64 // source not a client address (see Config.Prefixes)
	DropDestination uint64 // destination not reachable through the NAT (see package doc)
	DropUnsupported uint64 // protocol or ICMP type not carried
	StackInvalid    uint64 // packets gVisor itself rejected (sum of its IP, TCP, UDP and NIC header/checksum error counters)

	DropQueueFull      uint64 // outbound packets dropped because Read did not keep up
	DropBufferTooSmall uint64 // outbound packets larger than the buffer passed to Read

	EchoSent    uint64 // echo requests re-sent from a host ICMP socket
	EchoReplies uint64 // echo replies turned into packets for clients (queued unless DropQueueFull)
	EchoDrops   uint64 // echo requests or replies dropped (no ICMP socket, mapping limit, send error, too large)
}

// counters are the atomic backing of Stats.
type counters struct {
	in, out                     atomic.Uint64
	tcpOpened, udpOpened        atomic.Uint64
	tcpActive, udpActive        atomic.Int64
	dialFail, flowLimit, udpDrp atomic.Uint64
	malformed, source, dest     atomic.Uint64
	unsupported                 atomic.Uint64
	queueFull, tooSmall         atomic.Uint64
	echoSent, echoReply, echoDr atomic.Uint64
}

// flow is a TCP or UDP flow as the Stack's registry sees it.
type flow interface {
	clientAddr() netip.Addr
	// abort tears the flow down at once (TCP: reset both sides). It may
	// be called more than once and from any goroutine.
	abort()
}

// Stack is the userspace NAT device. Create it with New; it implements the
// packet device interface (Read, Write, BatchSize, MTU, Close).
type Stack struct {
	cfg    Config
	log    *slog.Logger
	rules  addrRules
	stack  *stack.Stack
	link   *link
	echo4  *echoProxy
	echo6  *echoProxy
	dial   func(ctx context.Context, network, address string) (net.Conn, error)
	ctx    context.Context // cancelled by Close; parent of every dial
	cancel context.CancelFunc
	epoch  time.Time

	cnt       counters
	closeOnce sync.Once
	closed    atomic.Bool

	mu         sync.Mutex
	flows      map[flow]struct{} // guarded by mu
	closedFlag bool              // guarded by mu; set by Close before waiting on wg
	wg         sync.WaitGroup    // flow goroutines; Add only under mu with !closedFlag, or from a goroutine already counted
	active     atomic.Int64      // TCP+UDP flows holding a MaxFlows slot
}

// New validates cfg and starts a Stack. The Stack owns no goroutines until
// traffic arrives; Close releases everything.
func New(cfg Config) (*Stack, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "usernat")

	s := &Stack{
		cfg:   cfg,
		log:   log,
		epoch: time.Now(),
		flows: make(map[flow]struct{}),
		rules: addrRules{
			gw4:      cfg.Gateway4,
			gw6:      cfg.Gateway6,
			prefixes: cfg.Prefixes,
		},
	}
	s.dial = cfg.Dial
	if s.dial == nil {
		d := &net.Dialer{}
		s.dial = d.DialContext
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.link = newLink(cfg.MTU, &s.cnt.queueFull)

	if err := s.startStack(); err != nil {
		s.cancel()
		return nil, err
	}

	deliver := func(pkt []byte) bool { return s.link.enqueue(outItem{raw: pkt}) }
	s.echo4 = newEchoProxy(false, cfg.UDPIdleTimeout, cfg.MTU, log, deliver, &s.cnt.echoSent, &s.cnt.echoReply, &s.cnt.echoDr)
	s.echo6 = newEchoProxy(true, cfg.UDPIdleTimeout, cfg.MTU, log, deliver, &s.cnt.echoSent, &s.cnt.echoReply, &s.cnt.echoDr)
	for _, p := range []*echoProxy{s.echo4, s.echo6} {
		if cfg.echoListen != nil {
			p.listen = cfg.echoListen
		}
		p.forceMode = cfg.echoMode
	}

	log.Info("userspace NAT started", "mtu", cfg.MTU, "gateway4", cfg.Gateway4, "gateway6", cfg.Gateway6,
		"prefixes", cfg.Prefixes, "max_flows", cfg.MaxFlows, "dns", cfg.DNS)
	return s, nil
}

func (c *Config) setDefaults() error {
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.UDPIdleTimeout == 0 {
		c.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	switch {
	case c.MTU < 576 || c.MTU > 65535:
		return fmt.Errorf("usernat: Config.MTU %d out of range: want 576..65535 (0 = %d)", c.MTU, DefaultMTU)
	case c.Gateway6.IsValid() && c.MTU < 1280:
		return fmt.Errorf("usernat: Config.MTU %d too small for IPv6 (Gateway6 is set): want >= 1280", c.MTU)
	case c.DialTimeout < 0:
		return fmt.Errorf("usernat: Config.DialTimeout %v is negative", c.DialTimeout)
	case c.UDPIdleTimeout < 0:
		return fmt.Errorf("usernat: Config.UDPIdleTimeout %v is negative", c.UDPIdleTimeout)
	case c.MaxFlows < 0:
		return fmt.Errorf("usernat: Config.MaxFlows %d is negative", c.MaxFlows)
	case !c.Gateway4.IsValid() && !c.Gateway6.IsValid():
		return errors.New("usernat: Config.Gateway4 and Config.Gateway6 are both unset: want at least one gateway address")
	case c.Gateway4.IsValid() && (!c.Gateway4.Is4() || c.Gateway4.IsUnspecified()):
		return fmt.Errorf("usernat: Config.Gateway4 %v: want a specific IPv4 address such as 10.0.0.1", c.Gateway4)
	case c.Gateway6.IsValid() && (!c.Gateway6.Is6() || c.Gateway6.Is4In6() || c.Gateway6.IsUnspecified() || c.Gateway6.Zone() != ""):
		return fmt.Errorf("usernat: Config.Gateway6 %v: want a specific IPv6 address without zone such as fd00::1", c.Gateway6)
	case c.DNS.IsValid() && (c.DNS.Addr().IsUnspecified() || c.DNS.Port() == 0):
		return fmt.Errorf("usernat: Config.DNS %v: want the host resolver's address and port such as 127.0.0.53:53", c.DNS)
	}
	c.DNS = netip.AddrPortFrom(c.DNS.Addr().Unmap(), c.DNS.Port())
	for _, p := range c.Prefixes {
		if c.DNS.IsValid() && p.Contains(c.DNS.Addr()) {
			return fmt.Errorf("usernat: Config.DNS %v lies in the client pool %v: want the host's own resolver, which queries are forwarded to", c.DNS, p)
		}
	}
	for i, p := range c.Prefixes {
		if !p.IsValid() {
			return fmt.Errorf("usernat: Config.Prefixes[%d] is not a valid prefix: want a CIDR such as 10.0.0.0/24", i)
		}
		c.Prefixes[i] = p.Masked()
	}
	for _, gw := range []struct {
		name string
		a    netip.Addr
	}{{"Gateway4", c.Gateway4}, {"Gateway6", c.Gateway6}} {
		if !gw.a.IsValid() || len(c.Prefixes) == 0 {
			continue
		}
		in := false
		for _, p := range c.Prefixes {
			in = in || p.Contains(gw.a)
		}
		if !in {
			return fmt.Errorf("usernat: Config.%s %v lies in none of Config.Prefixes %v: want the first address of a client pool", gw.name, gw.a, c.Prefixes)
		}
	}
	return nil
}

// startStack creates and configures the gVisor stack.
func (s *Stack) startStack() error {
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
	})
	fail := func(what string, err tcpip.Error) error {
		st.Destroy()
		return fmt.Errorf("usernat: %s: %s", what, err)
	}
	opts := []tcpip.SettableTransportProtocolOption{
		ptr(tcpip.TCPSACKEnabled(true)),
		ptr(tcpip.CongestionControlOption("cubic")),
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufDefault, Max: tcpBufMax},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpBufDefault, Max: tcpBufMax},
	}
	for _, o := range opts {
		if err := st.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fail(fmt.Sprintf("TCP option %T", o), err)
		}
	}
	if err := st.CreateNICWithOptions(nicID, s.link, stack.NICOptions{Name: "usernat"}); err != nil {
		return fail("create NIC", err)
	}
	// Accept packets for any destination and send from any source: the
	// stack impersonates every remote address.
	if err := st.SetPromiscuousMode(nicID, true); err != nil {
		return fail("promiscuous mode", err)
	}
	if err := st.SetSpoofing(nicID, true); err != nil {
		return fail("spoofing", err)
	}
	for _, gw := range []netip.Addr{s.cfg.Gateway4, s.cfg.Gateway6} {
		if !gw.IsValid() {
			continue
		}
		proto := ipv4.ProtocolNumber
		if gw.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(gw.AsSlice()).WithPrefix()}
		if err := st.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fail(fmt.Sprintf("add address %v", gw), err)
		}
	}
	st.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	tcpFwd := tcp.NewForwarder(st, 0, min(maxInFlight, s.cfg.MaxFlows), s.handleTCP)
	st.SetTransportProtocolHandler(tcp.ProtocolNumber, tcpFwd.HandlePacket)
	udpFwd := udp.NewForwarder(st, s.handleUDP)
	st.SetTransportProtocolHandler(udp.ProtocolNumber, udpFwd.HandlePacket)
	s.stack = st
	return nil
}

func ptr[T any](v T) *T { return &v }

// Write hands client packets to the NAT: packet i is bufs[i][offset:], a whole
// IPv4 or IPv6 packet. The packets are copied; bufs may be reused as soon as
// Write returns. Packets that are malformed or not allowed are dropped and
// counted in Stats, not reported as errors: Write returns len(bufs), nil
// unless the Stack is closed (0, os.ErrClosed). Write does not block on the
// network: at most it opens a host ICMP socket (dials run on flow goroutines).
func (s *Stack) Write(bufs [][]byte, offset int) (int, error) {
	if s.closed.Load() {
		return 0, os.ErrClosed
	}
	for _, b := range bufs {
		if offset < 0 || offset > len(b) {
			s.cnt.malformed.Add(1)
			continue
		}
		pkt := b[offset:]
		var info pktInfo
		switch s.rules.classify(pkt, &info) {
		case toStack:
			s.cnt.in.Add(1)
			proto := ipv4.ProtocolNumber
			if info.v6 {
				proto = ipv6.ProtocolNumber
			}
			s.link.deliver(proto, pkt[:info.end])
		case toEcho:
			s.echoRequest(pkt[:info.end], &info)
		case dropMalformed:
			s.cnt.malformed.Add(1)
		case dropSource:
			s.cnt.source.Add(1)
		case dropDestination:
			s.cnt.dest.Add(1)
		case dropUnsupported:
			s.cnt.unsupported.Add(1)
		}
	}
	return len(bufs), nil
}

// echoRequest passes a classified ICMP echo request to the host echo proxy.
func (s *Stack) echoRequest(pkt []byte, info *pktInfo) {
	m := pkt[info.l4:]
	if !icmpChecksumOK(info.v6, info.src, info.dst, m) {
		s.cnt.malformed.Add(1)
		return
	}
	s.cnt.in.Add(1)
	id := uint16(m[4])<<8 | uint16(m[5])
	seq := uint16(m[6])<<8 | uint16(m[7])
	p := s.echo4
	if info.v6 {
		p = s.echo6
	}
	p.send(info.src, info.dst, id, seq, m[8:])
}

// Read moves packets from the NAT toward clients into bufs: packet i is
// written to bufs[i][offset:] and its length stored in sizes[i]. It blocks
// until at least one packet is ready and returns up to len(bufs) packets
// (sizes must be at least as long). Each buffer should hold offset+MTU bytes;
// a packet that does not fit is dropped and counted. The caller owns bufs; the
// Stack keeps no reference after Read returns. Read does not allocate. After
// Close, blocked and later calls return 0, os.ErrClosed.
func (s *Stack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	if len(sizes) < len(bufs) {
		return 0, fmt.Errorf("usernat: Read: len(sizes) %d < len(bufs) %d", len(sizes), len(bufs))
	}
	if offset < 0 {
		return 0, fmt.Errorf("usernat: Read: negative offset %d", offset)
	}
	for _, b := range bufs {
		if offset > len(b) {
			return 0, fmt.Errorf("usernat: Read: offset %d beyond a buffer of %d bytes", offset, len(b))
		}
	}
	n, err := s.link.read(bufs, sizes, offset, &s.cnt.tooSmall)
	s.cnt.out.Add(uint64(n))
	return n, err
}

// BatchSize is the number of packets a caller should pass to Read and Write
// at a time (64). Read and Write accept any number.
func (s *Stack) BatchSize() int { return batchSize }

// MTU returns Config.MTU (after defaults). It never fails.
func (s *Stack) MTU() (int, error) { return s.cfg.MTU, nil }

// Close shuts the NAT down: it cancels dials in progress, resets every TCP
// flow on both sides, closes every UDP flow and every host socket, and makes
// blocked and later Read calls (and later Write calls) return os.ErrClosed.
// It waits for the Stack's goroutines to exit. It is idempotent and always
// returns nil.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.mu.Lock()
		s.closedFlag = true
		flows := make([]flow, 0, len(s.flows))
		for f := range s.flows {
			flows = append(flows, f)
		}
		s.mu.Unlock()

		s.cancel()
		s.link.close()
		for _, f := range flows {
			f.abort()
		}
		s.echo4.close()
		s.echo6.close()
		s.stack.Close() // aborts the remaining gVisor endpoints, handshakes included
		s.wg.Wait()
		s.stack.Wait()
		s.log.Info("userspace NAT stopped", "tcp_flows", s.cnt.tcpOpened.Load(), "udp_flows", s.cnt.udpOpened.Load())
	})
	return nil
}

// CloseClientFlows tears down every TCP flow (with a RST to both sides), UDP
// flow and ICMP echo mapping whose client address is client, and returns how
// many there were. The tunnel calls it when it releases or reassigns a client
// address, so an old session's flows never reach the next owner.
func (s *Stack) CloseClientFlows(client netip.Addr) int {
	s.mu.Lock()
	var victims []flow
	for f := range s.flows {
		if f.clientAddr() == client {
			victims = append(victims, f)
		}
	}
	s.mu.Unlock()
	for _, f := range victims {
		f.abort()
	}
	return len(victims) + s.echo4.forgetClient(client) + s.echo6.forgetClient(client)
}

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.cnt
	gs := s.stack.Stats()
	return Stats{
		PacketsIn:      c.in.Load(),
		PacketsOut:     c.out.Load(),
		TCPFlowsOpened: c.tcpOpened.Load(),
		TCPFlowsActive: c.tcpActive.Load(),
		UDPFlowsOpened: c.udpOpened.Load(),
		UDPFlowsActive: c.udpActive.Load(),
		DialFailures:   c.dialFail.Load(),
		FlowLimitDrops: c.flowLimit.Load(),
		UDPDrops:       c.udpDrp.Load(),

		DropMalformed:   c.malformed.Load(),
		DropSource:      c.source.Load(),
		DropDestination: c.dest.Load(),
		DropUnsupported: c.unsupported.Load(),
		StackInvalid: gs.IP.MalformedPacketsReceived.Value() + gs.TCP.InvalidSegmentsReceived.Value() +
			gs.TCP.ChecksumErrors.Value() + gs.UDP.MalformedPacketsReceived.Value() + gs.UDP.ChecksumErrors.Value() +
			gs.NICs.MalformedL4RcvdPackets.Value(),

		DropQueueFull:      c.queueFull.Load(),
		DropBufferTooSmall: c.tooSmall.Load(),

		EchoSent:    c.echoSent.Load(),
		EchoReplies: c.echoReply.Load(),
		EchoDrops:   c.echoDr.Load(),
	}
}

// enterFlow registers f and counts one goroutine in wg, unless the Stack is
// closing.
func (s *Stack) enterFlow(f flow) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closedFlag {
		return false
	}
	s.flows[f] = struct{}{}
	s.wg.Add(1)
	return true
}

// leaveFlow undoes enterFlow; call it from the counted goroutine when the
// flow is over.
func (s *Stack) leaveFlow(f flow) {
	s.mu.Lock()
	delete(s.flows, f)
	s.mu.Unlock()
	s.wg.Done()
}

// reserve takes one of the MaxFlows slots.
func (s *Stack) reserve() bool {
	if s.active.Add(1) > int64(s.cfg.MaxFlows) {
		s.active.Add(-1)
		s.cnt.flowLimit.Add(1)
		return false
	}
	return true
}

func (s *Stack) release() { s.active.Add(-1) }

// target maps a destination seen by the stack to the host address to dial:
// the gateways become loopback, and their port 53 the DNS resolver if set.
func (s *Stack) target(proto string, dst netip.Addr, port uint16) (network, address string) {
	gw := (s.cfg.Gateway4.IsValid() && dst == s.cfg.Gateway4) || (s.cfg.Gateway6.IsValid() && dst == s.cfg.Gateway6)
	switch {
	case gw && port == 53 && s.cfg.DNS.IsValid():
		dst, port = s.cfg.DNS.Addr(), s.cfg.DNS.Port()
	case s.cfg.Gateway4.IsValid() && dst == s.cfg.Gateway4:
		dst = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case s.cfg.Gateway6.IsValid() && dst == s.cfg.Gateway6:
		dst = netip.IPv6Loopback()
	}
	if dst.Is4() {
		network = proto + "4"
	} else {
		network = proto + "6"
	}
	return network, netip.AddrPortFrom(dst, port).String()
}

// addrOf converts a gVisor address to a netip.Addr.
func addrOf(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}
