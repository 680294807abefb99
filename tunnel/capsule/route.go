package capsule

import (
	"cmp"
	"net/netip"
	"slices"
	"sort"
)

// IPRange is one IP Address Range of a ROUTE_ADVERTISEMENT capsule (RFC 9484
// §4.7.3): the inclusive range [Start, End], for one IP protocol. Start and
// End are of the same family (IP Version 4 if Start.Is4(), 6 otherwise) and
// carry no zone.
type IPRange struct {
	Start, End netip.Addr
	// Protocol is the IP protocol number the range is limited to; 0 means
	// all protocols. ICMP is always allowed (RFC 9484 §4.7.3).
	Protocol uint8
}

// RouteAdvertisement is a ROUTE_ADVERTISEMENT capsule (RFC 9484 §4.7.3): the
// full list of ranges the sender routes; each one supersedes the previous.
// The ranges must be in the order [CompareRanges] defines and must not
// overlap (see [RouteAdvertisement.Append]).
type RouteAdvertisement struct {
	Ranges []IPRange
}

// CompareRanges orders ranges as RFC 9484 §4.7.3 requires them on the wire:
// IPv4 before IPv6, then by IP Protocol, then by Start (then End). Sort with
// slices.SortFunc(rs, CompareRanges) before encoding. Sorting does not
// remove overlaps; [RangesFromPrefixes] builds non-overlapping ranges.
func CompareRanges(a, b IPRange) int {
	if c := cmp.Compare(ipVersion(a.Start), ipVersion(b.Start)); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := a.Start.Compare(b.Start); c != 0 {
		return c
	}
	return a.End.Compare(b.End)
}

// Append appends the whole capsule (type, length, value) to b. The ranges
// must satisfy everything [ParseRouteAdvertisement] checks, including the
// optional rule that a protocol-specific range does not overlap an
// all-protocols range ("Endpoints MUST NOT send", RFC 9484 §4.7.3). On error
// it returns b unchanged with an [*Error].
func (c *RouteAdvertisement) Append(b []byte) ([]byte, error) {
	n := 0
	for i, r := range c.Ranges {
		if !r.Start.IsValid() || !r.End.IsValid() {
			return b, errorf(TypeRouteAdvertisement, i, "Start IP Address", "invalid address in range %v-%v", r.Start, r.End)
		}
		if r.Start.Zone() != "" || r.End.Zone() != "" {
			return b, errorf(TypeRouteAdvertisement, i, "Start IP Address", "range %v-%v has an IPv6 zone; zones cannot be sent", r.Start, r.End)
		}
		if r.Start.Is4() != r.End.Is4() {
			return b, errorf(TypeRouteAdvertisement, i, "End IP Address", "%v is not of the same IP version as Start %v", r.End, r.Start)
		}
		n += 1 + 2*r.Start.BitLen()/8 + 1
	}
	if err := checkRanges(c.Ranges); err != nil {
		return b, err
	}
	b = appendHeader(b, TypeRouteAdvertisement, n)
	for _, r := range c.Ranges {
		b = appendAddr(b, r.Start)
		e := r.End.AsSlice()
		b = append(b, e...)
		b = append(b, r.Protocol)
	}
	return b, nil
}

// ParseRouteAdvertisement parses the value of a ROUTE_ADVERTISEMENT capsule.
// value is not retained. Besides the field checks it enforces the ordering
// rules of RFC 9484 §4.7.3 (the receiver "MUST abort the IP proxying request
// stream" if they fail) and the optional all-protocols overlap check. Errors
// are [*Error]s.
func ParseRouteAdvertisement(value []byte) (*RouteAdvertisement, error) {
	const t = TypeRouteAdvertisement
	c := &RouteAdvertisement{}
	for i := 0; len(value) > 0; i++ {
		start, n, err := parseVersionAddr(t, i, value, "Start IP Address")
		if err != nil {
			return nil, err
		}
		end, m, err := parseAddr(t, i, value[0], value[n:], "End IP Address")
		if err != nil {
			return nil, err
		}
		n += m
		if n >= len(value) {
			return nil, errorf(t, i, "IP Protocol", "truncated")
		}
		c.Ranges = append(c.Ranges, IPRange{Start: start, End: end, Protocol: value[n]})
		value = value[n+1:]
	}
	if err := checkRanges(c.Ranges); err != nil {
		return nil, err
	}
	return c, nil
}

