package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/capsule"
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
}

// ClientConfig configures a tunnel client.
type ClientConfig struct {
	// Server is the server's host:port. Required.
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
	// PacketConn is the UDP socket to dial from. Required. The client
	// never closes it (the caller owns it: in full-tunnel mode it carries
	// the socket mark that keeps it out of the tunnel).
	PacketConn net.PacketConn
	// NewDevice creates the tunnel device. Required. The client closes
	// the device (which must undo any host configuration) when Run ends.
	NewDevice func(DeviceConfig) (datagram.Device, error)
	// SetupTimeout bounds the dial and the tunnel setup; zero means
	// DefaultSetupTimeout.
	SetupTimeout time.Duration
	// OnReady, if set, is called once the device is up.
	OnReady func(Info)
	// Logger receives connection-level events. Nil means silent.
	Logger *slog.Logger
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
	cfg   ClientConfig
	log   *slog.Logger
	stats datagram.Stats
}

// NewClient validates cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	switch {
	case cfg.Server == "":
		return nil, errors.New("tunnel: ClientConfig.Server is required")
	case cfg.Token == "":
		return nil, errors.New("tunnel: ClientConfig.Token is required")
	case cfg.PacketConn == nil:
		return nil, errors.New("tunnel: ClientConfig.PacketConn is required")
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
	return &Client{cfg: cfg, log: log.With("component", "client")}, nil
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
// cancelled (returns nil) or the connection or device fails. It closes the
// device and the QUIC connection before returning.
func (c *Client) Run(ctx context.Context) error {
	raddr, err := net.ResolveUDPAddr("udp", c.cfg.Server)
	if err != nil {
		return fmt.Errorf("resolving server %q: %w", c.cfg.Server, err)
	}
	setupCtx, cancelSetup := context.WithTimeout(ctx, c.cfg.SetupTimeout)
	defer cancelSetup()

	tr := &quic.Transport{Conn: c.cfg.PacketConn, ConnectionIDLength: 4}
	defer tr.Close()
	start := time.Now()
	conn, err := tr.Dial(setupCtx, raddr, c.tlsConfig(), quicConfig(DefaultKeepAlive))
	if err != nil {
		return classifyDialError(c.cfg.Server, err)
	}
	defer conn.CloseWithError(0, "client exiting")
	if !conn.ConnectionState().SupportsDatagrams.Remote {
		return ErrNoDatagrams
	}

	str, err := c.request(setupCtx, conn)
	if err != nil {
		return err
	}
	// RFC 9484 §4.7.1: the endpoint expecting an assignment MUST ask for
	// one. All-zero addresses mean "any address of this family"; a server
	// that assigns unprompted (as Roam's does) confirms its assignment.
	req := capsule.AddressRequest{Addresses: []capsule.RequestedAddress{
		{RequestID: 1, Prefix: netip.PrefixFrom(netip.IPv4Unspecified(), 32)},
		{RequestID: 2, Prefix: netip.PrefixFrom(netip.IPv6Unspecified(), 128)},
	}}
	b, err := req.Append(nil)
	if err == nil {
		_, err = str.Write(b)
	}
	if err != nil {
		return fmt.Errorf("sending ADDRESS_REQUEST: %w", err)
	}
	rd := capsule.NewReader(str)
	assign, routes, err := awaitConfig(setupCtx, str, rd)
	if err != nil {
		return err
	}
	st := &clientState{routes: intersect(routesFromRanges(routes.Ranges), routesFromPrefixes(c.cfg.Routes))}
	var prefixes []netip.Prefix
	for _, a := range assign.Addresses {
		if a.Prefix.Addr().IsUnspecified() {
			continue // a refused request (RFC 9484 §4.7.2)
		}
		prefixes = append(prefixes, deviceAddress(a.Prefix))
		st.addrs = append(st.addrs, a.Prefix)
	}
	if len(prefixes) == 0 {
		return errors.New("server assigned no address")
	}
	if len(st.routes) == 0 {
		return fmt.Errorf("none of the requested routes %v is in the server's advertisement", c.cfg.Routes)
	}
	info := Info{Server: c.cfg.Server, Addresses: prefixes, Routes: st.routes.prefixes(), MTU: TunnelMTU}
	dev, err := c.cfg.NewDevice(DeviceConfig{Addresses: info.Addresses, Routes: info.Routes, MTU: info.MTU})
	if err != nil {
		return fmt.Errorf("creating the tunnel device: %w", err)
	}
	dev = &closeOnceDevice{Device: dev}
	defer dev.Close()
	c.log.Info("tunnel up", "server", c.cfg.Server, "addresses", info.Addresses, "routes", info.Routes,
		"mtu", info.MTU, "setup", time.Since(start).Round(time.Millisecond))
	if c.cfg.OnReady != nil {
		c.cfg.OnReady(info)
	}

	var state atomic.Pointer[clientState]
	state.Store(st)
	pump := &datagram.Pump{
		Dev:             dev,
		Conn:            conn, // sends: the prefix is written in place, no copy
		Recv:            str,  // receives: http3 has sorted the datagrams by stream
		QuarterStreamID: uint64(str.StreamID()) / 4,
		Allow: func(p *datagram.Packet) datagram.DropReason {
			s := state.Load()
			if !s.ownsSource(p.Src) {
				return datagram.DropReasonSrc
			}
			if !s.routes.allows(p.Dst, p.Proto) {
				return datagram.DropReasonDst
			}
			return datagram.NoDrop
		},
		TooLarge: tooLarge,
		Stats:    &c.stats,
		Logger:   c.log,
	}

	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	context.AfterFunc(runCtx, func() { dev.Close() })
	pumpDone := make(chan error, 1)
	go func() { pumpDone <- pump.Run(runCtx) }()
	capsDone := make(chan error, 1)
	go func() { capsDone <- c.watchCapsules(rd, &state) }()

	select {
	case <-ctx.Done():
		err = nil
	case err = <-pumpDone:
		pumpDone <- err
	case err = <-capsDone:
		if errors.Is(err, io.EOF) {
			err = errors.New("server closed the tunnel")
		}
	case <-conn.Context().Done():
		err = context.Cause(conn.Context())
	}
	if ctx.Err() == nil && err != nil {
		err = fmt.Errorf("tunnel lost: %w", err)
	}
	cancel(err)
	str.CancelRead(errCodeRequestCancelled)
	str.Close()
	<-pumpDone
	c.log.LogAttrs(context.Background(), slog.LevelInfo, "client counters", counterAttrs(&c.stats)...)
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
	}
	if c.cfg.Pin != nil {
		conf.InsecureSkipVerify = true                                  // verified by pin below
		conf.VerifyConnection = auth.VerifyConnectionPinned(*c.cfg.Pin) // also checked on resumed sessions
	}
	return conf
}

