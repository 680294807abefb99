package datagram

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	a4, b4 := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("192.0.2.1")
	a6, b6 := netip.MustParseAddr("fd00::2"), netip.MustParseAddr("2001:db8::1")
	udp := udpPayload(20)
	mod := func(b []byte, f func([]byte)) []byte { f(b); return b }
	manyDestOpts := make([]ext, 9)
	for i := range manyDestOpts {
		manyDestOpts[i] = ext{typ: protoDestOpts, len: 8}
	}

	tests := []struct {
		name string
		in   []byte
		want Packet
		err  error // sentinel, nil for success
	}{
		{name: "IPv4 UDP", in: buildV4(v4opts{proto: 17, payload: udp}),
			want: Packet{Version: 4, Src: a4, Dst: b4, Proto: 17, TTL: 63, Len: 48, HdrLen: 20}},
		{name: "IPv4 DF", in: buildV4(v4opts{proto: 6, df: true, payload: udp}),
			want: Packet{Version: 4, Src: a4, Dst: b4, Proto: 6, TTL: 63, Len: 48, HdrLen: 20, DF: true}},
		{name: "IPv4 options", in: buildV4(v4opts{proto: 17, options: []byte{1, 1, 1, 0}, payload: udp}),
			want: Packet{Version: 4, Src: a4, Dst: b4, Proto: 17, TTL: 63, Len: 52, HdrLen: 24}},
		{name: "IPv4 first fragment (MF)", in: buildV4(v4opts{proto: 17, mf: true, payload: udp}),
			want: Packet{Version: 4, Src: a4, Dst: b4, Proto: 17, TTL: 63, Len: 48, HdrLen: 20, Fragment: true}},
		{name: "IPv4 last fragment (offset)", in: buildV4(v4opts{proto: 17, fragOff: 1480, payload: udp}),
			want: Packet{Version: 4, Src: a4, Dst: b4, Proto: 17, TTL: 63, Len: 48, HdrLen: 20, Fragment: true, FragOffset: 1480}},
		{name: "IPv4 trailing bytes beyond total length", in: append(buildV4(v4opts{proto: 17, payload: udp}), 0, 0, 0),
			want: Packet{Version: 4, Src: a4, Dst: b4, Proto: 17, TTL: 63, Len: 48, HdrLen: 20}},
		{name: "IPv4 header only", in: buildV4(v4opts{proto: 17}),
			want: Packet{Version: 4, Src: a4, Dst: b4, Proto: 17, TTL: 63, Len: 20, HdrLen: 20}},

		{name: "IPv6 UDP", in: buildV6(v6opts{proto: 17, payload: udp}),
			want: Packet{Version: 6, Src: a6, Dst: b6, Proto: 17, TTL: 61, Len: 68, HdrLen: 40}},
		{name: "IPv6 hop-by-hop, dest-opts, routing, dest-opts", in: buildV6(v6opts{proto: 6, payload: udp, exts: []ext{
			{typ: protoHopByHop, len: 8}, {typ: protoDestOpts, len: 16}, {typ: protoRouting, len: 24}, {typ: protoDestOpts, len: 8}}}),
			want: Packet{Version: 6, Src: a6, Dst: b6, Proto: 6, TTL: 61, Len: 40 + 56 + 28, HdrLen: 96}},
		{name: "IPv6 first fragment", in: buildV6(v6opts{proto: 17, payload: udp, exts: []ext{{typ: protoFragment}}}),
			want: Packet{Version: 6, Src: a6, Dst: b6, Proto: 17, TTL: 61, Len: 76, HdrLen: 48, Fragment: true}},
		{name: "IPv6 non-initial fragment stops the walk", in: buildV6(v6opts{proto: protoDestOpts, payload: udp, exts: []ext{{typ: protoFragment, frag: 1232}}}),
			want: Packet{Version: 6, Src: a6, Dst: b6, Proto: protoDestOpts, TTL: 61, Len: 76, HdrLen: 48, Fragment: true, FragOffset: 1232}},
		{name: "IPv6 no next header", in: buildV6(v6opts{proto: protoNoNext}),
			want: Packet{Version: 6, Src: a6, Dst: b6, Proto: protoNoNext, TTL: 61, Len: 40, HdrLen: 40}},
		{name: "IPv6 8 extension headers", in: buildV6(v6opts{proto: 17, exts: manyDestOpts[:8]}),
			want: Packet{Version: 6, Src: a6, Dst: b6, Proto: 17, TTL: 61, Len: 104, HdrLen: 104}},
		{name: "IPv6 trailing bytes", in: append(buildV6(v6opts{proto: 17, payload: udp}), 1, 2),
			want: Packet{Version: 6, Src: a6, Dst: b6, Proto: 17, TTL: 61, Len: 68, HdrLen: 40}},

		{name: "empty", in: nil, err: ErrTooShort},
		{name: "version 5", in: mod(buildV4(v4opts{payload: udp}), func(b []byte) { b[0] = 0x55 }), err: ErrBadVersion},
		{name: "version 0", in: make([]byte, 40), err: ErrBadVersion},
		{name: "IPv4 19 bytes", in: buildV4(v4opts{payload: udp})[:19], err: ErrTooShort},
		{name: "IPv4 IHL 4", in: mod(buildV4(v4opts{payload: udp}), func(b []byte) { b[0] = 0x44 }), err: ErrBadHeader},
		{name: "IPv4 IHL beyond packet", in: mod(buildV4(v4opts{}), func(b []byte) { b[0] = 0x46 }), err: ErrTooShort},
		{name: "IPv4 total length below IHL", in: mod(buildV4(v4opts{payload: udp}), func(b []byte) { binary.BigEndian.PutUint16(b[2:], 19) }), err: ErrBadLength},
		{name: "IPv4 truncated", in: buildV4(v4opts{payload: udp})[:40], err: ErrTooShort},
		{name: "IPv6 39 bytes", in: buildV6(v6opts{proto: 17})[:39], err: ErrTooShort},
		{name: "IPv6 truncated payload", in: buildV6(v6opts{proto: 17, payload: udp})[:60], err: ErrTooShort},
		{name: "IPv6 extension header past payload length",
			in: mod(buildV6(v6opts{proto: 17, exts: []ext{{typ: protoDestOpts, len: 16}}, payload: udp}), func(b []byte) {
				b[41] = 200 // claims 1608 bytes
			}), err: ErrBadLength},
		{name: "IPv6 extension header with no room for its first 8 bytes",
			in: mod(buildV6(v6opts{proto: protoDestOpts, payload: []byte{17, 0, 0, 0}}), func(b []byte) {}), err: ErrBadLength},
		{name: "IPv6 hop-by-hop not first", in: buildV6(v6opts{proto: 17, exts: []ext{{typ: protoDestOpts, len: 8}, {typ: protoHopByHop, len: 8}}}), err: ErrBadHeader},
		{name: "IPv6 9 extension headers", in: buildV6(v6opts{proto: 17, exts: manyDestOpts}), err: ErrBadHeader},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Packet{Version: 9, Proto: 99, DF: true, Fragment: true, FragOffset: 8} // stale values must be overwritten
			err := p.Decode(tt.in)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				if !strings.HasPrefix(err.Error(), "ip header: ") {
					t.Fatalf("error %q lacks the \"ip header: \" context", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if p != tt.want {
				t.Fatalf("Decode =\n %+v\nwant\n %+v", p, tt.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	udp := udpPayload(12)
	f.Add(buildV4(v4opts{proto: 17, payload: udp}))
	f.Add(buildV4(v4opts{proto: 1, df: true, options: []byte{1, 1, 1, 0}, payload: icmpMsg(8, 4)}))
	f.Add(buildV4(v4opts{proto: 17, fragOff: 8, mf: true, payload: udp}))
	f.Add(buildV6(v6opts{proto: 17, payload: udp}))
	f.Add(buildV6(v6opts{proto: 58, payload: icmpMsg(128, 4), exts: []ext{
		{typ: protoHopByHop, len: 8}, {typ: protoRouting, len: 24}, {typ: protoFragment}, {typ: protoDestOpts, len: 8}}}))
	f.Add(buildV6(v6opts{proto: 6, exts: []ext{{typ: protoFragment, frag: 64}}}))
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if err := p.Decode(b); err != nil {
			for _, s := range []error{ErrTooShort, ErrBadVersion, ErrBadLength, ErrBadHeader} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error without a sentinel: %v", err)
		}
		if p.Len > len(b) || p.HdrLen > p.Len {
			t.Fatalf("Len %d HdrLen %d len(b) %d", p.Len, p.HdrLen, len(b))
		}
		switch p.Version {
		case 4:
			if p.HdrLen < 20 || p.HdrLen > 60 || !p.Src.Is4() || !p.Dst.Is4() {
				t.Fatalf("bad IPv4 result %+v", p)
			}
		case 6:
			if p.HdrLen < 40 || !p.Src.Is6() || !p.Dst.Is6() || p.DF {
				t.Fatalf("bad IPv6 result %+v", p)
			}
		default:
			t.Fatalf("version %d accepted", p.Version)
		}
		if p.FragOffset != 0 && !p.Fragment {
			t.Fatalf("FragOffset without Fragment: %+v", p)
		}
		if sp, dp, ok := p.Ports(b); ok {
			if p.Proto != 6 && p.Proto != 17 || p.FragOffset != 0 || p.HdrLen+4 > p.Len {
				t.Fatalf("Ports ok for %+v", p)
			}
			if want := uint16(b[p.HdrLen])<<8 | uint16(b[p.HdrLen+1]); sp != want {
				t.Fatalf("source port %d, want %d", sp, want)
			}
			if want := uint16(b[p.HdrLen+2])<<8 | uint16(b[p.HdrLen+3]); dp != want {
				t.Fatalf("destination port %d, want %d", dp, want)
			}
		}
		// Decoding only the packet's own bytes gives the same result.
		var q Packet
		if err := q.Decode(b[:p.Len]); err != nil || q != p {
			t.Fatalf("re-decoding b[:Len]: %v %+v vs %+v", err, q, p)
		}
	})
}

func TestPorts(t *testing.T) {
	tcp := udpPayload(4) // the first 4 bytes are the ports either way
	for _, tt := range []struct {
		name     string
		pkt      []byte
		src, dst uint16
		ok       bool
	}{
		{"ipv4 udp", buildV4(v4opts{proto: 17, payload: udpPayload(4)}), 40000, 53, true},
		{"ipv4 tcp with options", buildV4(v4opts{proto: 6, options: []byte{1, 1, 1, 0}, payload: tcp}), 40000, 53, true},
		{"ipv4 icmp", buildV4(v4opts{proto: 1, payload: icmpMsg(8, 4)}), 0, 0, false},
		{"ipv4 first fragment", buildV4(v4opts{proto: 17, mf: true, payload: udpPayload(4)}), 40000, 53, true},
		{"ipv4 later fragment", buildV4(v4opts{proto: 17, fragOff: 8, payload: udpPayload(4)}), 0, 0, false},
		{"ipv4 truncated transport header", buildV4(v4opts{proto: 6, payload: []byte{1, 2, 3}}), 0, 0, false},
		{"ipv6 udp", buildV6(v6opts{proto: 17, payload: udpPayload(4)}), 40000, 53, true},
		{"ipv6 tcp after extension headers", buildV6(v6opts{proto: 6, payload: tcp, exts: []ext{{typ: protoHopByHop, len: 8}, {typ: protoDestOpts, len: 16}}}), 40000, 53, true},
		{"ipv6 later fragment", buildV6(v6opts{proto: 6, payload: tcp, exts: []ext{{typ: protoFragment, frag: 64}}}), 0, 0, false},
		{"ipv6 icmpv6", buildV6(v6opts{proto: 58, payload: icmpMsg(128, 4)}), 0, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var p Packet
			if err := p.Decode(tt.pkt); err != nil {
				t.Fatal(err)
			}
			src, dst, ok := p.Ports(tt.pkt)
			if src != tt.src || dst != tt.dst || ok != tt.ok {
				t.Fatalf("Ports = %d, %d, %v; want %d, %d, %v", src, dst, ok, tt.src, tt.dst, tt.ok)
			}
		})
	}
}
