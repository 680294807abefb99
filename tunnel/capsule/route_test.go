package capsule

import (
	"bytes"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func rng(start, end string, proto uint8) IPRange {
	return IPRange{Start: ip(start), End: ip(end), Protocol: proto}
}

// Byte vectors follow RFC 9484 Figures 11-12: Type, Length, then per range
// IP Version (8), Start IP Address, End IP Address (32|128 each),
// IP Protocol (8).
func TestRouteAdvertisementVectors(t *testing.T) {
	tests := []struct {
		name string
		c    RouteAdvertisement
		wire string
	}{
		{"empty", RouteAdvertisement{}, "03 00"},
		{"full tunnel", RouteAdvertisement{[]IPRange{
			rng("0.0.0.0", "255.255.255.255", 0),
			rng("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0),
		}}, "03 2c  04 00000000 ffffffff 00  06 00000000000000000000000000000000 ffffffffffffffffffffffffffffffff 00"},
		{"odd TCP range", RouteAdvertisement{[]IPRange{rng("10.0.0.1", "10.0.0.6", 6)}},
			"03 0a  04 0a000001 0a000006 06"},
		{"single address", RouteAdvertisement{[]IPRange{rng("192.0.2.7", "192.0.2.7", 17)}},
			"03 0a  04 c0000207 c0000207 11"},
		{"version then protocol then address", RouteAdvertisement{[]IPRange{
			rng("10.0.0.0", "10.255.255.255", 0),
			rng("192.168.0.0", "192.168.255.255", 0),
			rng("1.0.0.0", "1.0.0.255", 6), // lower address, higher protocol
			rng("172.16.0.0", "172.16.0.255", 6),
			rng("172.16.0.0", "172.16.0.255", 17), // same range, other protocol
			rng("2001:db8::", "2001:db8::ffff", 0),
		}}, "03 4054" + // 5*10 + 34 = 84 bytes: two-byte varint
			" 04 0a000000 0affffff 00" +
			" 04 c0a80000 c0a8ffff 00" +
			" 04 01000000 010000ff 06" +
			" 04 ac100000 ac1000ff 06" +
			" 04 ac100000 ac1000ff 11" +
			" 06 20010db8000000000000000000000000 20010db800000000000000000000ffff 00"},
		{"adjacent ranges same protocol", RouteAdvertisement{[]IPRange{
			rng("10.0.0.0", "10.0.0.255", 0), rng("10.0.1.0", "10.0.1.255", 0),
		}}, "03 14  04 0a000000 0a0000ff 00  04 0a000100 0a0001ff 00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := h(tt.wire)
			got, err := tt.c.Append(nil)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Append =\n% x\nwant\n% x", got, want)
			}
			ty, v, n, err := ParseCapsule(want)
			if err != nil || ty != TypeRouteAdvertisement || n != len(want) {
				t.Fatalf("ParseCapsule = %v %d %v", ty, n, err)
			}
			p, err := ParseRouteAdvertisement(v)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(p.Ranges) != len(tt.c.Ranges) || (len(p.Ranges) > 0 && !reflect.DeepEqual(p.Ranges, tt.c.Ranges)) {
				t.Fatalf("parsed %v, want %v", p.Ranges, tt.c.Ranges)
			}
			if !slices.IsSortedFunc(p.Ranges, CompareRanges) {
				t.Fatalf("valid ranges not sorted by CompareRanges")
			}
		})
	}
}