// request opens the CONNECT-IP request stream and checks the response.
func (c *Client) request(ctx context.Context, conn *quic.Conn) (*http3.RequestStream, error) {
	cc := (&http3.Transport{EnableDatagrams: true}).NewClientConn(conn)
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the server's HTTP/3 SETTINGS: %w", context.Cause(ctx))
	}
	if s := cc.Settings(); !s.EnableDatagrams {
		return nil, ErrNoDatagrams
	} else if !s.EnableExtendedConnect {
		return nil, errors.New("server does not support Extended CONNECT (RFC 9220)")
	}
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening the request stream: %w", err)
	}
	authority := c.cfg.Server
	req := &http.Request{
		Method: http.MethodConnect,
		Proto:  "connect-ip",
		Host:   authority,
		URL:    &url.URL{Scheme: "https", Host: authority, Path: WellKnownPath + "*/*/"},
		Header: http.Header{
			"Authorization":    {"Bearer " + c.cfg.Token},
			"Capsule-Protocol": {"?1"},
		},
	}
	if err := str.SendRequestHeader(req); err != nil {
		return nil, fmt.Errorf("sending the CONNECT-IP request: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { str.CancelRead(errCodeRequestCancelled) })
	resp, err := str.ReadResponse()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the CONNECT-IP response: %w", context.Cause(ctx))
		}
		return nil, fmt.Errorf("reading the CONNECT-IP response: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, ErrAuthFailed
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return nil, &StatusError{StatusCode: resp.StatusCode, Status: resp.Status, Reason: strings.TrimSpace(string(body))}
	}
	return str, nil
}

