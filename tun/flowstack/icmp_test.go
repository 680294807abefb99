package flowstack

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/roamvpn/roam/datagram"
)

func TestAppendUnreachable(t *testing.T) {
	src4, dst4 := netip.MustParseAddrPort("10.9.0.2:40000"), netip.MustParseAddrPort("192.0.2.80:25")
	src6, dst6 := netip.MustParseAddrPort("[fd09::2]:40000"), netip.MustParseAddrPort("[2001:db8::80]:25")
	syn4 := buildTCP(src4, dst4, 7, 0, tcpSYN, nil)
	syn6 := buildTCP(src6, dst6, 7, 0, tcpSYN, nil)
	// An IPv4 SYN with 8 bytes of IP options (IHL 7): the quote must keep
	// the options and 8 bytes of TCP header.
	opts := append([]byte{}, syn4[:20]...)
	opts[0] = 0x47
	opts = append(append(opts, 1, 1, 1, 1, 1, 1, 1, 0), syn4[20:]...)
	big := append(append([]byte{}, syn6...), make([]byte, 2000)...)
	tests := []struct {
		name      string
		quote     []byte
		ok        bool
		typ, code byte
		quoted    int // bytes of quote expected in the message
	}{
		{"ipv4", syn4, true, 3, 1, len(syn4)},
		{"ipv4 with options", opts, true, 3, 1, len(opts)},
		{"ipv6", syn6, true, 1, 3, len(syn6)},
		{"ipv6 quote cut at 1280", big, true, 1, 3, 1280 - 48},
		{"ipv4 too short", syn4[:27], false, 0, 0, 0},
		{"ipv4 options too short", opts[:35], false, 0, 0, 0},
		{"ipv6 too short", syn6[:47], false, 0, 0, 0},
		{"empty", nil, false, 0, 0, 0},
		{"not IP", []byte{0x20, 1, 2, 3}, false, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep")
			out, ok := appendUnreachable(prefix, tt.quote)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if !bytes.Equal(out[:4], prefix) {
				t.Fatal("dst prefix overwritten")
			}
			if !ok {
				if len(out) != len(prefix) {
					t.Fatal("appended something on failure")
				}
				return
			}
			p := out[4:]
			var pkt datagram.Packet
			if err := pkt.Decode(p); err != nil {
				t.Fatalf("result does not decode: %v", err)
			}
			var q datagram.Packet
			q.Decode(syn4)
			if tt.quote[0]>>4 == 6 {
				q.Decode(syn6)
			}
			if pkt.Src != q.Dst || pkt.Dst != q.Src || pkt.Len != len(p) {
				t.Errorf("got %v -> %v len %d; want %v -> %v len %d", pkt.Src, pkt.Dst, pkt.Len, q.Dst, q.Src, len(p))
			}
			m := p[pkt.HdrLen:]
			if m[0] != tt.typ || m[1] != tt.code {
				t.Errorf("type %d code %d, want %d %d", m[0], m[1], tt.typ, tt.code)
			}
			if !bytes.Equal(m[8:], tt.quote[:tt.quoted]) {
				t.Errorf("quoted %d bytes, want the first %d of the packet", len(m)-8, tt.quoted)
			}
			if !icmpChecksumOK(p, &pkt) {
				t.Error("bad ICMP checksum")
			}
			if pkt.Version == 4 && checksum(p[:20], 0) != 0 {
				t.Error("bad IPv4 header checksum")
			}
		})
	}
}
