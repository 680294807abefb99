package auth

import (
	"cmp"
	"net/netip"
	"slices"
)

// IntersectPrefixes returns the addresses in both a and b as a list of
// prefixes. Nil means "no restriction": if either is nil the other is
// returned (a copy); if both are non-nil the result is non-nil (empty when
// they share no address). Two prefixes either nest or are disjoint, so the
// intersection of a pair is the longer one when they overlap. The result
// is masked, sorted, and holds no prefix contained in another. The inputs
// are not modified; the result is a fresh slice owned by the caller.
func IntersectPrefixes(a, b []netip.Prefix) []netip.Prefix {
	switch {
	case a == nil && b == nil:
		return nil
	case a == nil:
		return minimalPrefixes(b)
	case b == nil:
		return minimalPrefixes(a)
	}
	out := []netip.Prefix{}
	for _, p := range a {
		p = p.Masked()
		for _, q := range b {
			q = q.Masked()
			if !p.IsValid() || !q.IsValid() || !p.Overlaps(q) {
				continue
			}
			if p.Bits() >= q.Bits() {
				out = append(out, p)
			} else {
				out = append(out, q)
			}
		}
	}
	return minimalPrefixes(out)
}

// minimalPrefixes returns a sorted copy of ps, masked, without invalid
// prefixes, duplicates, or prefixes inside another of the list. It keeps
// nil as nil.
func minimalPrefixes(ps []netip.Prefix) []netip.Prefix {
	if ps == nil {
		return nil
	}
	s := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() {
			s = append(s, p.Masked())
		}
	}
	// Sort by address, shorter prefixes first: a prefix containing others
	// comes right before them.
	slices.SortFunc(s, func(x, y netip.Prefix) int {
		if c := x.Addr().Compare(y.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(x.Bits(), y.Bits())
	})
	out := s[:0]
	for _, p := range s {
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Overlaps(p) {
			continue // inside the previous kept prefix
		}
		out = append(out, p)
	}
	return out
}

// IntersectPorts returns the ports in both a and b as sorted, merged,
// non-overlapping ranges. Nil means "every port": if either is nil the
// other is returned (normalised, a copy); if both are non-nil the result
// is non-nil (empty when they share no port). Ranges with Lo > Hi or Lo ==
// 0 are ignored. The result is a fresh slice owned by the caller.
func IntersectPorts(a, b []PortRange) []PortRange {
	switch {
	case a == nil && b == nil:
		return nil
	case a == nil:
		return mergePorts(b)
	case b == nil:
		return mergePorts(a)
	}
	out := []PortRange{}
	for _, r := range a {
		for _, q := range b {
			lo, hi := max(r.Lo, q.Lo, 1), min(r.Hi, q.Hi)
			if lo <= hi && r.Lo <= r.Hi && q.Lo <= q.Hi {
				out = append(out, PortRange{Lo: lo, Hi: hi})
			}
		}
	}
	return mergePorts(out)
}

// mergePorts returns a sorted copy of rs with overlapping and adjacent
// ranges merged and invalid ones dropped. It keeps nil as nil.
func mergePorts(rs []PortRange) []PortRange {
	if rs == nil {
		return nil
	}
	s := make([]PortRange, 0, len(rs))
	for _, r := range rs {
		if r.Lo != 0 && r.Lo <= r.Hi {
			s = append(s, r)
		}
	}
	slices.SortFunc(s, func(x, y PortRange) int { return cmp.Compare(x.Lo, y.Lo) })
	out := s[:0]
	for _, r := range s {
		if n := len(out); n > 0 && int(r.Lo) <= int(out[n-1].Hi)+1 {
			out[n-1].Hi = max(out[n-1].Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}