// awaitConfig reads capsules until both an ADDRESS_ASSIGN and a
// ROUTE_ADVERTISEMENT have arrived (in either order).
func awaitConfig(ctx context.Context, str *http3.RequestStream, rd *capsule.Reader) (*capsule.AddressAssign, *capsule.RouteAdvertisement, error) {
	stop := context.AfterFunc(ctx, func() { str.CancelRead(errCodeRequestCancelled) })
	defer stop()
	var assign *capsule.AddressAssign
	var routes *capsule.RouteAdvertisement
	for assign == nil || routes == nil {
		t, v, err := rd.Next()
		if err != nil {
			if ctx.Err() != nil {
				what := "ADDRESS_ASSIGN"
				if assign != nil {
					what = "ROUTE_ADVERTISEMENT"
				}
				return nil, nil, fmt.Errorf("waiting for the server's %s: %w", what, context.Cause(ctx))
			}
			return nil, nil, fmt.Errorf("reading the server's capsules: %w", err)
		}
		switch t {
		case capsule.TypeAddressAssign:
			if assign, err = capsule.ParseAddressAssign(v); err != nil {
				return nil, nil, fmt.Errorf("server sent a malformed capsule: %w", err)
			}
		case capsule.TypeRouteAdvertisement:
			if routes, err = capsule.ParseRouteAdvertisement(v); err != nil {
				return nil, nil, fmt.Errorf("server sent a malformed capsule: %w", err)
			}
		}
	}
	return assign, routes, nil
}

// watchCapsules keeps reading the server's capsules after setup. A new
// ROUTE_ADVERTISEMENT narrows or widens what the uplink lets through (the
// device's routes stay as installed); a new ADDRESS_ASSIGN that changes the
// addresses is logged (the device keeps its addresses).
func (c *Client) watchCapsules(rd *capsule.Reader, state *atomic.Pointer[clientState]) error {
	for {
		t, v, err := rd.Next()
		if err != nil {
			return err
		}
		switch t {
		case capsule.TypeAddressAssign:
			a, err := capsule.ParseAddressAssign(v)
			if err != nil {
				return fmt.Errorf("server sent a malformed capsule: %w", err)
			}
			old := state.Load()
			var addrs []netip.Prefix
			for _, e := range a.Addresses {
				if !e.Prefix.Addr().IsUnspecified() {
					addrs = append(addrs, e.Prefix)
				}
			}
			if !slices.Equal(addrs, old.addrs) {
				c.log.Warn("server changed the tunnel addresses; keeping the device's", "new", addrs, "device", old.addrs)
			}
		case capsule.TypeRouteAdvertisement:
			r, err := capsule.ParseRouteAdvertisement(v)
			if err != nil {
				return fmt.Errorf("server sent a malformed capsule: %w", err)
			}
			old := state.Load()
			state.Store(&clientState{addrs: old.addrs, routes: intersect(routesFromRanges(r.Ranges), routesFromPrefixes(c.cfg.Routes))})
			c.log.Info("server updated its routes", "routes", state.Load().routes.prefixes())
		}
	}
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
		return fmt.Errorf("connecting to %s: %w", server, pm)
	}
	var te *quic.TransportError
	if errors.As(err, &te) && strings.Contains(te.ErrorMessage, "pin mismatch") {
		return fmt.Errorf("connecting to %s: %s", server, te.ErrorMessage)
	}
	var ie *quic.IdleTimeoutError
	var he *quic.HandshakeTimeoutError
	if errors.As(err, &ie) || errors.As(err, &he) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("connecting to %s: no answer from the server (is it running, and is UDP open?): %w", server, err)
	}
	return fmt.Errorf("connecting to %s: %w", server, err)
}