// checkRanges applies RFC 9484 §4.7.3 to well-formed ranges of matching
// families: Start <= End; for consecutive ranges A, B: version(A) <=
// version(B); same version: protocol(A) <= protocol(B); same version and
// protocol: End(A) < Start(B); and no protocol-specific range overlaps an
// all-protocols range of the same version.
func checkRanges(rs []IPRange) error {
	const t = TypeRouteAdvertisement
	for i, r := range rs {
		if r.Start.Compare(r.End) > 0 {
			return errorf(t, i, "End IP Address", "%v is before Start IP Address %v", r.End, r.Start)
		}
		if i == 0 {
			continue
		}
		p := rs[i-1]
		switch {
		case ipVersion(p.Start) > ipVersion(r.Start):
			return errorf(t, i, "IP Version", "IPv%d range after an IPv%d range; ranges must be ordered by IP version", ipVersion(r.Start), ipVersion(p.Start))
		case ipVersion(p.Start) < ipVersion(r.Start):
		case p.Protocol > r.Protocol:
			return errorf(t, i, "IP Protocol", "%d after %d; ranges of one IP version must be ordered by protocol", r.Protocol, p.Protocol)
		case p.Protocol == r.Protocol && p.End.Compare(r.Start) >= 0:
			return errorf(t, i, "Start IP Address", "%v is not after the previous range's end %v (protocol %d); ranges must be ordered and must not overlap", r.Start, p.End, r.Protocol)
		}
	}
	// Protocol 0 sorts first within a version, so each version's
	// all-protocols ranges form one sorted, disjoint run.
	for lo := 0; lo < len(rs); {
		v := ipVersion(rs[lo].Start)
		hi := lo
		for hi < len(rs) && ipVersion(rs[hi].Start) == v {
			hi++
		}
		all := lo
		for all < hi && rs[all].Protocol == 0 {
			all++
		}
		zero := rs[lo:all]
		for i := all; i < hi && len(zero) > 0; i++ {
			r := rs[i]
			// first all-protocols range ending at or after r.Start
			j := sort.Search(len(zero), func(k int) bool { return zero[k].End.Compare(r.Start) >= 0 })
			if j < len(zero) && zero[j].Start.Compare(r.End) <= 0 {
				return errorf(t, i, "IP Protocol", "range %v-%v for protocol %d overlaps entry %d (%v-%v, all protocols); RFC 9484 §4.7.3 forbids such overlap",
					r.Start, r.End, r.Protocol, lo+j, zero[j].Start, zero[j].End)
			}
		}
		lo = hi
	}
	return nil
}

// RangesFromPrefixes converts prefixes to all-protocol ranges (Protocol 0),
// merging overlapping and adjacent prefixes, sorted IPv4 first then by
// address: a valid ROUTE_ADVERTISEMENT by itself. Host bits of each prefix
// are ignored; invalid prefixes are skipped. ps is not modified. The result
// is nil if no prefix is valid.
func RangesFromPrefixes(ps []netip.Prefix) []IPRange {
	type span struct {
		is4        bool
		start, end u128
	}
	spans := make([]span, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		p = p.Masked()
		host := p.Addr().BitLen() - p.Bits()
		s := u128From(p.Addr())
		spans = append(spans, span{is4: p.Addr().Is4(), start: s, end: s.or(lowMask(host))})
	}
	slices.SortFunc(spans, func(a, b span) int {
		if a.is4 != b.is4 {
			if a.is4 {
				return -1
			}
			return 1
		}
		return cmpU128(a.start, b.start)
	})
	var out []IPRange
	for i := 0; i < len(spans); {
		cur := spans[i]
		i++
		for i < len(spans) && spans[i].is4 == cur.is4 {
			// merge if the next span starts at or before end+1 (the
			// end+1 overflow case means cur already reaches the top)
			next := spans[i]
			if cur.end != lastAddr(cur.is4) && cmpU128(next.start, cur.end.add1()) > 0 {
				break
			}
			if cmpU128(next.end, cur.end) > 0 {
				cur.end = next.end
			}
			i++
		}
		out = append(out, IPRange{Start: cur.start.addr(cur.is4), End: cur.end.addr(cur.is4)})
	}
	return out
}

// PrefixesFromRange returns the smallest set of CIDR prefixes whose union is
// exactly [r.Start, r.End], in address order. r.Protocol is ignored. It
// returns nil for an invalid range (invalid address, mixed families, Start
// after End).
func PrefixesFromRange(r IPRange) []netip.Prefix {
	if !r.Start.IsValid() || !r.End.IsValid() || r.Start.Is4() != r.End.Is4() || r.Start.Compare(r.End) > 0 {
		return nil
	}
	is4 := r.Start.Is4()
	bitLen := r.Start.BitLen()
	s, e := u128From(r.Start), u128From(r.End)
	var out []netip.Prefix
	for {
		// The block at s is as large as s's alignment allows and no
		// larger than what is left of the range.
		h := min(s.trailingZeros(), bitLen)
		if left := e.sub(s).add1(); !left.isZero() { // zero: the whole IPv6 space
			h = min(h, left.bitLen()-1)
		}
		out = append(out, netip.PrefixFrom(s.addr(is4), bitLen-h))
		last := s.or(lowMask(h))
		if last == e {
			return out
		}
		s = last.add1()
	}
}

func cmpU128(a, b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func lastAddr(is4 bool) u128 {
	if is4 {
		return lowMask(32)
	}
	return lowMask(128)
}
