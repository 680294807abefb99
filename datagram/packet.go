package datagram

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers used by the parser and the ICMP generator.
const (
	protoHopByHop = 0
	protoICMP     = 1
	protoRouting  = 43
	protoFragment = 44
	protoICMPv6   = 58
	protoNoNext   = 59
	protoDestOpts = 60
)

// maxExtHeaders bounds the IPv6 extension header walk.
const maxExtHeaders = 8

// Packet is the parsed IP header of one packet. It holds no reference to the
// bytes it was decoded from, so one Packet can be reused for every packet of
// a loop (Decode overwrites every field) and never causes an allocation.
type Packet struct {
	// Version is 4 or 6.
	Version uint8
	// Src and Dst are the source and destination addresses (Is4 or Is6).
	Src, Dst netip.Addr
	// Proto is the IPv4 protocol, or for IPv6 the final next header after
	// skipping hop-by-hop, routing, destination-options and fragment
	// headers (at most 8). For a non-initial fragment it is the fragment
	// header's next header; the transport header is not in that packet.
	Proto uint8
	// TTL is the IPv4 time to live or the IPv6 hop limit.
	TTL uint8
	// Len is the packet length the header declares (IPv4 total length,
	// IPv6 40 + payload length); HdrLen <= Len <= len(b). Bytes of b beyond
	// Len are not part of the packet.
	Len int
	// HdrLen is the length of the IP header, including IPv4 options and
	// the IPv6 extension headers that were skipped; the transport header
	// starts at b[HdrLen] (unless FragOffset != 0).
	HdrLen int
	// DF is the IPv4 don't-fragment flag (false for IPv6, which routers
	// never fragment).
	DF bool
	// Fragment is true for an IPv4 packet with MF set or a non-zero
	// fragment offset, and for an IPv6 packet with a fragment header.
	Fragment bool
	// FragOffset is the fragment offset in bytes (0 unless Fragment).
	FragOffset int
}

// Decode parses and validates the IP packet b (which starts at its IP
// header). It checks the version, IPv4 IHL >= 5 and HdrLen <= total length
// <= len(b), IPv6 40+payload length <= len(b) and that every extension
// header lies inside the payload. The IPv4 header checksum is not verified
// (the kernel does that on both ends). On error p's fields are unspecified
// and the error wraps ErrTooShort, ErrBadVersion, ErrBadLength or
// ErrBadHeader. Decode does not retain b and does not allocate.
func (p *Packet) Decode(b []byte) error {
	if len(b) == 0 {
		return errEmpty
	}
	switch b[0] >> 4 {
	case 4:
		return p.decode4(b)
	case 6:
		return p.decode6(b)
	}
	return errVersion
}

// decode4 parses an IPv4 header (RFC 791):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version|  IHL  |Type of Service|          Total Length         |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Identification        |0|D|M|      Fragment Offset    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Time to Live |    Protocol   |         Header Checksum       |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       Source Address                          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Destination Address                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                 Options (IHL-5 32-bit words)                  |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
func (p *Packet) decode4(b []byte) error {
	if len(b) < 20 {
		return errV4Short
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 {
		return errV4IHL
	}
	if ihl > len(b) {
		return errV4HdrTrunc
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < ihl {
		return errV4TotSmall
	}
	if total > len(b) {
		return errV4TotTrunc
	}
	frag := binary.BigEndian.Uint16(b[6:8])
	*p = Packet{
		Version:    4,
		Src:        netip.AddrFrom4([4]byte(b[12:16])),
		Dst:        netip.AddrFrom4([4]byte(b[16:20])),
		Proto:      b[9],
		TTL:        b[8],
		Len:        total,
		HdrLen:     ihl,
		DF:         frag&0x4000 != 0,
		Fragment:   frag&0x3fff != 0, // MF or offset
		FragOffset: int(frag&0x1fff) * 8,
	}
	return nil
}

// decode6 parses an IPv6 header (RFC 8200) and walks the extension headers:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version| Traffic Class |           Flow Label                  |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Payload Length        |  Next Header  |   Hop Limit   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                 Source Address (128 bits)                     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|              Destination Address (128 bits)                   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
//	hop-by-hop (0), routing (43), destination options (60):
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Next Header  |  Hdr Ext Len  |  data ((Hdr Ext Len+1)*8 - 2) |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	fragment (44), 8 bytes:
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  Next Header  |   Reserved    |      Fragment Offset    |Res|M|
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                         Identification                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
func (p *Packet) decode6(b []byte) error {
	if len(b) < 40 {
		return errV6Short
	}
	total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
	if total > len(b) {
		return errV6PayTrunc
	}
	*p = Packet{
		Version: 6,
		Src:     netip.AddrFrom16([16]byte(b[8:24])),
		Dst:     netip.AddrFrom16([16]byte(b[24:40])),
		TTL:     b[7],
		Len:     total,
	}
	nh, off := b[6], 40
walk:
	for i := 0; ; i++ {
		switch nh {
		case protoHopByHop, protoRouting, protoDestOpts, protoFragment:
		default:
			break walk
		}
		if i == maxExtHeaders {
			return errV6ExtTooMny
		}
		if off+8 > total {
			return errV6ExtTrunc
		}
		switch nh {
		case protoHopByHop:
			if off != 40 {
				return errV6HopByHop
			}
			fallthrough
		case protoRouting, protoDestOpts:
			n := (int(b[off+1]) + 1) * 8
			if off+n > total {
				return errV6ExtTrunc
			}
			nh, off = b[off], off+n
		case protoFragment:
			p.Fragment = true
			p.FragOffset = int(binary.BigEndian.Uint16(b[off+2:off+4]) &^ 7)
			nh, off = b[off], off+8
			if p.FragOffset != 0 {
				// The rest is a continuation of the fragmentable part,
				// not headers.
				break walk
			}
		}
	}
	p.Proto = nh
	p.HdrLen = off
	return nil
}

// IP protocol numbers with 16-bit source and destination ports first in
// their header.
const (
	protoTCP = 6
	protoUDP = 17
)

// Ports returns the TCP or UDP source and destination ports of the packet
// b that p was decoded from (p.Decode(b) returned nil). ok is false when
// the packet is neither TCP nor UDP, is a non-initial fragment (its
// transport header is in another packet), or is too short to hold the
// two ports. Ports does not retain b and does not allocate.
func (p *Packet) Ports(b []byte) (src, dst uint16, ok bool) {
	if p.Proto != protoTCP && p.Proto != protoUDP || p.FragOffset != 0 {
		return 0, 0, false
	}
	if p.HdrLen+4 > p.Len || p.Len > len(b) {
		return 0, 0, false
	}
	h := b[p.HdrLen : p.HdrLen+4]
	return binary.BigEndian.Uint16(h[0:2]), binary.BigEndian.Uint16(h[2:4]), true
}
