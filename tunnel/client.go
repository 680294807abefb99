package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/fec"
	"github.com/roamvpn/roam/tunnel/flow"
)

// DeviceConfig is what a client's tunnel device is created with, once the
// server has assigned addresses and advertised routes.
type DeviceConfig struct {
	// Addresses are the assigned tunnel addresses (an IPv4 /32 and an IPv6
	// /128 from a Roam server).
	Addresses []netip.Prefix
	// Routes are the advertised routes intersected with the requested
	// ones: what the device should route into the tunnel.
	Routes []netip.Prefix
	// MTU is the tunnel MTU (TunnelMTU).
	MTU int
	// DNS are the resolvers the server pushed (DNS_ASSIGN), in preference
	// order; nil if it pushed none. The server routes them through the
	// tunnel; the device configures the host to use them, or not.
	DNS []netip.Addr
}

// ClientConfig configures a tunnel client.
type ClientConfig struct {
	// Server is the server's host:port. Required. It is resolved again
	// for every reconnect.
	Server string
	// Token is the bearer token. Required.
	Token string
	// Pin, if set, is the SHA-256 of the server's DER certificate; the
	// certificate is then accepted on its pin alone. If nil, the server's
	// certificate is verified against RootCAs (nil = the system roots) for
	// ServerName.
	Pin *[32]byte
	// ServerName is the TLS server name; empty means the host of Server.
	ServerName string
	// RootCAs, if set, replaces the system roots (tests).
	RootCAs *x509.CertPool
	// Routes are what the user wants through the tunnel; the device gets
	// their intersection with the server's advertisement. Nil means
	// DefaultRoutes (full tunnel).
	Routes []netip.Prefix
	// ListenPacket opens a UDP socket for the tunnel, bound to the local
	// address local (any address, port 0, when local is the zero Addr).
	// Required. The client calls it for its first connection, for every
	// path it migrates to and for every reconnect, and closes each socket
	// once the connection that used it has ended (at the latest when Run
	// returns). With a Monitor, local is the address the host's route to
	// the server uses: a socket bound to it cannot start sending from
	// another address after a network change, which the server would take
	// for yet another path of the connection. In full-tunnel mode the
	// sockets must be kept out of the tunnel (a socket mark).
	ListenPacket func(local netip.Addr) (net.PacketConn, error)
	// Monitor, if set, tells the client when the host's network changes
	// and which way the server is reached; the client then migrates its
	// connection to the new path (or pauses while there is none). Nil:
	// the client only notices a dead path by its own liveness check.
	Monitor NetworkMonitor
	// NewDevice creates the tunnel device. Required. It is called once:
	// the device, its addresses and routes stay across migrations and
	// reconnects. The client closes the device (which must undo any host
	// configuration) when Run ends.
	NewDevice func(DeviceConfig) (datagram.Device, error)
	// FlowDevice, if set, turns on flow mode: each TCP connection is
	// carried as its own QUIC stream (an HTTP/3 CONNECT to its
	// destination, which the server dials) instead of as packets.
	// FlowDevice wraps the tunnel device in a userspace TCP terminator
	// (tun/flowstack.New) that calls open for every TCP connection the
	// host opens and passes every other packet through; the wrapper owns
	// dev. Everything that is not TCP still goes as CONNECT-IP datagrams.
	// Flows survive migrations but not a reconnect (their streams belong
	// to the lost connection). Nil: packet mode.
	FlowDevice func(dev datagram.Device, mtu int, open OpenFlow) (datagram.Device, error)
	// FEC is the forward error correction the client asks for (see
	// tunnel/fec and FECHeader); the zero Policy is off. It takes effect
	// only if the server agrees, per connection.
	FEC fec.Policy
	// SetupTimeout bounds the first dial and tunnel setup; zero means
	// DefaultSetupTimeout. Reconnects retry without a bound until Run's
	// context ends or the server refuses for good.
	SetupTimeout time.Duration
	// OnReady, if set, is called once the device is up.
	OnReady func(Info)
	// Logger receives connection-level events. Nil means silent.
	Logger *slog.Logger
}

// OpenFlow opens one flow from src to dst (both as the host's TCP saw
// them) and returns its stream once the server has connected, or a
// *flow.Error saying why not.
type OpenFlow func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error)

// NetworkMonitor reports changes of the host's network (tun.Monitor on
// Linux).
type NetworkMonitor interface {
	// Changes delivers a value after links, addresses or routes changed;
	// signals may coalesce.
	Changes() <-chan struct{}
	// PathTo returns the local address and interface the host uses now
	// to reach dst from the tunnel's sockets, or an error if there is no
	// route.
	PathTo(dst netip.Addr) (local netip.Addr, ifindex int, err error)
}

// Info describes an established tunnel.
type Info struct {
	Server    string
	Addresses []netip.Prefix
	Routes    []netip.Prefix
	MTU       int
}

