package tunnel

import (
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"
)

// InitialPacketSize is the QUIC packet size Roam starts every connection
// (and every migrated path) with. quic-go's path-MTU discovery may raise it,
// but it never goes below this value, so it bounds what the tunnel can carry
// at all times: a 1280-byte IPv6 packet (the IPv6 minimum MTU) must always
// fit. 1350 bytes of UDP payload fit on any path with an IP MTU of 1398
// (IPv6) or 1378 (IPv4), which covers PPPoE, most tunnels and mobile
// networks.
const InitialPacketSize = 1350

// quicDatagramOverhead is what a QUIC short-header packet spends around a
// DATAGRAM frame's payload with 4-byte connection IDs (measured in
// QUIC-FACTS.md: 1280-byte packets carry at most 1243 bytes of datagram).
const quicDatagramOverhead = 37

// maxPrefixOverhead bounds the HTTP datagram prefix (quarter stream ID and
// context ID) for the request streams a tunnel uses in practice (stream IDs
// below 4*16384 have a 2-byte quarter stream ID; context ID 0 is one byte).
const maxPrefixOverhead = 3

// TunnelMTU is the MTU of the tunnel devices on both ends: the largest IP
// packet that always fits in one QUIC datagram at InitialPacketSize.
const TunnelMTU = InitialPacketSize - quicDatagramOverhead - maxPrefixOverhead

// WellKnownPath is the path prefix of RFC 9484's default URI template
// /.well-known/masque/ip/{target}/{ipproto}/.
const WellKnownPath = "/.well-known/masque/ip/"

// DefaultRoutes is the full tunnel: everything, IPv4 and IPv6.
var DefaultRoutes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// Default timeouts.
const (
	// DefaultIdleTimeout is the QUIC idle timeout of tunnel connections.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultKeepAlive is how often an idle client sends a keep-alive, well
	// inside the idle timeout and typical UDP NAT mapping lifetimes (30 s+).
	DefaultKeepAlive = 10 * time.Second
	// DefaultSetupTimeout bounds the dial, the CONNECT-IP request and the
	// wait for the server's ADDRESS_ASSIGN and ROUTE_ADVERTISEMENT.
	DefaultSetupTimeout = 15 * time.Second
	// DefaultLeaseGrace is how long a server keeps a lost session's
	// addresses for the same client.
	DefaultLeaseGrace = 2 * time.Minute
)

// clientMaxIncomingUniStreams bounds the unidirectional streams the server
// may have open towards a client at once. HTTP/3 needs three (control and
// the two QPACK streams); the client refuses push, and every stream the
// server opens costs a goroutine until its type has been read (h3Control),
// so a server that opens streams and never sends their type is held to
// this many.
const clientMaxIncomingUniStreams = 16

// clientQUICConfig is the client's QUIC configuration: quicConfig, but the
// server may open no bidirectional streams (RFC 9114 §6.1: nothing on the
// client would accept them; quic-go then treats one as a stream limit
// error) and only a few unidirectional ones.
func clientQUICConfig() *quic.Config {
	conf := quicConfig(DefaultKeepAlive)
	conf.MaxIncomingStreams = -1
	conf.MaxIncomingUniStreams = clientMaxIncomingUniStreams
	return conf
}

// quicConfig is the QUIC configuration both ends start from; the server
// uses it as is (plus 0-RTT), the client through clientQUICConfig.
func quicConfig(keepAlive time.Duration) *quic.Config {
	return &quic.Config{
		EnableDatagrams:    true,
		InitialPacketSize:  InitialPacketSize,
		MaxIdleTimeout:     DefaultIdleTimeout,
		KeepAlivePeriod:    keepAlive,
		MaxIncomingStreams: 1000,
		// Large flow-control windows: the capsule stream is tiny, but flow
		// streams (per-flow TCP) need room for bandwidth-delay products.
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     32 << 20,
		Tracer:                         qlogCCTracer(),
	}
}
