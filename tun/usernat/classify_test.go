package usernat

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"
)

// buildEchoRequestPacket builds a valid echo request IP packet.
func buildEchoRequestPacket(v6 bool, src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	p := buildEchoReply(v6, src, dst, id, seq, data)
	hl := 20
	if v6 {
		hl = 40
	}
	m := p[hl:]
	if v6 {
		m[0] = icmpv6Echo
	} else {
		m[0] = icmpv4Echo
	}
	m[2], m[3] = 0, 0
	var acc uint32
	if v6 {
		acc = icmpv6PseudoSum(src, dst, len(m))
	}
	binary.BigEndian.PutUint16(m[2:4], fold(sum16(acc, m)))
	return p
}

// buildL4Packet builds an IP packet with the given protocol and an 8-byte
// zero transport header (enough for classify; checksums are not valid).
func buildL4Packet(v6 bool, src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if v6 {
		p := make([]byte, 40+len(l4))
		p[0] = 0x60
		binary.BigEndian.PutUint16(p[4:6], uint16(len(l4)))
		p[6], p[7] = proto, 64
		s, d := src.As16(), dst.As16()
		copy(p[8:], s[:])
		copy(p[24:], d[:])
		copy(p[40:], l4)
		return p
	}
	p := make([]byte, 20+len(l4))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	p[8], p[9] = 64, proto
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:12], fold(sum16(0, p[:20])))
	copy(p[20:], l4)
	return p
}

func testRules() *addrRules {
	return &addrRules{gw4: testGW4, gw6: testGW6, prefixes: []netip.Prefix{testPool4, testPool6}}
}