func TestParseRouteAdvertisementErrors(t *testing.T) {
	const T = TypeRouteAdvertisement
	tests := []struct {
		name  string
		value string
		entry int
		field string
		msg   string
	}{
		{"version 5", "05 0a000000", 0, "IP Version", "must be 4 or 6"},
		{"truncated start", "04 0a00", 0, "Start IP Address", "truncated"},
		{"truncated end", "04 0a000000 0aff", 0, "End IP Address", "truncated"},
		{"truncated IPv6 end", "06 20010db8000000000000000000000000 2001", 0, "End IP Address", "truncated"},
		{"missing protocol", "04 0a000000 0affffff", 0, "IP Protocol", "truncated"},
		{"start after end", "04 0a000006 0a000001 00", 0, "End IP Address", "before Start"},
		{"IPv6 before IPv4", "06 20010db8000000000000000000000000 20010db8000000000000000000000001 00  04 0a000000 0a000001 00",
			1, "IP Version", "ordered by IP version"},
		{"protocol descending", "04 0a000000 0a0000ff 11  04 0b000000 0b0000ff 06", 1, "IP Protocol", "ordered by protocol"},
		{"address descending", "04 0b000000 0b0000ff 00  04 0a000000 0a0000ff 00", 1, "Start IP Address", "not after"},
		{"overlap", "04 0a000000 0a0000ff 06  04 0a000080 0a0001ff 06", 1, "Start IP Address", "must not overlap"},
		{"touching end == start", "04 0a000000 0a0000ff 06  04 0a0000ff 0a0001ff 06", 1, "Start IP Address", "not after"},
		{"duplicate", "04 0a000000 0a0000ff 00  04 0a000000 0a0000ff 00", 1, "Start IP Address", "not after"},
		{"protocol range inside all-protocols range", "04 0a000000 0affffff 00  04 0a000100 0a0001ff 06", 1, "IP Protocol", "overlaps entry 0"},
		{"all-protocols overlap found by search", "04 01000000 01ffffff 00  04 0a000000 0affffff 00  04 0b000000 0bffffff 00  04 02000000 020000ff 06  04 0b800000 0c000000 11",
			4, "IP Protocol", "overlaps entry 2"},
		{"IPv6 protocol overlap", "06 20010db8000000000000000000000000 20010db8ffffffffffffffffffffffff 00  06 20010db8000000000000000000000005 20010db8000000000000000000000005 3a",
			1, "IP Protocol", "overlaps entry 0"},
		{"second entry bad version", "04 0a000000 0a0000ff 00  00", 1, "IP Version", "must be 4 or 6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseRouteAdvertisement(h(tt.value))
			if c != nil {
				t.Fatal("non-nil capsule with error")
			}
			checkErr(t, err, T, tt.entry, tt.field, tt.msg)
		})
	}
}

// Overlap between families or between different non-zero protocols is allowed.
func TestRouteAdvertisementAllowedOverlaps(t *testing.T) {
	c := RouteAdvertisement{[]IPRange{
		rng("10.0.0.0", "10.0.0.255", 6),
		rng("10.0.0.0", "10.0.0.255", 17),
		rng("::ffff:10.0.0.0", "::ffff:10.0.0.255", 0), // IPv4-mapped is IPv6
	}}
	b, err := c.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, v, _, _ := ParseCapsule(b)
	p, err := ParseRouteAdvertisement(v)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(p.Ranges, c.Ranges) {
		t.Fatalf("got %v", p.Ranges)
	}
}

func TestAppendRouteErrors(t *testing.T) {
	const T = TypeRouteAdvertisement
	tests := []struct {
		name  string
		rs    []IPRange
		entry int
		field string
		msg   string
	}{
		{"invalid start", []IPRange{{End: ip("10.0.0.1")}}, 0, "Start IP Address", "invalid address"},
		{"mixed families", []IPRange{{Start: ip("10.0.0.1"), End: ip("::1")}}, 0, "End IP Address", "same IP version"},
		{"zone", []IPRange{{Start: ip("fe80::1%eth0"), End: ip("fe80::2")}}, 0, "Start IP Address", "zone"},
		{"reversed", []IPRange{rng("10.0.0.9", "10.0.0.1", 0)}, 0, "End IP Address", "before Start"},
		{"sorted by address not protocol", []IPRange{rng("1.0.0.0", "1.0.0.255", 6), rng("10.0.0.0", "10.0.0.255", 0)}, 1, "IP Protocol", "ordered by protocol"},
		{"protocol overlaps all", []IPRange{rng("0.0.0.0", "255.255.255.255", 0), rng("10.0.0.0", "10.0.0.255", 6)}, 1, "IP Protocol", "overlaps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := RouteAdvertisement{tt.rs}
			out, err := c.Append([]byte{7})
			checkErr(t, err, T, tt.entry, tt.field, tt.msg)
			if !bytes.Equal(out, []byte{7}) {
				t.Fatalf("b changed on error")
			}
		})
	}
}

