package systack

import (
	"encoding/binary"
	"net/netip"
)

// tcpSpec describes a TCP packet for buildTCP.
type tcpSpec struct {
	src, dst netip.AddrPort
	flags    uint8
	seq, ack uint32
	payload  []byte
	v6ext    bool // IPv6: put a hop-by-hop options header in front of TCP
}

// buildTCP returns an IPv4 or IPv6 TCP packet (by src's family) with
// correct checksums.
func buildTCP(s tcpSpec) []byte {
	th := make([]byte, 20, 20+len(s.payload))
	binary.BigEndian.PutUint16(th[0:], s.src.Port())
	binary.BigEndian.PutUint16(th[2:], s.dst.Port())
	binary.BigEndian.PutUint32(th[4:], s.seq)
	binary.BigEndian.PutUint32(th[8:], s.ack)
	th[12] = 5 << 4
	th[13] = s.flags
	binary.BigEndian.PutUint16(th[14:], 65535)
	seg := append(th, s.payload...)
	var pkt []byte
	if s.src.Addr().Is4() {
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(seg)))
		binary.BigEndian.PutUint16(ip[4:], 0x1234)
		ip[6] = 0x40 // DF
		ip[8], ip[9] = 64, protoTCP
		a, b := s.src.Addr().As4(), s.dst.Addr().As4()
		copy(ip[12:], a[:])
		copy(ip[16:], b[:])
		binary.BigEndian.PutUint16(ip[10:], ^sum(ip, 0))
		pkt = append(ip, seg...)
	} else {
		ext := 0
		if s.v6ext {
			ext = 8
		}
		ip := make([]byte, 40+ext)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(ext+len(seg)))
		ip[6], ip[7] = protoTCP, 64
		if s.v6ext {
			ip[6] = 0             // hop-by-hop
			ip[40] = protoTCP     // its next header
			ip[42], ip[43] = 1, 4 // PadN, 4 bytes
		}
		a, b := s.src.Addr().As16(), s.dst.Addr().As16()
		copy(ip[8:], a[:])
		copy(ip[24:], b[:])
		pkt = append(ip, seg...)
	}
	hdr := len(pkt) - len(seg)
	c := ^sum(pkt[hdr:], pseudo(pkt, len(seg)))
	binary.BigEndian.PutUint16(pkt[hdr+16:], c)
	return pkt
}

// sum is the one's-complement sum of b added to initial, folded.
func sum(b []byte, initial uint32) uint16 {
	s := initial
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// pseudo returns the TCP pseudo-header sum of the IP packet pkt for a
// segment of n bytes.
func pseudo(pkt []byte, n int) uint32 {
	var s uint32
	if pkt[0]>>4 == 4 {
		s = uint32(sum(pkt[12:20], 0))
	} else {
		s = uint32(sum(pkt[8:40], 0))
	}
	return s + protoTCP + uint32(n)
}

// checksumsOK recomputes the IPv4 header checksum (if IPv4) and the TCP
// checksum of the TCP packet pkt whose TCP header starts at hdr.
func checksumsOK(pkt []byte, hdr int) bool {
	if pkt[0]>>4 == 4 && sum(pkt[:20], 0) != 0xffff {
		return false
	}
	return sum(pkt[hdr:], pseudo(pkt, len(pkt)-hdr)) == 0xffff
}