func TestClassify(t *testing.T) {
	remote4 := netip.MustParseAddr("192.0.2.10")
	remote6 := netip.MustParseAddr("2001:db8::10")
	icmpType := func(typ byte) []byte { return []byte{typ, 0, 0, 0, 0, 0, 0, 0} }
	fragV4 := buildL4Packet(false, testClient4, remote4, protoICMPv4, icmpType(icmpv4Echo))
	fragV4[6] = 0x20 // MF
	// IPv6 with a hop-by-hop header, then TCP.
	hbh := buildL4Packet(true, testClient6, remote6, 0, append([]byte{protoTCP, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 20)...))
	// IPv6 fragment header (offset 0, M set) carrying ICMPv6 echo.
	frag6 := buildL4Packet(true, testClient6, remote6, 44, append([]byte{protoICMPv6, 0, 0, 1, 0, 0, 0, 1}, icmpType(icmpv6Echo)...))

	tests := []struct {
		name  string
		pkt   []byte
		want  verdict
		proto uint8
	}{
		{"empty", nil, dropMalformed, 0},
		{"version 5", []byte{0x50, 0, 0, 0}, dropMalformed, 0},
		{"short v4", make([]byte, 19), dropMalformed, 0},
		{"v4 ihl < 5", func() []byte {
			p := buildL4Packet(false, testClient4, remote4, protoTCP, make([]byte, 20))
			p[0] = 0x44
			return p
		}(), dropMalformed, 0},
		{"v4 total > len", func() []byte {
			p := buildL4Packet(false, testClient4, remote4, protoTCP, make([]byte, 20))
			binary.BigEndian.PutUint16(p[2:4], 100)
			return p
		}(), dropMalformed, 0},
		{"v6 short", append([]byte{0x60}, make([]byte, 38)...), dropMalformed, 0},
		{"v6 payload > len", func() []byte {
			p := buildL4Packet(true, testClient6, remote6, protoTCP, make([]byte, 20))
			binary.BigEndian.PutUint16(p[4:6], 200)
			return p
		}(), dropMalformed, 0},
		{"tcp v4", buildL4Packet(false, testClient4, remote4, protoTCP, make([]byte, 20)), toStack, protoTCP},
		{"udp v6", buildL4Packet(true, testClient6, remote6, protoUDP, make([]byte, 8)), toStack, protoUDP},
		{"tcp to gateway", buildL4Packet(false, testClient4, testGW4, protoTCP, make([]byte, 20)), toStack, protoTCP},
		{"v6 hop-by-hop then tcp", hbh, toStack, protoTCP},
		{"echo v4 remote", buildEchoRequestPacket(false, testClient4, remote4, 1, 1, nil), toEcho, protoICMPv4},
		{"echo v6 remote", buildEchoRequestPacket(true, testClient6, remote6, 1, 1, []byte("x")), toEcho, protoICMPv6},
		{"echo v4 gateway", buildEchoRequestPacket(false, testClient4, testGW4, 1, 1, nil), toStack, protoICMPv4},
		{"echo v6 gateway", buildEchoRequestPacket(true, testClient6, testGW6, 1, 1, nil), toStack, protoICMPv6},
		{"icmp truncated", buildL4Packet(false, testClient4, remote4, protoICMPv4, []byte{8, 0, 0}), dropMalformed, protoICMPv4},
		{"echo reply v4 remote", buildL4Packet(false, testClient4, remote4, protoICMPv4, icmpType(icmpv4EchoReply)), dropUnsupported, protoICMPv4},
		{"unreachable v4 remote", buildL4Packet(false, testClient4, remote4, protoICMPv4, icmpType(icmpv4Unreachable)), toStack, protoICMPv4},
		{"too big v6 remote", buildL4Packet(true, testClient6, remote6, protoICMPv6, icmpType(icmpv6TooBig)), toStack, protoICMPv6},
		{"neighbor solicitation", buildL4Packet(true, testClient6, remote6, protoICMPv6, icmpType(135)), dropUnsupported, protoICMPv6},
		{"icmpv4 in v6", buildL4Packet(true, testClient6, remote6, protoICMPv4, icmpType(icmpv4Echo)), dropUnsupported, protoICMPv4},
		{"fragmented echo v4", fragV4, dropUnsupported, protoICMPv4},
		{"fragmented echo v6", frag6, dropUnsupported, protoICMPv6},
		{"gre", buildL4Packet(false, testClient4, remote4, 47, make([]byte, 8)), dropUnsupported, 47},
		{"source outside pool", buildL4Packet(false, remote4, remote4, protoTCP, make([]byte, 20)), dropSource, protoTCP},
		{"source is gateway", buildL4Packet(false, testGW4, remote4, protoTCP, make([]byte, 20)), dropSource, protoTCP},
		{"dst loopback", buildL4Packet(false, testClient4, netip.MustParseAddr("127.0.0.1"), protoTCP, make([]byte, 20)), dropDestination, protoTCP},
		{"dst ::1", buildL4Packet(true, testClient6, netip.IPv6Loopback(), protoTCP, make([]byte, 20)), dropDestination, protoTCP},
		{"dst multicast", buildL4Packet(false, testClient4, netip.MustParseAddr("224.0.0.251"), protoUDP, make([]byte, 8)), dropDestination, protoUDP},
		{"dst broadcast", buildL4Packet(false, testClient4, netip.MustParseAddr("255.255.255.255"), protoUDP, make([]byte, 8)), dropDestination, protoUDP},
		{"dst metadata", buildL4Packet(false, testClient4, netip.MustParseAddr("169.254.169.254"), protoTCP, make([]byte, 20)), dropDestination, protoTCP},
		{"dst other client", buildL4Packet(false, testClient4, netip.MustParseAddr("10.77.0.9"), protoTCP, make([]byte, 20)), dropDestination, protoTCP},
		{"dst v4-mapped", buildL4Packet(true, testClient6, netip.MustParseAddr("::ffff:192.0.2.1"), protoTCP, make([]byte, 20)), dropDestination, protoTCP},
		{"trailing padding", append(buildL4Packet(false, testClient4, remote4, protoUDP, make([]byte, 8)), 0, 0, 0), toStack, protoUDP},
	}
	r := testRules()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var info pktInfo
			got := r.classify(tt.pkt, &info)
			if got != tt.want {
				t.Fatalf("classify = %d, want %d", got, tt.want)
			}
			if got == toStack || got == toEcho {
				if info.proto != tt.proto {
					t.Errorf("proto = %d, want %d", info.proto, tt.proto)
				}
				if info.end > len(tt.pkt) || info.l4 > info.end {
					t.Errorf("bad offsets l4 %d end %d len %d", info.l4, info.end, len(tt.pkt))
				}
			}
		})
	}
}

func TestClassifyNoPrefixes(t *testing.T) {
	r := &addrRules{gw4: testGW4}
	var info pktInfo
	p := buildL4Packet(false, netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("192.0.2.1"), protoTCP, make([]byte, 20))
	if v := r.classify(p, &info); v != toStack {
		t.Fatalf("without Prefixes any source is allowed; got %d", v)
	}
}

func TestClassifyAllocs(t *testing.T) {
	r := testRules()
	p := buildL4Packet(true, testClient6, netip.MustParseAddr("2001:db8::1"), protoTCP, make([]byte, 20))
	allocs := testing.AllocsPerRun(100, func() {
		var info pktInfo
		r.classify(p, &info)
	})
	if allocs != 0 {
		t.Fatalf("classify allocates %v times", allocs)
	}
}

