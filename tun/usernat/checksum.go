package usernat

import (
	"encoding/binary"
	"net/netip"
)

// sum16 adds b as big-endian 16-bit words to the one's-complement
// accumulator acc (unfolded).
func sum16(acc uint32, b []byte) uint32 {
	for len(b) >= 2 {
		acc += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

// fold folds acc into a 16-bit one's-complement checksum (already inverted).
func fold(acc uint32) uint16 {
	for acc > 0xffff {
		acc = (acc >> 16) + (acc & 0xffff)
	}
	return ^uint16(acc)
}

// icmpv6PseudoSum is the unfolded sum of the IPv6 pseudo-header for an ICMPv6
// message of length n from src to dst.
func icmpv6PseudoSum(src, dst netip.Addr, n int) uint32 {
	s, d := src.As16(), dst.As16()
	acc := sum16(0, s[:])
	acc = sum16(acc, d[:])
	acc += uint32(n>>16) + uint32(n&0xffff)
	acc += protoICMPv6
	return acc
}

// icmpChecksumOK verifies the checksum of the ICMP message msg (ICMPv6 with
// the pseudo-header of src and dst).
func icmpChecksumOK(v6 bool, src, dst netip.Addr, msg []byte) bool {
	var acc uint32
	if v6 {
		acc = icmpv6PseudoSum(src, dst, len(msg))
	}
	return fold(sum16(acc, msg)) == 0
}

// buildEchoReply returns a complete IPv4 or IPv6 packet carrying an echo
// reply from src to dst with the given identifier, sequence number and data,
// with correct IP header and ICMP checksums.
func buildEchoReply(v6 bool, src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	hl := 20
	if v6 {
		hl = 40
	}
	icmpLen := 8 + len(data)
	p := make([]byte, hl+icmpLen)
	m := p[hl:]
	if v6 {
		p[0] = 0x60
		binary.BigEndian.PutUint16(p[4:6], uint16(icmpLen))
		p[6] = protoICMPv6
		p[7] = 64 // hop limit
		s, d := src.As16(), dst.As16()
		copy(p[8:24], s[:])
		copy(p[24:40], d[:])
		m[0] = icmpv6EchoReply
	} else {
		p[0] = 0x45
		binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
		p[8] = 64 // TTL
		p[9] = protoICMPv4
		s, d := src.As4(), dst.As4()
		copy(p[12:16], s[:])
		copy(p[16:20], d[:])
		binary.BigEndian.PutUint16(p[10:12], fold(sum16(0, p[:20])))
		m[0] = icmpv4EchoReply
	}
	binary.BigEndian.PutUint16(m[4:6], id)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], data)
	var acc uint32
	if v6 {
		acc = icmpv6PseudoSum(src, dst, icmpLen)
	}
	binary.BigEndian.PutUint16(m[2:4], fold(sum16(acc, m)))
	return p
}
