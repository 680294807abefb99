package systack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/roamvpn/roam/datagram"
)

var (
	app4  = netip.MustParseAddrPort("10.9.0.2:43210")
	dst4  = netip.MustParseAddrPort("192.0.2.80:443")
	app6  = netip.MustParseAddrPort("[fd09::2]:43210")
	dst6  = netip.MustParseAddrPort("[2001:db8::80]:443")
	lnPrt = uint16(38000)
)

func TestParseTCP(t *testing.T) {
	syn4 := buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagSYN})
	frag := append([]byte(nil), syn4...)
	frag[6] = 0x20 // MF
	binary.BigEndian.PutUint16(frag[10:], 0)
	binary.BigEndian.PutUint16(frag[10:], ^sum(frag[:20], 0))
	short := append([]byte(nil), syn4[:30]...)
	binary.BigEndian.PutUint16(short[2:], 30)
	udp := append([]byte(nil), syn4...)
	udp[9] = 17
	padded := append(append([]byte(nil), syn4...), 0, 0, 0, 0)
	for _, tt := range []struct {
		name string
		pkt  []byte
		want int
		len  int
	}{
		{"IPv4 SYN", syn4, isTCP, len(syn4)},
		{"IPv4 padded: trimmed to total length", padded, isTCP, len(syn4)},
		{"IPv6 data", buildTCP(tcpSpec{src: app6, dst: dst6, flags: flagACK, payload: []byte("hello")}), isTCP, 40 + 20 + 5},
		{"IPv6 with hop-by-hop", buildTCP(tcpSpec{src: app6, dst: dst6, flags: flagACK, v6ext: true}), isTCP, 40 + 8 + 20},
		{"IPv4 fragment", frag, tcpFrag, 0},
		{"IPv4 truncated TCP header", short, tcpFrag, 0},
		{"UDP", udp, notTCP, 0},
		{"empty", nil, notTCP, 0},
		{"garbage", []byte{0x45, 1, 2, 3, 4, 5, 6, 7, 8, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, notTCP, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var p datagram.Packet
			var tp tcpPacket
			got := parseTCP(tt.pkt, &p, &tp)
			if got != tt.want {
				t.Fatalf("parseTCP = %d, want %d", got, tt.want)
			}
			if got == isTCP && len(tp.ip) != tt.len {
				t.Fatalf("len %d, want %d", len(tp.ip), tt.len)
			}
		})
	}
}