func TestEchoReplyChecksums(t *testing.T) {
	for _, tt := range []struct {
		name     string
		src, dst netip.Addr
	}{
		{"v4", netip.MustParseAddr("192.0.2.1"), testClient4},
		{"v6", netip.MustParseAddr("2001:db8::1"), testClient6},
	} {
		for _, n := range []int{0, 1, 2, 55, 1000} {
			v6 := tt.src.Is6()
			p := buildEchoReply(v6, tt.src, tt.dst, 0x1234, 0xabcd, stream(uint64(n), n))
			hl := 20
			if v6 {
				hl = 40
			} else if fold(sum16(0, p[:20])) != 0 {
				t.Errorf("%s/%d: bad IPv4 header checksum", tt.name, n)
			}
			if !icmpChecksumOK(v6, tt.src, tt.dst, p[hl:]) {
				t.Errorf("%s/%d: bad ICMP checksum", tt.name, n)
			}
			var info pktInfo
			r := &addrRules{gw4: testGW4, gw6: testGW6}
			// The reply parses (as a packet from the remote to the client).
			if v := r.classify(p, &info); v == dropMalformed {
				t.Errorf("%s/%d: reply does not parse", tt.name, n)
			}
			if info.src != tt.src || info.dst != tt.dst || info.end != len(p) {
				t.Errorf("%s/%d: parsed %v -> %v end %d", tt.name, n, info.src, info.dst, info.end)
			}
		}
	}
}

func FuzzClassify(f *testing.F) {
	remote4 := netip.MustParseAddr("192.0.2.10")
	remote6 := netip.MustParseAddr("2001:db8::10")
	f.Add(buildEchoRequestPacket(false, testClient4, remote4, 1, 2, []byte("seed")))
	f.Add(buildEchoRequestPacket(true, testClient6, remote6, 1, 2, []byte("seed")))
	f.Add(buildL4Packet(false, testClient4, remote4, protoTCP, make([]byte, 20)))
	f.Add(buildL4Packet(true, testClient6, remote6, 0, append([]byte{protoUDP, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 8)...)))
	f.Add(buildL4Packet(true, testClient6, remote6, 44, append([]byte{protoICMPv6, 0, 0, 1, 0, 0, 0, 1}, 128, 0, 0, 0, 0, 0, 0, 0)))
	r := testRules()
	f.Fuzz(func(t *testing.T, pkt []byte) {
		var info pktInfo
		v := r.classify(pkt, &info)
		switch v {
		case toStack, toEcho:
			if info.end > len(pkt) || info.l4 > info.end || info.end < 20 {
				t.Fatalf("verdict %d with l4 %d end %d len %d", v, info.l4, info.end, len(pkt))
			}
			if !r.sourceOK(info.src) {
				t.Fatalf("accepted source %v", info.src)
			}
		}
		if v == toEcho {
			if info.end-info.l4 < 8 {
				t.Fatalf("echo shorter than an ICMP header")
			}
			if r.isGateway(info.dst) {
				t.Fatalf("echo to gateway %v taken from the stack", info.dst)
			}
		}
	})
}

// FuzzWrite feeds arbitrary packets through a whole Stack: nothing may
// panic, and Write always consumes the batch.
func FuzzWrite(f *testing.F) {
	remote4 := netip.MustParseAddr("192.0.2.10")
	f.Add(buildEchoRequestPacket(false, testClient4, testGW4, 1, 2, []byte("seed")))
	f.Add(buildEchoRequestPacket(true, testClient6, testGW6, 1, 2, []byte("seed")))
	f.Add(buildL4Packet(false, testClient4, remote4, protoTCP, make([]byte, 20)))
	f.Add(buildL4Packet(false, testClient4, testGW4, protoUDP, []byte{0, 1, 0, 9, 0, 8, 0, 0}))
	// No host sockets at all: mutated packets may name any destination,
	// and fuzzing must not send traffic off this host.
	s, err := New(Config{Gateway4: testGW4, Gateway6: testGW6, Prefixes: []netip.Prefix{testPool4, testPool6},
		Dial:       func(context.Context, string, string) (net.Conn, error) { return nil, syscall.ECONNREFUSED },
		echoListen: func(string, string) (icmpConn, error) { return nil, syscall.EPERM },
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if n, err := s.Write([][]byte{pkt}, 0); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	})
}
