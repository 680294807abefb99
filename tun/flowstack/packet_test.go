package flowstack

import (
	"encoding/binary"
	"net/netip"

	"github.com/roamvpn/roam/datagram"
)

// TCP flags for buildTCP.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// ipHeader returns an IPv4 (20 bytes) or IPv6 (40 bytes) header for a
// payload of plen bytes of protocol proto.
func ipHeader(src, dst netip.Addr, proto uint8, plen int) []byte {
	if src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:4], uint16(20+plen))
		binary.BigEndian.PutUint16(h[6:8], 0x4000) // DF
		h[8], h[9] = 64, proto
		a, b := src.As4(), dst.As4()
		copy(h[12:16], a[:])
		copy(h[16:20], b[:])
		binary.BigEndian.PutUint16(h[10:12], checksum(h, 0))
		return h
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(plen))
	h[6], h[7] = proto, 64
	a, b := src.As16(), dst.As16()
	copy(h[8:24], a[:])
	copy(h[24:40], b[:])
	return h
}

// pseudoSum is the ones' complement sum of the transport pseudo-header.
func pseudoSum(src, dst netip.Addr, proto uint8, plen int) uint64 {
	return sumWords(sumWords(0, src.AsSlice()), dst.AsSlice()) + uint64(proto) + uint64(plen)
}

// buildTCP returns a complete TCP/IP packet with valid checksums.
func buildTCP(src, dst netip.AddrPort, seq, ack uint32, flags byte, payload []byte) []byte {
	th := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(th[0:2], src.Port())
	binary.BigEndian.PutUint16(th[2:4], dst.Port())
	binary.BigEndian.PutUint32(th[4:8], seq)
	binary.BigEndian.PutUint32(th[8:12], ack)
	th[12] = 5 << 4
	th[13] = flags
	binary.BigEndian.PutUint16(th[14:16], 65535)
	copy(th[20:], payload)
	binary.BigEndian.PutUint16(th[16:18], checksum(th, pseudoSum(src.Addr(), dst.Addr(), 6, len(th))))
	return append(ipHeader(src.Addr(), dst.Addr(), 6, len(th)), th...)
}

// buildUDP returns a complete UDP/IP packet with valid checksums.
func buildUDP(src, dst netip.AddrPort, payload []byte) []byte {
	uh := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(uh[0:2], src.Port())
	binary.BigEndian.PutUint16(uh[2:4], dst.Port())
	binary.BigEndian.PutUint16(uh[4:6], uint16(len(uh)))
	copy(uh[8:], payload)
	binary.BigEndian.PutUint16(uh[6:8], checksum(uh, pseudoSum(src.Addr(), dst.Addr(), 17, len(uh))))
	return append(ipHeader(src.Addr(), dst.Addr(), 17, len(uh)), uh...)
}

// buildICMPEcho returns an IPv4 ICMP echo request.
func buildICMPEcho(src, dst netip.Addr) []byte {
	m := []byte{8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'}
	binary.BigEndian.PutUint16(m[2:4], checksum(m, 0))
	return append(ipHeader(src, dst, 1, len(m)), m...)
}

// icmpChecksumOK verifies the ICMP or ICMPv6 checksum of a decoded packet.
func icmpChecksumOK(p []byte, pkt *datagram.Packet) bool {
	m := p[pkt.HdrLen:pkt.Len]
	var sum uint64
	if pkt.Version == 6 {
		sum = pseudoSum(pkt.Src, pkt.Dst, 58, len(m))
	}
	return checksum(m, sum) == 0
}
