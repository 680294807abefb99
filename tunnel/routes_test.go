package tunnel

import (
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"testing"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestIntersect(t *testing.T) {
	tests := []struct {
		name    string
		a, b    []netip.Prefix
		want    []netip.Prefix
		wantLen int
	}{
		{"full with full", pfx("0.0.0.0/0", "::/0"), pfx("0.0.0.0/0", "::/0"), pfx("0.0.0.0/0", "::/0"), 2},
		{"full with one", pfx("0.0.0.0/0", "::/0"), pfx("10.201.0.0/24"), pfx("10.201.0.0/24"), 1},
		{"narrow server", pfx("10.0.0.0/8"), pfx("0.0.0.0/0", "::/0"), pfx("10.0.0.0/8"), 1},
		{"disjoint", pfx("10.0.0.0/8"), pfx("192.168.0.0/16"), nil, 0},
		{"family mismatch", pfx("::/0"), pfx("10.0.0.0/8"), nil, 0},
		{"several", pfx("10.0.0.0/8", "172.16.0.0/12"), pfx("10.1.0.0/16", "172.16.5.0/24", "8.8.8.8/32"), pfx("10.1.0.0/16", "172.16.5.0/24"), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := intersect(routesFromPrefixes(tt.a), routesFromPrefixes(tt.b)).prefixes()
			if len(got) != tt.wantLen || !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRouteSetAllows(t *testing.T) {
	rs := routeSet{{prefix: netip.MustParsePrefix("10.0.0.0/8"), proto: 17}, {prefix: netip.MustParsePrefix("::/0")}}
	tests := []struct {
		dst   string
		proto uint8
		want  bool
	}{
		{"10.1.2.3", 17, true},
		{"10.1.2.3", 6, false},
		{"11.0.0.1", 17, false},
		{"2001:db8::1", 6, true},
		{"10.1.2.3", 1, true},  // ICMP is always allowed to a route's addresses
		{"11.0.0.1", 1, false}, // but not outside them
	}
	for _, tt := range tests {
		if got := rs.allows(netip.MustParseAddr(tt.dst), tt.proto); got != tt.want {
			t.Errorf("allows(%s, %d) = %v, want %v", tt.dst, tt.proto, got, tt.want)
		}
	}
}

func TestRangesRoundTrip(t *testing.T) {
	for _, ps := range [][]netip.Prefix{pfx("0.0.0.0/0", "::/0"), pfx("10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24", "fd00::/8")} {
		rs := routesFromPrefixes(ps)
		back := routesFromRanges(rs.ranges())
		for _, p := range ps {
			if !back.allows(p.Addr(), 6) || !back.allows(lastAddr(p), 6) {
				t.Errorf("%v lost in the round trip: %v", p, back.prefixes())
			}
		}
	}
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func TestScopeRoutes(t *testing.T) {
	s := &Server{}
	st := &authState{routes: routesFromPrefixes(pfx("0.0.0.0/0", "::/0"))}
	tests := []struct {
		path    string
		want    []netip.Prefix
		wantErr bool
	}{
		{"/.well-known/masque/ip/*/*/", pfx("0.0.0.0/0", "::/0"), false},
		{"/.well-known/masque/ip/192.0.2.0%2F24/*/", pfx("192.0.2.0/24"), false},
		{"/.well-known/masque/ip/2001:db8::1/17/", pfx("2001:db8::1/128"), false},
		{"/.well-known/masque/ip/example.com/*/", nil, true},
		{"/.well-known/masque/ip/192.0.2.1%2F24/*/", nil, true}, // host bits set: malformed (RFC 9484 §4.6)
		{"/.well-known/masque/ip/*/300/", nil, true},
		{"/.well-known/masque/ip/*/", nil, true},
		{"/other/*/*/", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			u, err := url.Parse("https://h" + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			scope, err := s.requestScope(&http.Request{URL: u}, st)
			rs := intersect(st.routes, scope)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && !slices.Equal(rs.prefixes(), tt.want) {
				t.Fatalf("got %v, want %v", rs.prefixes(), tt.want)
			}
		})
	}
}
