package capsule

import (
	"bytes"
	"io"
	"net/netip"
	"reflect"
	"testing"

	"github.com/quic-go/quic-go/quicvarint"
)

// seedValues adds the values of the encoder-made capsules of type ty.
func seedValues(f *testing.F, ty Type, caps ...interface{ Append([]byte) ([]byte, error) }) {
	for _, c := range caps {
		b, err := c.Append(nil)
		if err != nil {
			f.Fatal(err)
		}
		got, v, _, err := ParseCapsule(b)
		if err != nil || got != ty {
			f.Fatalf("seed: %v %v", got, err)
		}
		f.Add(v)
	}
}

// reparse appends c, parses the capsule back and checks the type.
func reparse(t *testing.T, ty Type, c interface{ Append([]byte) ([]byte, error) }) []byte {
	t.Helper()
	b, err := c.Append(nil)
	if err != nil {
		t.Fatalf("parsed capsule does not encode: %v", err)
	}
	got, v, n, err := ParseCapsule(b)
	if err != nil || got != ty || n != len(b) {
		t.Fatalf("ParseCapsule of encoded = %v %d %v", got, n, err)
	}
	return v
}

func FuzzParseAddressAssign(f *testing.F) {
	seedValues(f, TypeAddressAssign,
		&AddressAssign{},
		&AddressAssign{[]AssignedAddress{{0, pfx("100.96.0.2/32")}, {7, pfx("fd00:96::2/128")}}},
		&AddressAssign{[]AssignedAddress{{1 << 40, pfx("10.0.0.0/8")}, {3, pfx("0.0.0.0/32")}}},
	)
	f.Add([]byte{0x40, 0x01, 0x04, 1, 2, 3, 4, 32})
	f.Fuzz(func(t *testing.T, v []byte) {
		c, err := ParseAddressAssign(v)
		if err != nil {
			return
		}
		c2, err := ParseAddressAssign(reparse(t, TypeAddressAssign, c))
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip: %+v != %+v", c, c2)
		}
	})
}

func FuzzParseAddressRequest(f *testing.F) {
	seedValues(f, TypeAddressRequest,
		&AddressRequest{[]RequestedAddress{{1, pfx("0.0.0.0/32")}, {2, pfx("::/128")}}},
		&AddressRequest{[]RequestedAddress{{99, pfx("100.96.0.77/32")}, {100, pfx("fd00:96::/64")}}},
	)
	f.Add([]byte{})
	f.Add([]byte{1, 4, 0, 0, 0, 0, 32, 1, 4, 0, 0, 0, 0, 32})
	f.Fuzz(func(t *testing.T, v []byte) {
		c, err := ParseAddressRequest(v)
		if err != nil {
			return
		}
		c2, err := ParseAddressRequest(reparse(t, TypeAddressRequest, c))
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip: %+v != %+v", c, c2)
		}
	})
}

func FuzzParseRouteAdvertisement(f *testing.F) {
	seedValues(f, TypeRouteAdvertisement,
		&RouteAdvertisement{},
		&RouteAdvertisement{RangesFromPrefixes(pfxs("0.0.0.0/0", "::/0"))},
		&RouteAdvertisement{[]IPRange{
			rng("10.0.0.0", "10.255.255.255", 0), rng("1.0.0.0", "1.0.0.255", 6), rng("172.16.0.0", "172.16.0.255", 6),
			rng("2001:db8::", "2001:db8::ffff", 0), rng("2001:db9::", "2001:db9::ffff", 17),
		}},
	)
	f.Fuzz(func(t *testing.T, v []byte) {
		c, err := ParseRouteAdvertisement(v)
		if err != nil {
			return
		}
		c2, err := ParseRouteAdvertisement(reparse(t, TypeRouteAdvertisement, c))
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip: %+v != %+v", c, c2)
		}
		for _, r := range c.Ranges {
			for _, p := range PrefixesFromRange(r) {
				if !p.IsValid() {
					t.Fatalf("range %v gave invalid prefix", r)
				}
			}
		}
	})
}