// Client is a running tunnel client; see Run.
type Client struct {
	cfg      ClientConfig
	log      *slog.Logger
	stats    datagram.Stats
	sessions tls.ClientSessionCache // resumption tickets, for 0-RTT reconnects

	pathDrops  atomic.Uint64 // sends lost to a path that was down (see isPathDown)
	migrations atomic.Uint64
	reconnects atomic.Uint64
	flowsOpen  atomic.Int64 // flows open now (flow mode); see countedFlow
	fecTotal   fecTotals    // FEC counters of closed links

	status clientStatus               // for Status
	sup    atomic.Pointer[supervisor] // the running tunnel's supervisor; nil outside Run
}

// NewClient validates cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	switch {
	case cfg.Server == "":
		return nil, errors.New("tunnel: ClientConfig.Server is required")
	case cfg.Token == "":
		return nil, errors.New("tunnel: ClientConfig.Token is required")
	case cfg.ListenPacket == nil:
		return nil, errors.New("tunnel: ClientConfig.ListenPacket is required")
	case cfg.NewDevice == nil:
		return nil, errors.New("tunnel: ClientConfig.NewDevice is required")
	}
	if cfg.Routes == nil {
		cfg.Routes = DefaultRoutes
	}
	if cfg.SetupTimeout <= 0 {
		cfg.SetupTimeout = DefaultSetupTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: log.With("component", "client"), sessions: tls.NewLRUClientSessionCache(4)}
	c.status.set(stateConnecting)
	return c, nil
}

// FECStats returns the forward-error-correction counters of every
// connection so far (ClientConfig.FEC), and whether the current one uses
// FEC (the server agreed).
func (c *Client) FECStats() (fec.Stats, bool) {
	s := c.fecTotal.get()
	var on bool
	if sup := c.sup.Load(); sup != nil {
		if l := sup.cur.Load(); l != nil {
			var cur fec.Stats
			cur, on = l.fecStats()
			s.Add(cur)
		}
	}
	return s, on
}

// Stats returns the client's live packet counters.
func (c *Client) Stats() *datagram.Stats { return &c.stats }

// clientState is what the uplink filter checks, replaced as a whole when
// the server changes the assignment.
type clientState struct {
	addrs  []netip.Prefix // assigned: any source inside them is ours (RFC 9484 §4.7.1)
	routes routeSet
}

