package datagram

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

func TestAppendTooBig(t *testing.T) {
	big4 := buildV4(v4opts{proto: 17, df: true, payload: udpPayload(1472)}) // 1500 bytes
	small4 := buildV4(v4opts{proto: 6, df: true, payload: udpPayload(100)})
	big6 := buildV6(v6opts{proto: 17, payload: udpPayload(1452)}) // 1500 bytes
	small6 := buildV6(v6opts{proto: 17, payload: udpPayload(100)})

	tests := []struct {
		name    string
		orig    []byte
		mtu     int
		ok      bool
		wantMTU uint32
		bodyLen int // bytes of orig quoted
	}{
		{name: "v4 DF large", orig: big4, mtu: 1300, ok: true, wantMTU: 1300, bodyLen: 576 - 28},
		{name: "v4 DF small quotes all", orig: small4, mtu: 100, ok: true, wantMTU: 100, bodyLen: len(small4)},
		{name: "v4 DF trailing bytes not quoted", orig: append(append([]byte{}, small4...), 9, 9, 9), mtu: 100, ok: true, wantMTU: 100, bodyLen: len(small4)},
		{name: "v4 mtu clamped to 68", orig: big4, mtu: 10, ok: true, wantMTU: 68, bodyLen: 548},
		{name: "v4 mtu clamped to 65535", orig: big4, mtu: 1 << 20, ok: true, wantMTU: 65535, bodyLen: 548},
		{name: "v4 ICMP echo with DF", orig: buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(8, 1000)}), mtu: 1280, ok: true, wantMTU: 1280, bodyLen: 548},
		{name: "v4 first fragment with DF and MF", orig: buildV4(v4opts{proto: 17, df: true, mf: true, payload: udpPayload(50)}), mtu: 1280, ok: true, wantMTU: 1280, bodyLen: 78},
		{name: "v4 without DF", orig: buildV4(v4opts{proto: 17, payload: udpPayload(1472)}), mtu: 1300},
		{name: "v4 ICMP dest unreachable", orig: buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(3, 1000)})},
		{name: "v4 ICMP source quench", orig: buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(4, 1000)})},
		{name: "v4 ICMP redirect", orig: buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(5, 1000)})},
		{name: "v4 ICMP time exceeded", orig: buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(11, 1000)})},
		{name: "v4 ICMP parameter problem", orig: buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(12, 1000)})},
		{name: "v4 ICMP without a type byte", orig: buildV4(v4opts{proto: 1, df: true})},
		{name: "v4 non-initial fragment", orig: buildV4(v4opts{proto: 17, df: true, fragOff: 1480, payload: udpPayload(100)})},
		{name: "v4 multicast source", orig: buildV4(v4opts{src: netip.MustParseAddr("224.0.0.5"), proto: 17, df: true, payload: udpPayload(10)})},
		{name: "v4 unspecified source", orig: buildV4(v4opts{src: netip.IPv4Unspecified(), proto: 17, df: true, payload: udpPayload(10)})},
		{name: "v4 broadcast source", orig: buildV4(v4opts{src: netip.MustParseAddr("255.255.255.255"), proto: 17, df: true, payload: udpPayload(10)})},
		{name: "v4 multicast destination", orig: buildV4(v4opts{dst: netip.MustParseAddr("239.1.2.3"), proto: 17, df: true, payload: udpPayload(10)})},
		{name: "v4 truncated orig", orig: big4[:1000]},

		{name: "v6 large", orig: big6, mtu: 1400, ok: true, wantMTU: 1400, bodyLen: 1280 - 48},
		{name: "v6 mtu raised to 1280", orig: big6, mtu: 1200, ok: true, wantMTU: 1280, bodyLen: 1232},
		{name: "v6 small quotes all", orig: small6, mtu: 1300, ok: true, wantMTU: 1300, bodyLen: len(small6)},
		{name: "v6 ICMPv6 echo request", orig: buildV6(v6opts{proto: 58, payload: icmpMsg(128, 1400)}), mtu: 1300, ok: true, wantMTU: 1300, bodyLen: 1232},
		{name: "v6 ICMPv6 after extension headers, informational", orig: buildV6(v6opts{proto: 58, payload: icmpMsg(129, 100),
			exts: []ext{{typ: protoHopByHop, len: 8}, {typ: protoDestOpts, len: 8}}}), mtu: 1300, ok: true, wantMTU: 1300, bodyLen: 40 + 16 + 108},
		{name: "v6 ICMPv6 destination unreachable", orig: buildV6(v6opts{proto: 58, payload: icmpMsg(1, 1400)}), mtu: 1300},
		{name: "v6 ICMPv6 packet too big", orig: buildV6(v6opts{proto: 58, payload: icmpMsg(2, 1400)}), mtu: 1300},
		{name: "v6 ICMPv6 error after extension headers", orig: buildV6(v6opts{proto: 58, payload: icmpMsg(3, 1400),
			exts: []ext{{typ: protoHopByHop, len: 8}, {typ: protoRouting, len: 24}}}), mtu: 1300},
		{name: "v6 ICMPv6 non-initial fragment", orig: buildV6(v6opts{proto: 58, payload: icmpMsg(128, 1400), exts: []ext{{typ: protoFragment, frag: 8}}}), mtu: 1300},
		{name: "v6 UDP non-initial fragment", orig: buildV6(v6opts{proto: 17, payload: udpPayload(100), exts: []ext{{typ: protoFragment, frag: 8}}}),
			mtu: 1300, ok: true, wantMTU: 1300, bodyLen: 48 + 108},
		{name: "v6 ICMPv6 without a type byte", orig: buildV6(v6opts{proto: 58})},
		{name: "v6 multicast source", orig: buildV6(v6opts{src: netip.MustParseAddr("ff02::1"), proto: 17, payload: udpPayload(10)}), mtu: 1300},
		{name: "v6 unspecified source", orig: buildV6(v6opts{src: netip.IPv6Unspecified(), proto: 17, payload: udpPayload(10)}), mtu: 1300},
		{name: "v6 multicast destination", orig: buildV6(v6opts{dst: netip.MustParseAddr("ff0e::1"), proto: 17, payload: udpPayload(10)}), mtu: 1300},
		{name: "garbage", orig: []byte{0x12, 0x34}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep")
			dst := append(make([]byte, 0, 2048), prefix...)
			out, ok := AppendTooBig(dst, tt.orig, tt.mtu)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !bytes.Equal(out[:len(prefix)], prefix) {
				t.Fatalf("dst's existing bytes changed: %q", out[:len(prefix)])
			}
			if !ok {
				if len(out) != len(prefix) {
					t.Fatalf("ok=false but %d bytes appended", len(out)-len(prefix))
				}
				return
			}
			if &out[0] != &dst[0] {
				t.Fatal("reallocated although cap(dst) sufficed")
			}
			reply := out[len(prefix):]
			p, msg := verifyICMP(t, reply)
			var o Packet
			if err := o.Decode(tt.orig); err != nil {
				t.Fatal(err)
			}
			if p.Src != o.Dst || p.Dst != o.Src || p.TTL != 64 {
				t.Fatalf("reply %v -> %v ttl %d, want %v -> %v ttl 64", p.Src, p.Dst, p.TTL, o.Dst, o.Src)
			}
			if o.Version == 4 {
				if len(reply) > 576 || msg[0] != 3 || msg[1] != 4 || binary.BigEndian.Uint16(msg[4:]) != 0 {
					t.Fatalf("ICMPv4 len %d type %d code %d unused %x", len(reply), msg[0], msg[1], msg[4:6])
				}
				if got := uint32(binary.BigEndian.Uint16(msg[6:])); got != tt.wantMTU {
					t.Fatalf("next-hop MTU %d, want %d", got, tt.wantMTU)
				}
			} else {
				if len(reply) > 1280 || msg[0] != 2 || msg[1] != 0 {
					t.Fatalf("ICMPv6 len %d type %d code %d", len(reply), msg[0], msg[1])
				}
				if got := binary.BigEndian.Uint32(msg[4:]); got != tt.wantMTU {
					t.Fatalf("MTU %d, want %d", got, tt.wantMTU)
				}
			}
			if body := msg[8:]; len(body) != tt.bodyLen || !bytes.Equal(body, tt.orig[:tt.bodyLen]) {
				t.Fatalf("quoted %d bytes, want the first %d of orig", len(body), tt.bodyLen)
			}
		})
	}
}

