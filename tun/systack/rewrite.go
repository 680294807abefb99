package systack

import (
	"net/netip"

	"github.com/roamvpn/roam/datagram"
)

// IP protocol numbers and TCP header flags.
const (
	protoTCP = 6
	flagFIN  = 0x01
	flagSYN  = 0x02
	flagRST  = 0x04
	flagACK  = 0x10
)

// tuple is a TCP connection as the application's socket has it: a is the
// application's address (the source of its packets), d the address it
// connected to. IPv4 addresses fill the first 4 bytes. It has no padding,
// so a map hashes it as one block of memory.
type tuple struct {
	a, d   [16]byte
	ap, dp uint16
	v6     uint32 // 1 for IPv6
}

// addrs returns the tuple's application and destination addresses.
func (t tuple) addrs() (a, d netip.AddrPort) {
	if t.v6 == 0 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(t.a[:4])), t.ap),
			netip.AddrPortFrom(netip.AddrFrom4([4]byte(t.d[:4])), t.dp)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(t.a), t.ap), netip.AddrPortFrom(netip.AddrFrom16(t.d), t.dp)
}

// tcpPacket is a TCP packet found by parseTCP: the IP packet (trimmed to
// the length its header declares) and its fixed TCP header, both slices
// of the buffer that was parsed.
type tcpPacket struct {
	ip    []byte
	th    []byte // ip[hdrLen:hdrLen+20]
	v6    bool
	flags uint8
}

// parse results.
const (
	notTCP  = iota // not a valid TCP packet: the caller's (a malformed packet is the pump's to count)
	isTCP          // a TCP packet with its full fixed header
	tcpFrag        // a TCP fragment or a packet too short for its TCP header: dropped
)

// parseTCP decodes pkt (an IP packet at pkt[0]) with p and, if it is an
// unfragmented TCP packet with a complete fixed TCP header, fills tp. It
// does not allocate and never panics, whatever pkt holds.
func parseTCP(pkt []byte, p *datagram.Packet, tp *tcpPacket) int {
	if len(pkt) < 20 {
		return notTCP
	}
	if v := pkt[0] >> 4; (v == 4 && pkt[9] != protoTCP) || (v == 6 && len(pkt) >= 40 && (pkt[6] == 17 || pkt[6] == 58)) {
		return notTCP // UDP, ICMP: the common non-TCP packets, spared the decoding
	}
	if p.Decode(pkt) != nil || p.Proto != protoTCP {
		return notTCP
	}
	if p.Fragment || p.HdrLen+20 > p.Len {
		return tcpFrag
	}
	tp.ip = pkt[:p.Len]
	tp.th = pkt[p.HdrLen : p.HdrLen+20]
	tp.v6 = p.Version == 6
	tp.flags = tp.th[13]
	return isTCP
}

// srcPort and dstPort return the TCP ports of tp.
func (tp *tcpPacket) srcPort() uint16 { return uint16(tp.th[0])<<8 | uint16(tp.th[1]) }
func (tp *tcpPacket) dstPort() uint16 { return uint16(tp.th[2])<<8 | uint16(tp.th[3]) }

// tuple returns tp's addresses and ports as a tuple, the source being the
// application (a packet the application sent).
func (tp *tcpPacket) tuple() (t tuple) {
	t.ap, t.dp = tp.srcPort(), tp.dstPort()
	if !tp.v6 {
		*(*[4]byte)(t.a[:4]) = [4]byte(tp.ip[12:16])
		*(*[4]byte)(t.d[:4]) = [4]byte(tp.ip[16:20])
		return t
	}
	t.a, t.d, t.v6 = [16]byte(tp.ip[8:24]), [16]byte(tp.ip[24:40]), 1
	return t
}

// addrsAre reports whether tp's source is src and its destination dst
// (addresses of tp's family, as a tuple stores them).
func (tp *tcpPacket) addrsAre(src, dst *[16]byte) bool {
	if !tp.v6 {
		return [4]byte(tp.ip[12:16]) == [4]byte(src[:4]) && [4]byte(tp.ip[16:20]) == [4]byte(dst[:4])
	}
	return [16]byte(tp.ip[8:24]) == *src && [16]byte(tp.ip[24:40]) == *dst
}

// rewrite swaps tp's source and destination addresses and sets its ports
// to sport and dport, updating the TCP checksum incrementally (RFC 1624).
// Swapping the addresses changes neither the IPv4 header checksum nor the
// TCP pseudo-header sum (one's-complement addition commutes), so only the
// ports enter the update. It works on each packet as it is, so the
// segments a TUN split from one GSO burst are rewritten one by one and
// stay coalescable on Write.
func rewrite(tp *tcpPacket, sport, dport uint16) {
	ip, th := tp.ip, tp.th
	if !tp.v6 {
		s, d := [4]byte(ip[12:16]), [4]byte(ip[16:20])
		*(*[4]byte)(ip[12:16]), *(*[4]byte)(ip[16:20]) = d, s
	} else {
		s, d := [16]byte(ip[8:24]), [16]byte(ip[24:40])
		*(*[16]byte)(ip[8:24]), *(*[16]byte)(ip[24:40]) = d, s
	}
	oldS, oldD := tp.srcPort(), tp.dstPort()
	th[0], th[1], th[2], th[3] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	c := uint16(th[16])<<8 | uint16(th[17])
	sum := uint32(^c) + uint32(^oldS) + uint32(sport) + uint32(^oldD) + uint32(dport)
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	c = ^uint16(sum)
	th[16], th[17] = byte(c>>8), byte(c)
}
