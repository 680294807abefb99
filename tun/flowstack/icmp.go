package flowstack

import (
	"encoding/binary"
	"slices"
)

// ICMP constants for appendUnreachable.
const (
	icmpv4Unreach     = 3 // destination unreachable (RFC 792)
	icmpv4HostUnreach = 1 // code: host unreachable -> EHOSTUNREACH
	icmpv6Unreach     = 1 // destination unreachable (RFC 4443 §3.1)
	icmpv6AddrUnreach = 3 // code: address unreachable -> EHOSTUNREACH
	protoICMPv4       = 1
	protoICMPv6       = 58
	maxICMPv4Len      = 576  // RFC 1812 §4.3.2.3
	maxICMPv6Len      = 1280 // RFC 4443 §2.4(c)
)

// appendUnreachable appends to dst an ICMP destination-unreachable packet
// answering quote, the start of a packet the application sent (at least its
// IP header and 8 bytes of TCP header; IPv4 header options included), and
// returns the extended slice. The error goes from quote's destination to
// quote's source with TTL/hop limit 64:
//
//	IPv4: type 3 code 1 (host unreachable), RFC 792:
//	+--------+--------+----------------+
//	| type 3 | code 1 |    checksum    |
//	+--------+--------+----------------+
//	|          unused = 0              |
//	+----------------------------------+
//	| quoted IP header + >= 8 bytes    |
//	+----------------------------------+
//
//	IPv6: type 1 code 3 (address unreachable), RFC 4443 §3.1: the same
//	layout; the checksum also covers the IPv6 pseudo-header.
//
// It returns dst unchanged and false if quote is too short or not IPv4 or
// IPv6 (the caller then answers with a RST instead). It does not retain
// quote.
func appendUnreachable(dst, quote []byte) ([]byte, bool) {
	if len(quote) == 0 {
		return dst, false
	}
	switch quote[0] >> 4 {
	case 4:
		ihl := int(quote[0]&0x0f) * 4
		if ihl < 20 || len(quote) < ihl+8 {
			return dst, false
		}
		body := quote[:min(len(quote), maxICMPv4Len-28)]
		total := 28 + len(body)
		start := len(dst)
		dst = slices.Grow(dst, total)[:start+total]
		b := dst[start:]
		b[0], b[1] = 0x45, 0xc0
		binary.BigEndian.PutUint16(b[2:4], uint16(total))
		binary.BigEndian.PutUint32(b[4:8], 0) // ID 0, no flags
		b[8], b[9] = 64, protoICMPv4
		b[10], b[11] = 0, 0
		copy(b[12:16], quote[16:20]) // from the original destination
		copy(b[16:20], quote[12:16]) // to the original source
		binary.BigEndian.PutUint16(b[10:12], checksum(b[:20], 0))
		m := b[20:]
		m[0], m[1], m[2], m[3] = icmpv4Unreach, icmpv4HostUnreach, 0, 0
		binary.BigEndian.PutUint32(m[4:8], 0)
		copy(m[8:], body)
		binary.BigEndian.PutUint16(m[2:4], checksum(m, 0))
		return dst, true
	case 6:
		if len(quote) < 48 {
			return dst, false
		}
		body := quote[:min(len(quote), maxICMPv6Len-48)]
		plen := 8 + len(body)
		start := len(dst)
		dst = slices.Grow(dst, 40+plen)[:start+40+plen]
		b := dst[start:]
		binary.BigEndian.PutUint32(b[0:4], 6<<28)
		binary.BigEndian.PutUint16(b[4:6], uint16(plen))
		b[6], b[7] = protoICMPv6, 64
		copy(b[8:24], quote[24:40]) // from the original destination
		copy(b[24:40], quote[8:24]) // to the original source
		m := b[40:]
		m[0], m[1], m[2], m[3] = icmpv6Unreach, icmpv6AddrUnreach, 0, 0
		binary.BigEndian.PutUint32(m[4:8], 0)
		copy(m[8:], body)
		sum := sumWords(0, b[8:40]) + uint64(plen) + protoICMPv6 // pseudo-header
		binary.BigEndian.PutUint16(m[2:4], checksum(m, sum))
		return dst, true
	}
	return dst, false
}

// sumWords adds b to a ones' complement running sum as big-endian 16-bit
// words (RFC 1071); an odd last byte is padded with zero.
func sumWords(sum uint64, b []byte) uint64 {
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

// checksum returns the Internet checksum of b added to sum.
func checksum(b []byte, sum uint64) uint16 {
	sum = sumWords(sum, b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
