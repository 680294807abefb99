package usernat

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers used here.
const (
	protoICMPv4 = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// ICMP types used here.
const (
	icmpv4EchoReply   = 0
	icmpv4Unreachable = 3
	icmpv4SourceQuech = 4
	icmpv4Echo        = 8
	icmpv4TimeExceed  = 11
	icmpv4ParamProb   = 12

	icmpv6Unreachable = 1
	icmpv6TooBig      = 2
	icmpv6TimeExceed  = 3
	icmpv6ParamProb   = 4
	icmpv6Echo        = 128
	icmpv6EchoReply   = 129
)

// verdict is what Write does with one client packet.
type verdict uint8

const (
	toStack         verdict = iota // hand to gVisor
	toEcho                         // ICMP echo request to re-originate on the host
	dropMalformed                  // not a parseable IPv4/IPv6 packet
	dropSource                     // source address not a client address
	dropDestination                // destination the NAT must not reach (pool, loopback, multicast, ...)
	dropUnsupported                // protocol or ICMP type the NAT does not carry
)

// pktInfo is what classify learned about a packet. It lives on the caller's
// stack; classify never allocates.
type pktInfo struct {
	v6       bool
	src, dst netip.Addr
	proto    uint8 // transport protocol after IPv6 extension headers
	l4       int   // offset of the transport header
	end      int   // length of the IP packet (bytes after end are padding)
}

// addrRules are the address checks classify applies. They are fixed for the
// lifetime of a Stack.
type addrRules struct {
	gw4, gw6 netip.Addr // zero if not configured
	prefixes []netip.Prefix
}

func (r *addrRules) isGateway(a netip.Addr) bool {
	return (r.gw4.IsValid() && a == r.gw4) || (r.gw6.IsValid() && a == r.gw6)
}

func (r *addrRules) inPool(a netip.Addr) bool {
	for _, p := range r.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// classify parses the IP header of pkt and decides where it goes. It checks
// only what the NAT needs; gVisor validates the rest (header checksum, L4
// checksums, options) and drops bad packets itself.
func (r *addrRules) classify(pkt []byte, info *pktInfo) verdict {
	if len(pkt) == 0 {
		return dropMalformed
	}
	fragmented := false
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return dropMalformed
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		if ihl < 20 || total < ihl || total > len(pkt) {
			return dropMalformed
		}
		info.v6 = false
		info.src = netip.AddrFrom4([4]byte(pkt[12:16]))
		info.dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		info.proto = pkt[9]
		info.l4 = ihl
		info.end = total
		flagsFrag := binary.BigEndian.Uint16(pkt[6:8])
		fragmented = flagsFrag&0x3fff != 0 // MF set or offset != 0
	case 6:
		if len(pkt) < 40 {
			return dropMalformed
		}
		total := 40 + int(binary.BigEndian.Uint16(pkt[4:6]))
		if total > len(pkt) {
			return dropMalformed
		}
		info.v6 = true
		info.src = netip.AddrFrom16([16]byte(pkt[8:24]))
		info.dst = netip.AddrFrom16([16]byte(pkt[24:40]))
		info.end = total
		next, off := pkt[6], 40
		// Walk the extension headers gVisor understands, at most a few.
	walk:
		for range 8 {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if off+8 > total {
					return dropMalformed
				}
				next, off = pkt[off], off+(int(pkt[off+1])+1)*8
			case 44: // fragment
				if off+8 > total {
					return dropMalformed
				}
				if binary.BigEndian.Uint16(pkt[off+2:off+4]) != 0 { // offset or M flag
					fragmented = true
				}
				next, off = pkt[off], off+8
			default:
				break walk
			}
		}
		if off > total {
			return dropMalformed
		}
		info.proto = next
		info.l4 = off
	default:
		return dropMalformed
	}

	if !r.sourceOK(info.src) {
		return dropSource
	}
	gateway := r.isGateway(info.dst)
	if !gateway && !r.destinationOK(info.dst) {
		return dropDestination
	}

	switch info.proto {
	case protoTCP, protoUDP:
		return toStack
	case protoICMPv4, protoICMPv6:
		if (info.proto == protoICMPv4) == info.v6 {
			return dropUnsupported // ICMPv4 inside IPv6 or ICMPv6 inside IPv4
		}
		if gateway {
			return toStack // the stack answers echo to its own addresses
		}
		if fragmented {
			// Fragmented ICMP to a remote address: the first fragment
			// alone does not carry the whole echo request, and gVisor
			// (promiscuous) would reassemble and answer it itself.
			return dropUnsupported
		}
		if info.end-info.l4 < 8 {
			return dropMalformed
		}
		switch t := pkt[info.l4]; {
		case !info.v6 && t == icmpv4Echo, info.v6 && t == icmpv6Echo:
			return toEcho
		case !info.v6 && (t == icmpv4Unreachable || t == icmpv4SourceQuech || t == icmpv4TimeExceed || t == icmpv4ParamProb),
			info.v6 && (t == icmpv6Unreachable || t == icmpv6TooBig || t == icmpv6TimeExceed || t == icmpv6ParamProb):
			// Errors about packets the stack sent on behalf of a
			// remote address (for example Packet Too Big for a TCP
			// segment): the stack needs them.
			return toStack
		default:
			// Echo replies, router/neighbour discovery, timestamps:
			// nothing on the host side expects them, and the stack
			// must not answer them for addresses it does not own.
			return dropUnsupported
		}
	default:
		return dropUnsupported
	}
}

// sourceOK reports whether a client may use src as its source address.
func (r *addrRules) sourceOK(src netip.Addr) bool {
	if !src.IsValid() || src.IsUnspecified() || src.IsMulticast() || src.IsLoopback() || r.isGateway(src) {
		return false
	}
	if len(r.prefixes) > 0 && !r.inPool(src) {
		return false
	}
	return true
}

// limitedBroadcast is 255.255.255.255.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// destinationOK reports whether traffic to dst (not a gateway) may be
// re-originated from the host.
func (r *addrRules) destinationOK(dst netip.Addr) bool {
	switch {
	case !dst.IsValid(), dst.IsLoopback(), dst.IsUnspecified(), dst.IsMulticast(), dst == limitedBroadcast,
		dst.IsLinkLocalUnicast(), // includes 169.254.169.254 (cloud metadata) and fe80::/10 (needs a zone)
		dst.Is4In6():
		return false
	}
	// Other client addresses: client-to-client traffic is the tunnel's
	// business; re-originating it would hand pool addresses to the host's
	// routing table.
	return !r.inPool(dst)
}