func TestCompareRanges(t *testing.T) {
	rs := []IPRange{
		rng("2001:db8::", "2001:db8::1", 0),
		rng("10.0.0.0", "10.0.0.9", 17),
		rng("1.0.0.0", "1.0.0.9", 17),
		rng("10.0.0.0", "10.0.0.9", 0),
		rng("10.0.0.0", "10.0.0.5", 0),
	}
	slices.SortFunc(rs, CompareRanges)
	want := []IPRange{
		rng("10.0.0.0", "10.0.0.5", 0),
		rng("10.0.0.0", "10.0.0.9", 0),
		rng("1.0.0.0", "1.0.0.9", 17),
		rng("10.0.0.0", "10.0.0.9", 17),
		rng("2001:db8::", "2001:db8::1", 0),
	}
	if !reflect.DeepEqual(rs, want) {
		t.Fatalf("got %v", rs)
	}
}

func pfxs(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, pfx(s))
	}
	return out
}

func TestRangesFromPrefixes(t *testing.T) {
	tests := []struct {
		name string
		in   []netip.Prefix
		want []IPRange
	}{
		{"nil", nil, nil},
		{"only invalid", []netip.Prefix{{}}, nil},
		{"IPv4 default", pfxs("0.0.0.0/0"), []IPRange{rng("0.0.0.0", "255.255.255.255", 0)}},
		{"IPv6 default", pfxs("::/0"), []IPRange{rng("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)}},
		{"both defaults, IPv6 given first", pfxs("::/0", "0.0.0.0/0"),
			[]IPRange{rng("0.0.0.0", "255.255.255.255", 0), rng("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)}},
		{"adjacent halves merge", pfxs("10.0.1.0/24", "10.0.0.0/24"), []IPRange{rng("10.0.0.0", "10.0.1.255", 0)}},
		{"adjacent unaligned merge", pfxs("10.0.0.4/30", "10.0.0.8/29", "10.0.0.16/32"), []IPRange{rng("10.0.0.4", "10.0.0.16", 0)}},
		{"nested", pfxs("10.1.2.0/24", "10.0.0.0/8", "10.200.0.0/16"), []IPRange{rng("10.0.0.0", "10.255.255.255", 0)}},
		{"gap kept", pfxs("10.0.0.0/24", "10.0.2.0/24"), []IPRange{rng("10.0.0.0", "10.0.0.255", 0), rng("10.0.2.0", "10.0.2.255", 0)}},
		{"host bits ignored", pfxs("192.168.1.77/24"), []IPRange{rng("192.168.1.0", "192.168.1.255", 0)}},
		{"top of space", pfxs("255.255.255.255/32", "255.255.255.0/24", "0.0.0.0/1"),
			[]IPRange{rng("0.0.0.0", "127.255.255.255", 0), rng("255.255.255.0", "255.255.255.255", 0)}},
		{"IPv6 adjacent", pfxs("2001:db8:0:1::/64", "2001:db8::/64", "fd00::/8"),
			[]IPRange{rng("2001:db8::", "2001:db8:0:1:ffff:ffff:ffff:ffff", 0), rng("fd00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)}},
		{"IPv6 top of space", pfxs("ffff::/16", "8000::/1"), []IPRange{rng("8000::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			got := RangesFromPrefixes(tt.in)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %v\nwant %v", got, tt.want)
			}
			if !slices.Equal(in, tt.in) {
				t.Fatal("input modified")
			}
			if _, err := (&RouteAdvertisement{got}).Append(nil); err != nil {
				t.Fatalf("result is not a valid ROUTE_ADVERTISEMENT: %v", err)
			}
		})
	}
}

func TestPrefixesFromRange(t *testing.T) {
	tests := []struct {
		name string
		r    IPRange
		want []netip.Prefix
	}{
		{"IPv4 everything", rng("0.0.0.0", "255.255.255.255", 0), pfxs("0.0.0.0/0")},
		{"IPv6 everything", rng("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0), pfxs("::/0")},
		{"single", rng("10.0.0.5", "10.0.0.5", 0), pfxs("10.0.0.5/32")},
		{"odd 1-6", rng("10.0.0.1", "10.0.0.6", 6), pfxs("10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32")},
		{"aligned /24", rng("192.168.1.0", "192.168.1.255", 0), pfxs("192.168.1.0/24")},
		{"all but first and last", rng("0.0.0.1", "255.255.255.254", 0), pfxs(
			"0.0.0.1/32", "0.0.0.2/31", "0.0.0.4/30", "0.0.0.8/29", "0.0.0.16/28", "0.0.0.32/27", "0.0.0.64/26", "0.0.0.128/25",
			"0.0.1.0/24", "0.0.2.0/23", "0.0.4.0/22", "0.0.8.0/21", "0.0.16.0/20", "0.0.32.0/19", "0.0.64.0/18", "0.0.128.0/17",
			"0.1.0.0/16", "0.2.0.0/15", "0.4.0.0/14", "0.8.0.0/13", "0.16.0.0/12", "0.32.0.0/11", "0.64.0.0/10", "0.128.0.0/9",
			"1.0.0.0/8", "2.0.0.0/7", "4.0.0.0/6", "8.0.0.0/5", "16.0.0.0/4", "32.0.0.0/3", "64.0.0.0/2", "128.0.0.0/2",
			"192.0.0.0/3", "224.0.0.0/4", "240.0.0.0/5", "248.0.0.0/6", "252.0.0.0/7", "254.0.0.0/8",
			"255.0.0.0/9", "255.128.0.0/10", "255.192.0.0/11", "255.224.0.0/12", "255.240.0.0/13", "255.248.0.0/14", "255.252.0.0/15", "255.254.0.0/16",
			"255.255.0.0/17", "255.255.128.0/18", "255.255.192.0/19", "255.255.224.0/20", "255.255.240.0/21", "255.255.248.0/22", "255.255.252.0/23", "255.255.254.0/24",
			"255.255.255.0/25", "255.255.255.128/26", "255.255.255.192/27", "255.255.255.224/28", "255.255.255.240/29", "255.255.255.248/30", "255.255.255.252/31", "255.255.255.254/32")},
		{"IPv6 upper half from 1", rng("::1", "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0), nil}, // checked by invariants only
		{"IPv6 across 64-bit boundary", rng("2001:db8::ffff:ffff:ffff:ffff", "2001:db8:0:1::", 0),
			pfxs("2001:db8::ffff:ffff:ffff:ffff/128", "2001:db8:0:1::/128")},
		{"IPv6 last address", rng("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0),
			pfxs("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127")},
		{"reversed", rng("10.0.0.6", "10.0.0.1", 0), nil},
		{"mixed families", IPRange{Start: ip("10.0.0.1"), End: ip("::1")}, nil},
		{"invalid", IPRange{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PrefixesFromRange(tt.r)
			if tt.want != nil && !slices.Equal(got, tt.want) {
				t.Fatalf("got  %v\nwant %v", got, tt.want)
			}
			if tt.want == nil && tt.r.Start.IsValid() && tt.r.Start.Compare(tt.r.End) <= 0 && tt.r.Start.Is4() == tt.r.End.Is4() {
				checkCover(t, tt.r, got)
			} else if tt.want == nil && got != nil {
				t.Fatalf("got %v for an invalid range", got)
			}
		})
	}
}

// checkCover asserts ps is an exact, ordered, minimal-looking cover of r.
func checkCover(t testing.TB, r IPRange, ps []netip.Prefix) {
	t.Helper()
	if len(ps) == 0 || len(ps) > 2*r.Start.BitLen() {
		t.Fatalf("%v-%v: %d prefixes", r.Start, r.End, len(ps))
	}
	if ps[0].Addr() != r.Start {
		t.Fatalf("%v-%v: first prefix %v", r.Start, r.End, ps[0])
	}
	for i, p := range ps {
		if !p.IsValid() || p.Masked() != p || p.Addr().Is4() != r.Start.Is4() {
			t.Fatalf("%v-%v: bad prefix %v", r.Start, r.End, p)
		}
		last := lastOf(p)
		if i == len(ps)-1 {
			if last != r.End {
				t.Fatalf("%v-%v: last prefix %v ends at %v", r.Start, r.End, p, last)
			}
			break
		}
		q := ps[i+1]
		if last.Next() != q.Addr() {
			t.Fatalf("%v-%v: %v not followed contiguously by %v", r.Start, r.End, p, q)
		}
		// two sibling prefixes of equal size would merge into one
		if p.Bits() == q.Bits() && p.Bits() > 0 {
			if parent := netip.PrefixFrom(p.Addr(), p.Bits()-1).Masked(); parent.Contains(q.Addr()) {
				t.Fatalf("%v-%v: %v and %v should be %v", r.Start, r.End, p, q, parent)
			}
		}
	}
}

func lastOf(p netip.Prefix) netip.Addr {
	u := u128From(p.Addr()).or(lowMask(p.Addr().BitLen() - p.Bits()))
	return u.addr(p.Addr().Is4())
}