func (s *clientState) ownsSource(a netip.Addr) bool {
	for _, p := range s.addrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// deviceAddress is the address the device gets for an assigned prefix: the
// prefix itself for a /32 or /128, else its first host address (the network
// address of an IPv4 subnet is not usable as a host).
func deviceAddress(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if p.Bits() == p.Addr().BitLen() {
		return p
	}
	return netip.PrefixFrom(p.Addr().Next(), p.Bits())
}

// Run dials the server, sets up the tunnel and moves packets until ctx is
// cancelled (returns nil), the device fails, or the server refuses the
// client for good. A failure of the first connection is returned at once.
// After that, the client rides out network changes: it migrates the
// connection to new paths and, when the connection is lost, reconnects
// with backoff (0-RTT when it can), asking for the same addresses, while
// the device, its addresses and routes stay as they are. Run closes the
// device and every connection and socket before returning.
func (c *Client) Run(ctx context.Context) error {
	start := time.Now()
	c.status.set(stateConnecting)
	setupCtx, cancelSetup := context.WithTimeout(ctx, c.cfg.SetupTimeout)
	l, err := c.connect(setupCtx, nil)
	cancelSetup()
	if err != nil {
		return err
	}
	st := &clientState{
		addrs:  assigned(l.assign),
		routes: intersect(routesFromRanges(l.routes.Ranges), routesFromPrefixes(c.cfg.Routes)),
	}
	var prefixes []netip.Prefix
	for _, a := range st.addrs {
		prefixes = append(prefixes, deviceAddress(a))
	}
	if len(prefixes) == 0 {
		l.close("no address")
		return errors.New("server assigned no address")
	}
	if len(st.routes) == 0 {
		l.close("no routes")
		return fmt.Errorf("none of the requested routes %v is in the server's advertisement", c.cfg.Routes)
	}
	info := Info{Server: c.cfg.Server, Addresses: prefixes, Routes: st.routes.prefixes(), MTU: TunnelMTU}
	s := &supervisor{c: c, linkErr: make(chan *datagram.Link, 1), pumpDone: make(chan error, 1), dns: dnsAddrs(l.dns)}
	s.state.Store(st)
	dev, err := c.cfg.NewDevice(DeviceConfig{Addresses: info.Addresses, Routes: info.Routes, MTU: info.MTU, DNS: s.dns})
	if err != nil {
		l.close("device failed")
		return fmt.Errorf("creating the tunnel device: %w", err)
	}
	s.dnsDev, _ = dev.(DNSUpdater)
	mode := "packet"
	if c.cfg.FlowDevice != nil {
		// The wrapper owns the device from here on (and closes it).
		if dev, err = c.cfg.FlowDevice(dev, info.MTU, s.openFlow); err != nil {
			l.close("device failed")
			return fmt.Errorf("starting flow mode: %w", err)
		}
		mode = "flow"
	}
	dev = &closeOnceDevice{Device: dev}
	defer dev.Close()
	fecMode := "off"
	if _, on := l.fecStats(); on {
		fecMode = c.cfg.FEC.String()
	} else if !c.cfg.FEC.Off() {
		fecMode = "off (the server does not offer it)"
	}
	c.log.Info("tunnel up", "server", c.cfg.Server, "addresses", info.Addresses, "routes", info.Routes,
		"mtu", info.MTU, "mode", mode, "fec", fecMode, "setup", time.Since(start).Round(time.Millisecond))
	c.status.mu.Lock()
	c.status.info = &info
	c.status.mu.Unlock()
	c.status.set(stateConnected)
	c.sup.Store(s)
	defer c.sup.Store(nil)
	if c.cfg.OnReady != nil {
		c.cfg.OnReady(info)
	}

	s.pump = &datagram.Pump{
		Dev: dev,
		Allow: func(p *datagram.Packet) datagram.DropReason {
			st := s.state.Load()
			if !st.ownsSource(p.Src) {
				return datagram.DropReasonSrc
			}
			if !st.routes.allows(p.Dst, p.Proto) {
				return datagram.DropReasonDst
			}
			return datagram.NoDrop
		},
		TooLarge: tooLarge,
		Stats:    &c.stats,
		Logger:   c.log,
		OnLinkError: func(dl *datagram.Link, err error) {
			select {
			case s.linkErr <- dl:
			default:
			}
		},
	}
	s.pump.SetLink(l.dl)
	s.setCurrent(l)

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	context.AfterFunc(runCtx, func() { dev.Close() })
	go func() { s.pumpDone <- s.pump.Run(runCtx) }()

	err = s.run(runCtx, l)
	cancel(err)
	if perr := <-s.pumpDone; err == nil && ctx.Err() == nil {
		err = perr
	}
	attrs := counterAttrs(&c.stats)
	for _, a := range []struct {
		name string
		v    *atomic.Uint64
	}{{"migrations", &c.migrations}, {"reconnects", &c.reconnects}, {"path_send_drops", &c.pathDrops}} {
		if v := a.v.Load(); v != 0 {
			attrs = append(attrs, slog.Uint64(a.name, v))
		}
	}
	if !c.cfg.FEC.Off() {
		attrs = append(attrs, fecAttrs(c.fecTotal.get())...)
	}
	c.log.LogAttrs(context.Background(), slog.LevelInfo, "client counters", attrs...)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (c *Client) tlsConfig() *tls.Config {
	host := c.cfg.ServerName
	if host == "" {
		host, _, _ = net.SplitHostPort(c.cfg.Server)
	}
	conf := &tls.Config{
		ServerName: host,
		RootCAs:    c.cfg.RootCAs,
		NextProtos: []string{http3.NextProtoH3},
		MinVersion: tls.VersionTLS13,
		// Tickets from earlier connections let a reconnect resume with
		// 0-RTT. VerifyConnection (the pin) runs on resumption too.
		ClientSessionCache: c.sessions,
	}
	if c.cfg.Pin != nil {
		conf.InsecureSkipVerify = true                                  // verified by pin below
		conf.VerifyConnection = auth.VerifyConnectionPinned(*c.cfg.Pin) // also checked on resumed sessions
	}
	return conf
}

// closeOnceDevice makes Close idempotent for devices whose own Close is
// not (wireguard's netstack device panics on a second Close).
type closeOnceDevice struct {
	datagram.Device
	once sync.Once
	err  error
}

func (d *closeOnceDevice) Close() error {
	d.once.Do(func() { d.err = d.Device.Close() })
	return d.err
}

// tooLarge reports quic-go's DatagramTooLargeError and its limit.
func tooLarge(err error) (int, bool) {
	var tl *quic.DatagramTooLargeError
	if errors.As(err, &tl) {
		return int(tl.MaxDatagramPayloadSize), true
	}
	return 0, false
}

// classifyDialError turns handshake failures into messages a user can act on.
func classifyDialError(server string, err error) error {
	var pm *auth.PinMismatchError
	if errors.As(err, &pm) {
		return permanent(fmt.Errorf("connecting to %s: %w", server, pm))
	}
	var te *quic.TransportError
	if errors.As(err, &te) && strings.Contains(te.ErrorMessage, "pin mismatch") {
		return permanent(fmt.Errorf("connecting to %s: %s", server, te.ErrorMessage))
	}
	var ie *quic.IdleTimeoutError
	var he *quic.HandshakeTimeoutError
	if errors.As(err, &ie) || errors.As(err, &he) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("connecting to %s: no answer from the server (is it running, and is UDP open?): %w", server, err)
	}
	return fmt.Errorf("connecting to %s: %w", server, err)
}