func TestAppendTooBigGrowsNilDst(t *testing.T) {
	orig := buildV6(v6opts{proto: 6, payload: udpPayload(1400)})
	out, ok := AppendTooBig(nil, orig, 1300)
	if !ok || len(out) != 1280 {
		t.Fatalf("ok %v len %d", ok, len(out))
	}
	verifyICMP(t, out)
}

func TestChecksum(t *testing.T) {
	for n := 0; n < 70; n++ {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*37 + 11)
		}
		if got, want := checksum(b, 0), refChecksum(b); got != want {
			t.Fatalf("len %d: checksum %04x, reference %04x", n, got, want)
		}
	}
	// All ones must not overflow the accumulator.
	b := bytes.Repeat([]byte{0xff}, 65535)
	if got, want := checksum(b, 0), refChecksum(b); got != want {
		t.Fatalf("all ones: %04x vs %04x", got, want)
	}
}

func FuzzAppendTooBig(f *testing.F) {
	f.Add(buildV4(v4opts{proto: 17, df: true, payload: udpPayload(1472)}), 1300)
	f.Add(buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(8, 600)}), 0)
	f.Add(buildV4(v4opts{proto: 1, df: true, payload: icmpMsg(3, 600)}), 1000)
	f.Add(buildV4(v4opts{proto: 17, payload: udpPayload(100)}), 1000)
	f.Add(buildV6(v6opts{proto: 17, payload: udpPayload(1452)}), 1400)
	f.Add(buildV6(v6opts{proto: 58, payload: icmpMsg(1, 10)}), 1400)
	f.Add(buildV6(v6opts{proto: 58, payload: icmpMsg(128, 10), exts: []ext{{typ: protoHopByHop, len: 8}, {typ: protoFragment}}}), -5)
	f.Fuzz(func(t *testing.T, orig []byte, mtu int) {
		keep := []byte{1, 2, 3}
		out, ok := AppendTooBig(append([]byte{}, keep...), orig, mtu)
		if !bytes.Equal(out[:3], keep) {
			t.Fatal("dst prefix changed")
		}
		if !ok {
			if len(out) != 3 {
				t.Fatal("bytes appended with ok=false")
			}
			return
		}
		reply := out[3:]
		p, msg := verifyICMP(t, reply)
		switch {
		case p.Version == 4 && (len(reply) > 576 || msg[0] != 3 || msg[1] != 4):
			t.Fatalf("bad ICMPv4 reply len %d type %d/%d", len(reply), msg[0], msg[1])
		case p.Version == 6 && (len(reply) > 1280 || msg[0] != 2 || binary.BigEndian.Uint32(msg[4:]) < 1280):
			t.Fatalf("bad ICMPv6 reply len %d type %d mtu %d", len(reply), msg[0], binary.BigEndian.Uint32(msg[4:]))
		}
		// Never an error about an error: the quoted packet must not be one.
		var o Packet
		if err := o.Decode(orig); err != nil {
			t.Fatalf("replied to an undecodable packet: %v", err)
		}
		if isICMPError(orig, &o) {
			t.Fatal("replied to an ICMP error")
		}
	})
}