// FuzzReader checks the Reader against ParseCapsule on the same bytes and
// that it never buffers more than its limit.
func FuzzReader(f *testing.F) {
	var seed []byte
	seed = AppendCapsule(seed, TypeDatagram, []byte{0, 0x45, 0, 0, 20})
	seed, _ = (&AddressAssign{[]AssignedAddress{{0, pfx("100.96.0.2/32")}}}).Append(seed)
	seed = AppendCapsule(seed, 0x17, bytes.Repeat([]byte{1}, 300))
	f.Add(seed, uint16(64))
	f.Add(seed, uint16(0))
	f.Add(seed[:len(seed)-1], uint16(1000))
	f.Add([]byte{0x01, 0xbf, 0xff, 0xff, 0xff}, uint16(1000))
	f.Fuzz(func(t *testing.T, in []byte, limit uint16) {
		r := NewReader(bytes.NewReader(in))
		r.MaxCapsuleLen = int(limit)
		max := r.limit()
		var got []capsule
		var err error
		for {
			var ty Type
			var v []byte
			ty, v, err = r.Next()
			if cap(r.buf) > max {
				t.Fatalf("buffer %d exceeds limit %d", cap(r.buf), max)
			}
			if err != nil {
				break
			}
			if len(v) > max {
				t.Fatalf("value %d exceeds limit %d", len(v), max)
			}
			got = append(got, capsule{ty, bytes.Clone(v)})
		}
		// Reference model of the same rules on the whole input.
		var want []capsule
		var wantErr error = io.EOF
		for b := in; len(b) > 0; {
			ty, n1, err1 := quicvarint.Parse(b)
			l, n2, err2 := quicvarint.Parse(b[min(n1, len(b)):])
			if err1 != nil || err2 != nil {
				wantErr = io.ErrUnexpectedEOF
				break
			}
			b = b[n1+n2:]
			if l > uint64(max) && Type(ty).Known() && Type(ty) != TypeDatagram {
				wantErr = ErrTooLarge
				break
			}
			if l > uint64(len(b)) {
				wantErr = io.ErrUnexpectedEOF
				break
			}
			if l <= uint64(max) {
				want = append(want, capsule{Type(ty), b[:l]})
			}
			b = b[l:]
		}
		if wantErr == ErrTooLarge {
			if _, ok := err.(*TooLargeError); !ok {
				t.Fatalf("err = %v, want *TooLargeError", err)
			}
		} else if err != wantErr {
			t.Fatalf("err = %v, want %v", err, wantErr)
		}
		if !equalCaps(got, want) {
			t.Fatalf("Reader gave %d capsules, the model %d", len(got), len(want))
		}
	})
}

func FuzzPrefixesFromRange(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, []byte{10, 0, 0, 6})
	f.Add([]byte{0, 0, 0, 0}, []byte{255, 255, 255, 255})
	f.Add(make([]byte, 16), bytes.Repeat([]byte{0xff}, 16))
	f.Add(append(bytes.Repeat([]byte{0x20}, 8), make([]byte, 8)...), append(bytes.Repeat([]byte{0x20}, 8), bytes.Repeat([]byte{0xff}, 8)...))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		s, ok1 := netip.AddrFromSlice(a)
		e, ok2 := netip.AddrFromSlice(b)
		if !ok1 || !ok2 || s.Is4() != e.Is4() {
			return
		}
		if s.Compare(e) > 0 {
			s, e = e, s
		}
		r := IPRange{Start: s, End: e}
		ps := PrefixesFromRange(r)
		checkCover(t, r, ps)
		// and back: the prefixes merge into exactly this range
		if rs := RangesFromPrefixes(ps); len(rs) != 1 || rs[0] != r {
			t.Fatalf("RangesFromPrefixes(%v) = %v, want %v", ps, rs, r)
		}
	})
}

func FuzzRangesFromPrefixes(f *testing.F) {
	f.Add([]byte{10, 0, 0, 0, 24, 10, 0, 1, 0, 24, 192, 168, 0, 0, 16})
	f.Fuzz(func(t *testing.T, in []byte) {
		var ps []netip.Prefix
		for len(in) >= 5 {
			a := netip.AddrFrom4([4]byte(in[:4]))
			ps = append(ps, netip.PrefixFrom(a, int(in[4]%33)))
			in = in[5:]
		}
		rs := RangesFromPrefixes(ps)
		if _, err := (&RouteAdvertisement{rs}).Append(nil); err != nil {
			t.Fatalf("not a valid advertisement: %v", err)
		}
		for i := 1; i < len(rs); i++ {
			if rs[i-1].End.Next() == rs[i].Start {
				t.Fatalf("adjacent ranges not merged: %v", rs)
			}
		}
		covered := func(a netip.Addr) bool {
			for _, r := range rs {
				if r.Start.Compare(a) <= 0 && a.Compare(r.End) <= 0 {
					return true
				}
			}
			return false
		}
		for _, p := range ps {
			p = p.Masked()
			if !covered(p.Addr()) || !covered(lastOf(p)) {
				t.Fatalf("%v not covered by %v", p, rs)
			}
		}
		for _, r := range rs { // every range edge comes from some prefix
			in := func(a netip.Addr) bool {
				for _, p := range ps {
					if p.Contains(a) {
						return true
					}
				}
				return false
			}
			if !in(r.Start) || !in(r.End) {
				t.Fatalf("range %v not from the prefixes %v", r, ps)
			}
		}
	})
}
