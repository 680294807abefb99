package interop

// Minimal IPv4/IPv6, UDP and ICMP echo encoders and a parser, enough to
// build the test packets and check replies byte for byte. Written for these
// tests (RFC 791, RFC 8200, RFC 768, RFC 792, RFC 4443); no options, no
// extension headers.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

const (
	protoICMP   = 1
	protoUDP    = 17
	protoICMPv6 = 58

	icmp4EchoRequest = 8
	icmp4EchoReply   = 0
	icmp6EchoRequest = 128
	icmp6EchoReply   = 129

	defaultTTL = 64
)

// ipPacket is a parsed IP packet. Header and Payload alias the parsed bytes.
type ipPacket struct {
	Version  int
	Src, Dst netip.Addr
	Proto    uint8 // IPv4 protocol or IPv6 next header
	TTL      uint8 // IPv4 TTL or IPv6 hop limit
	Header   []byte
	Payload  []byte // the upper-layer message (UDP datagram, ICMP message)
}

func (p ipPacket) String() string {
	return fmt.Sprintf("IPv%d %s -> %s proto %d ttl %d, %d bytes of payload", p.Version, p.Src, p.Dst, p.Proto, p.TTL, len(p.Payload))
}

var errShort = errors.New("packet too short")

// parseIP parses b, which must hold exactly one IP packet (trailing bytes
// beyond the declared length are an error) without IPv4 options or IPv6
// extension headers. The IPv4 header checksum must be valid.
func parseIP(b []byte) (ipPacket, error) {
	if len(b) == 0 {
		return ipPacket{}, errShort
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return ipPacket{}, errShort
		}
		if ihl := int(b[0]&0x0f) * 4; ihl != 20 {
			return ipPacket{}, fmt.Errorf("IPv4 header length %d (options are not expected)", ihl)
		}
		if tl := int(binary.BigEndian.Uint16(b[2:4])); tl != len(b) {
			return ipPacket{}, fmt.Errorf("IPv4 total length %d, packet has %d bytes", tl, len(b))
		}
		if checksum(0, b[:20]) != 0 {
			return ipPacket{}, errors.New("bad IPv4 header checksum")
		}
		return ipPacket{
			Version: 4,
			Src:     netip.AddrFrom4([4]byte(b[12:16])),
			Dst:     netip.AddrFrom4([4]byte(b[16:20])),
			Proto:   b[9],
			TTL:     b[8],
			Header:  b[:20],
			Payload: b[20:],
		}, nil
	case 6:
		if len(b) < 40 {
			return ipPacket{}, errShort
		}
		if pl := int(binary.BigEndian.Uint16(b[4:6])); 40+pl != len(b) {
			return ipPacket{}, fmt.Errorf("IPv6 payload length %d, packet has %d bytes", pl, len(b))
		}
		return ipPacket{
			Version: 6,
			Src:     netip.AddrFrom16([16]byte(b[8:24])),
			Dst:     netip.AddrFrom16([16]byte(b[24:40])),
			Proto:   b[6],
			TTL:     b[7],
			Header:  b[:40],
			Payload: b[40:],
		}, nil
	}
	return ipPacket{}, fmt.Errorf("IP version %d", b[0]>>4)
}

// checksum folds the Internet checksum (RFC 1071) of b into sum and returns
// its complement. Checksumming a message that contains its own correct
// checksum gives 0.
func checksum(sum uint32, b []byte) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudoSum is the unfolded sum of the IPv4 or IPv6 pseudo-header.
func pseudoSum(src, dst netip.Addr, proto uint8, n int) uint32 {
	var sum uint32
	for _, a := range []netip.Addr{src, dst} {
		s := a.AsSlice()
		for i := 0; i < len(s); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(s[i:]))
		}
	}
	return sum + uint32(proto) + uint32(n)
}

// buildIP returns an IP packet from src to dst carrying the upper-layer
// message l4 (copied), with TTL/hop limit ttl.
func buildIP(src, dst netip.Addr, proto, ttl uint8, id uint16, l4 []byte) []byte {
	if src.Is4() {
		b := make([]byte, 20+len(l4))
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:4], uint16(len(b)))
		binary.BigEndian.PutUint16(b[4:6], id)
		b[6] = 0x40 // DF
		b[8] = ttl
		b[9] = proto
		copy(b[12:16], src.AsSlice())
		copy(b[16:20], dst.AsSlice())
		binary.BigEndian.PutUint16(b[10:12], checksum(0, b[:20]))
		copy(b[20:], l4)
		return b
	}
	b := make([]byte, 40+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(l4)))
	b[6] = proto
	b[7] = ttl
	copy(b[8:24], src.AsSlice())
	copy(b[24:40], dst.AsSlice())
	copy(b[40:], l4)
	return b
}

// udpDatagram returns a UDP header and payload with a correct checksum.
func udpDatagram(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint16(b[4:6], uint16(len(b)))
	copy(b[8:], payload)
	c := checksum(pseudoSum(src, dst, protoUDP, len(b)), b)
	if c == 0 {
		c = 0xffff // RFC 768: a computed zero is sent as all ones
	}
	binary.BigEndian.PutUint16(b[6:8], c)
	return b
}