// TestRewrite rewrites packets as Read does both ways and checks the
// addresses, ports and (recomputed) checksums.
func TestRewrite(t *testing.T) {
	const natPort = 20001
	for _, tt := range []struct {
		name     string
		app, dst netip.AddrPort
		flags    uint8
		payload  int
		ext      bool
	}{
		{"IPv4 SYN", app4, dst4, flagSYN, 0, false},
		{"IPv4 data", app4, dst4, flagACK, 1448, false},
		{"IPv4 odd payload", app4, dst4, flagACK | flagFIN, 77, false},
		{"IPv6 SYN", app6, dst6, flagSYN, 0, false},
		{"IPv6 data", app6, dst6, flagACK, 1428, false},
		{"IPv6 extension header", app6, dst6, flagACK, 3, true},
		{"IPv4 low ports", netip.MustParseAddrPort("10.9.0.2:1"), netip.MustParseAddrPort("192.0.2.1:0"), flagSYN, 0, false},
		{"IPv4 high ports", netip.MustParseAddrPort("10.9.0.2:65535"), netip.MustParseAddrPort("192.0.2.1:65535"), flagACK, 10, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte{0xa5, 0xff, 0x00}, tt.payload/3+1)[:tt.payload]
			out := buildTCP(tcpSpec{src: tt.app, dst: tt.dst, flags: tt.flags, seq: 7, ack: 9, payload: payload, v6ext: tt.ext})
			var p datagram.Packet
			var tp tcpPacket
			if parseTCP(out, &p, &tp) != isTCP {
				t.Fatal("not parsed")
			}
			tu := tp.tuple()
			if a, d := tu.addrs(); a != tt.app || d != tt.dst {
				t.Fatalf("tuple %v -> %v", a, d)
			}
			// Forward: app -> dst becomes dst:natPort -> app:listener.
			rewrite(&tp, natPort, lnPrt)
			want := buildTCP(tcpSpec{src: netip.AddrPortFrom(tt.dst.Addr(), natPort), dst: netip.AddrPortFrom(tt.app.Addr(), lnPrt),
				flags: tt.flags, seq: 7, ack: 9, payload: payload, v6ext: tt.ext})
			if !checksumsOK(out, p.HdrLen) {
				t.Fatal("forward: bad checksum")
			}
			if !equalButChecksum(out, want, p.HdrLen) {
				t.Fatalf("forward:\n got %x\nwant %x", out, want)
			}
			// The listener's answer: app:listener -> dst:natPort becomes
			// dst -> app.
			back := buildTCP(tcpSpec{src: netip.AddrPortFrom(tt.app.Addr(), lnPrt), dst: netip.AddrPortFrom(tt.dst.Addr(), natPort),
				flags: tt.flags, seq: 7, ack: 9, payload: payload, v6ext: tt.ext})
			if parseTCP(back, &p, &tp) != isTCP {
				t.Fatal("not parsed")
			}
			rewrite(&tp, tu.dp, tu.ap)
			want = buildTCP(tcpSpec{src: tt.dst, dst: tt.app, flags: tt.flags, seq: 7, ack: 9, payload: payload, v6ext: tt.ext})
			if !checksumsOK(back, p.HdrLen) {
				t.Fatal("reverse: bad checksum")
			}
			if !equalButChecksum(back, want, p.HdrLen) {
				t.Fatalf("reverse:\n got %x\nwant %x", back, want)
			}
		})
	}
}

// equalButChecksum compares two TCP packets whose TCP header starts at
// hdr, ignoring the TCP checksum field: an incremental update may give
// 0xffff where a recomputation gives 0 (both are valid, RFC 1624).
func equalButChecksum(a, b []byte, hdr int) bool {
	if len(a) != len(b) {
		return false
	}
	ca := append([]byte(nil), a...)
	cb := append([]byte(nil), b...)
	ca[hdr+16], ca[hdr+17], cb[hdr+16], cb[hdr+17] = 0, 0, 0, 0
	return bytes.Equal(ca, cb)
}

// FuzzRewrite: parsing and rewriting arbitrary bytes never panics; a
// packet with valid checksums keeps them through a rewrite, and
// rewriting back restores it.
func FuzzRewrite(f *testing.F) {
	f.Add(buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagSYN}), uint16(1), uint16(2))
	f.Add(buildTCP(tcpSpec{src: app6, dst: dst6, flags: flagACK, payload: []byte("x"), v6ext: true}), uint16(65535), uint16(0))
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0x20, 0, 64, 6}, uint16(0), uint16(0))
	f.Fuzz(func(t *testing.T, pkt []byte, sport, dport uint16) {
		var p datagram.Packet
		var tp tcpPacket
		if parseTCP(pkt, &p, &tp) != isTCP {
			return
		}
		orig := append([]byte(nil), tp.ip...)
		valid := checksumsOK(orig, p.HdrLen)
		os, od := tp.srcPort(), tp.dstPort()
		rewrite(&tp, sport, dport)
		if tp.srcPort() != sport || tp.dstPort() != dport {
			t.Fatalf("ports %d %d, want %d %d", tp.srcPort(), tp.dstPort(), sport, dport)
		}
		if valid && !checksumsOK(tp.ip, p.HdrLen) {
			t.Fatalf("checksum broken by the rewrite of %x", orig)
		}
		rewrite(&tp, os, od)
		if !equalButChecksum(tp.ip, orig, p.HdrLen) {
			t.Fatalf("rewriting back: %x, want %x", tp.ip, orig)
		}
		if valid && !checksumsOK(tp.ip, p.HdrLen) {
			t.Fatal("checksum broken by rewriting back")
		}
	})
}
