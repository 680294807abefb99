package datagram

import (
	"encoding/binary"
	"net/netip"
	"slices"
)

// Limits of ICMP errors built by AppendTooBig.
const (
	// maxICMPv4Len: RFC 1812 §4.3.2.3 lets an ICMPv4 error carry as much of
	// the original packet as fits in 576 bytes.
	maxICMPv4Len = 576
	// maxICMPv6Len: RFC 4443 §2.4(c): as much as fits in the IPv6 minimum
	// MTU, 1280 bytes.
	maxICMPv6Len = 1280
	// MaxTooBigLen is the largest packet AppendTooBig appends.
	MaxTooBigLen = maxICMPv6Len

	minMTUv4 = 68   // RFC 791: every IPv4 link carries 68 bytes
	minMTUv6 = 1280 // RFC 8200 §5
)

// AppendTooBig builds the ICMP error telling the sender of orig that orig
// did not fit a path MTU of mtu bytes, appends it to dst and returns the
// extended slice. orig is the complete packet that did not fit, starting at
// its IP header (it must pass Packet.Decode). The reply goes from orig's
// destination to orig's source, with TTL/hop limit 64 and correct checksums:
//
//   - IPv4: only when orig has DF set: ICMP type 3 code 4 (fragmentation
//     needed, RFC 1191) with next-hop MTU = mtu clamped to [68, 65535],
//     quoting orig's header and as much of orig as keeps the reply within
//     576 bytes.
//   - IPv6: ICMPv6 type 2 (packet too big, RFC 4443) with MTU = max(mtu,
//     1280), quoting as much of orig as keeps the reply within 1280 bytes;
//     the checksum covers the pseudo-header.
//
// It returns dst unchanged and ok=false, and builds nothing, when orig does
// not decode, when orig is an ICMP error (ICMPv4 types 3, 4, 5, 11, 12;
// ICMPv6 types below 128) or a non-initial fragment of ICMP (whose type is
// unknown), when an IPv4 orig lacks DF or is a non-initial fragment, when
// orig's source is unspecified, multicast or the IPv4 broadcast address, or
// when orig's destination is multicast or broadcast (it would have to be the
// reply's source). Nothing is allocated when cap(dst)-len(dst) is at least
// MaxTooBigLen. AppendTooBig does not retain dst or orig.
func AppendTooBig(dst []byte, orig []byte, mtu int) (out []byte, ok bool) {
	var p Packet
	if p.Decode(orig) != nil || !unicastSource(p.Src) || isMulticastOrBroadcast(p.Dst) {
		return dst, false
	}
	if p.Version == 4 {
		if !p.DF || p.FragOffset != 0 || isICMPError(orig, &p) {
			return dst, false
		}
		return appendFragNeeded(dst, orig, &p, mtu), true
	}
	if isICMPError(orig, &p) {
		return dst, false
	}
	return appendPacketTooBig(dst, orig, &p, mtu), true
}

// unicastSource reports whether src may receive an ICMP error: it is
// specified and neither multicast nor broadcast.
func unicastSource(src netip.Addr) bool {
	return !src.IsUnspecified() && !isMulticastOrBroadcast(src)
}

func isMulticastOrBroadcast(a netip.Addr) bool {
	return a.IsMulticast() || (a.Is4() && a.As4() == [4]byte{255, 255, 255, 255})
}

// isICMPError reports whether the decoded packet orig is an ICMP error
// message, or ICMP whose type cannot be read (treated as one, to be safe).
func isICMPError(orig []byte, p *Packet) bool {
	switch {
	case p.Version == 4 && p.Proto == protoICMP:
		if p.HdrLen >= p.Len {
			return true
		}
		switch orig[p.HdrLen] {
		case 3, 4, 5, 11, 12: // unreachable, source quench, redirect, time exceeded, parameter problem
			return true
		}
	case p.Version == 6 && p.Proto == protoICMPv6:
		return p.FragOffset != 0 || p.HdrLen >= p.Len || orig[p.HdrLen] < 128
	}
	return false
}