// icmpEcho returns an ICMP (src IPv4) or ICMPv6 (src IPv6) echo request or
// reply with a correct checksum.
func icmpEcho(src, dst netip.Addr, reply bool, id, seq uint16, data []byte) []byte {
	b := make([]byte, 8+len(data))
	var sum uint32
	switch {
	case src.Is4() && reply:
		b[0] = icmp4EchoReply
	case src.Is4():
		b[0] = icmp4EchoRequest
	case reply:
		b[0] = icmp6EchoReply
	default:
		b[0] = icmp6EchoRequest
	}
	if src.Is6() {
		sum = pseudoSum(src, dst, protoICMPv6, len(b))
	}
	binary.BigEndian.PutUint16(b[4:6], id)
	binary.BigEndian.PutUint16(b[6:8], seq)
	copy(b[8:], data)
	binary.BigEndian.PutUint16(b[2:4], checksum(sum, b))
	return b
}

func icmpProto(a netip.Addr) uint8 {
	if a.Is4() {
		return protoICMP
	}
	return protoICMPv6
}

func echoRequestType(a netip.Addr) uint8 {
	if a.Is4() {
		return icmp4EchoRequest
	}
	return icmp6EchoRequest
}

// ---- tests of the helpers themselves ----

// TestPacketHelpers checks the encoders against golang.org/x/net's ICMP
// marshaller and the parser against the encoders.
func TestPacketHelpers(t *testing.T) {
	cases := []struct {
		name     string
		src, dst netip.Addr
	}{
		{"v4", netip.MustParseAddr("100.96.0.2"), netip.MustParseAddr("100.96.0.1")},
		{"v6", netip.MustParseAddr("fd00:96::2"), netip.MustParseAddr("fd00:96::1")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, size := range []int{0, 1, 31, 1200} {
				data := make([]byte, size)
				for i := range data {
					data[i] = byte(i*7 + 3)
				}
				// ICMP against x/net/icmp.
				var typ icmp.Type = ipv4.ICMPTypeEcho
				var psh []byte
				if tc.src.Is6() {
					typ = ipv6.ICMPTypeEchoRequest
					psh = icmp.IPv6PseudoHeader(tc.src.AsSlice(), tc.dst.AsSlice())
				}
				want, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: 0x1234, Seq: 7, Data: data}}).Marshal(psh)
				if err != nil {
					t.Fatal(err)
				}
				got := icmpEcho(tc.src, tc.dst, false, 0x1234, 7, data)
				if string(got) != string(want) {
					t.Fatalf("size %d: icmpEcho\n got %x\nwant %x", size, got, want)
				}
				// UDP checksum verifies to zero over the pseudo-header.
				u := udpDatagram(tc.src, tc.dst, 40000, 7, data)
				if c := checksum(pseudoSum(tc.src, tc.dst, protoUDP, len(u)), u); c != 0 {
					t.Fatalf("size %d: UDP checksum does not verify (%#x)", size, c)
				}
				// parse(build) round trip.
				pkt := buildIP(tc.src, tc.dst, protoUDP, 64, 1, u)
				p, err := parseIP(pkt)
				if err != nil {
					t.Fatal(err)
				}
				if p.Src != tc.src || p.Dst != tc.dst || p.Proto != protoUDP || p.TTL != 64 || string(p.Payload) != string(u) {
					t.Fatalf("size %d: parsed %v", size, p)
				}
			}
		})
	}
}

// FuzzParseIP: parseIP never panics, and what it accepts re-encodes to the
// same bytes apart from the fields buildIP does not carry (IPv4 ID/flags/
// TOS, IPv6 traffic class/flow label).
func FuzzParseIP(f *testing.F) {
	a4, b4 := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.1.1")
	a6, b6 := netip.MustParseAddr("2001:db8:1::2"), netip.MustParseAddr("2001:db8:2::1")
	f.Add(buildIP(a4, b4, protoUDP, 64, 0, udpDatagram(a4, b4, 1, 2, []byte("x"))))
	f.Add(buildIP(a6, b6, protoICMPv6, 1, 0, icmpEcho(a6, b6, false, 1, 1, nil)))
	f.Add([]byte{0x45})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseIP(b)
		if err != nil {
			return
		}
		again := buildIP(p.Src, p.Dst, p.Proto, p.TTL, 0, p.Payload)
		if len(again) != len(b) || string(again[len(p.Header):]) != string(p.Payload) {
			t.Fatalf("re-encoding changed the packet: %x -> %x", b, again)
		}
		q, err := parseIP(again)
		if err != nil || q.Src != p.Src || q.Dst != p.Dst || q.Proto != p.Proto || q.TTL != p.TTL {
			t.Fatalf("re-encoded packet parses as %v, %v; want %v", q, err, p)
		}
	})
}
