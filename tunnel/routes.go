package tunnel

import (
	"net/netip"
	"slices"

	"github.com/roamvpn/roam/tunnel/capsule"
)

// route is one reachable prefix, limited to one IP protocol (0 = any).
type route struct {
	prefix netip.Prefix
	proto  uint8
}

// routeSet is an immutable set of routes; lookups are linear because real
// sets are small (a full tunnel is two entries).
type routeSet []route

// allows reports whether a packet to dst with IP protocol proto may pass.
// ICMP (ICMPv6) to a route's addresses is always allowed, whatever the
// route's protocol (RFC 9484 §4.7.3).
func (rs routeSet) allows(dst netip.Addr, proto uint8) bool {
	icmp := (dst.Is4() && proto == 1) || (dst.Is6() && proto == 58)
	for _, r := range rs {
		if (r.proto == 0 || r.proto == proto || icmp) && r.prefix.Contains(dst) {
			return true
		}
	}
	return false
}

// prefixes returns the distinct prefixes of the set, most specific first
// within each family (for installing routes).
func (rs routeSet) prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range rs {
		if !slices.Contains(out, r.prefix) {
			out = append(out, r.prefix)
		}
	}
	return out
}

// ranges converts the set to ROUTE_ADVERTISEMENT ranges.
func (rs routeSet) ranges() []capsule.IPRange {
	byProto := map[uint8][]netip.Prefix{}
	var protos []uint8
	for _, r := range rs {
		if _, ok := byProto[r.proto]; !ok {
			protos = append(protos, r.proto)
		}
		byProto[r.proto] = append(byProto[r.proto], r.prefix)
	}
	slices.Sort(protos)
	var out []capsule.IPRange
	for _, p := range protos {
		for _, rg := range capsule.RangesFromPrefixes(byProto[p]) {
			rg.Protocol = p
			out = append(out, rg)
		}
	}
	slices.SortFunc(out, capsule.CompareRanges) // RFC 9484 §4.7.3 order
	return out
}

// routesFromRanges converts advertised ranges to a route set.
func routesFromRanges(rgs []capsule.IPRange) routeSet {
	var rs routeSet
	for _, rg := range rgs {
		for _, p := range capsule.PrefixesFromRange(rg) {
			rs = append(rs, route{prefix: p, proto: rg.Protocol})
		}
	}
	return rs
}

// routesFromPrefixes makes a route set for any protocol.
func routesFromPrefixes(ps []netip.Prefix) routeSet {
	rs := make(routeSet, 0, len(ps))
	for _, p := range ps {
		rs = append(rs, route{prefix: p.Masked()})
	}
	return rs
}

// intersect returns the routes covered by both a and b. CIDR prefixes either
// nest or are disjoint, so the intersection of two overlapping prefixes is
// the longer one.
func intersect(a, b routeSet) routeSet {
	var out routeSet
	for _, x := range a {
		for _, y := range b {
			if !x.prefix.Overlaps(y.prefix) {
				continue
			}
			if x.proto != 0 && y.proto != 0 && x.proto != y.proto {
				continue
			}
			r := x
			if y.prefix.Bits() > x.prefix.Bits() {
				r.prefix = y.prefix
			}
			if r.proto == 0 {
				r.proto = y.proto
			}
			if !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
	}
	return out
}