// appendFragNeeded appends an IPv4 header (20 bytes, protocol 1) and an
// ICMPv4 fragmentation-needed message (RFC 792, RFC 1191):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   Type = 3    |   Code = 4    |           Checksum            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|          unused = 0           |         Next-Hop MTU          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  original IP header + leading bytes of the original payload   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The checksum covers the ICMP message only.
func appendFragNeeded(dst, orig []byte, p *Packet, mtu int) []byte {
	mtu = min(max(mtu, minMTUv4), 0xffff)
	body := orig[:min(p.Len, maxICMPv4Len-28)]
	total := 28 + len(body)
	start := len(dst)
	dst = grow(dst, total)
	b := dst[start:]
	b[0] = 0x45
	b[1] = 0xc0 // precedence "internetwork control", as hosts send ICMP errors
	binary.BigEndian.PutUint16(b[2:4], uint16(total))
	binary.BigEndian.PutUint32(b[4:8], 0x0000_4000) // ID 0, DF: never fragmented (RFC 6864 atomic datagram)
	b[8] = 64
	b[9] = protoICMP
	b[10], b[11] = 0, 0
	copy(b[12:16], orig[16:20]) // from the original destination
	copy(b[16:20], orig[12:16]) // to the original source
	binary.BigEndian.PutUint16(b[10:12], checksum(b[:20], 0))

	icmp := b[20:]
	icmp[0], icmp[1] = 3, 4
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint32(icmp[4:8], uint32(mtu))
	copy(icmp[8:], body)
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp, 0))
	return dst
}

// appendPacketTooBig appends an IPv6 header (40 bytes, next header 58) and
// an ICMPv6 packet-too-big message (RFC 4443 §3.2):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   Type = 2    |   Code = 0    |           Checksum            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                              MTU                              |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|    as much of the original packet as fits in 1280 bytes       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The checksum also covers a pseudo-header: source and destination
// address, upper-layer length (32 bits), three zero bytes, next header 58.
func appendPacketTooBig(dst, orig []byte, p *Packet, mtu int) []byte {
	mtu = int(min(max(int64(mtu), minMTUv6), 0xffff_ffff))
	body := orig[:min(p.Len, maxICMPv6Len-48)]
	plen := 8 + len(body)
	start := len(dst)
	dst = grow(dst, 40+plen)
	b := dst[start:]
	binary.BigEndian.PutUint32(b[0:4], 6<<28) // version 6, traffic class 0, flow label 0
	binary.BigEndian.PutUint16(b[4:6], uint16(plen))
	b[6] = protoICMPv6
	b[7] = 64
	copy(b[8:24], orig[24:40]) // from the original destination
	copy(b[24:40], orig[8:24]) // to the original source
	icmp := b[40:]
	icmp[0], icmp[1] = 2, 0
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint32(icmp[4:8], uint32(mtu))
	copy(icmp[8:], body)
	sum := checksumAdd(0, b[8:40]) // pseudo-header addresses
	sum += uint64(plen) + protoICMPv6
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp, sum))
	return dst
}

// grow extends b by n bytes (contents unspecified), reallocating only if
// cap(b) is too small.
func grow(b []byte, n int) []byte {
	l := len(b)
	return slices.Grow(b, n)[:l+n]
}

// checksumAdd adds b to the ones' complement running sum (RFC 1071), as
// big-endian 16-bit words; an odd final byte is padded with zero. Sums of
// separately added slices are only correct if all but the last have even
// length.
func checksumAdd(sum uint64, b []byte) uint64 {
	for len(b) >= 8 {
		sum += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	if len(b) >= 4 {
		sum += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

// checksum returns the Internet checksum of b plus the running sum: the
// ones' complement of the folded ones' complement sum.
func checksum(b []byte, sum uint64) uint16 {
	sum = checksumAdd(sum, b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
