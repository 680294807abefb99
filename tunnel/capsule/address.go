package capsule

import (
	"net/netip"

	"github.com/quic-go/quic-go/quicvarint"
)

// AssignedAddress is one entry of an ADDRESS_ASSIGN capsule (RFC 9484
// §4.7.1). The IP Version field is implied by Prefix.Addr(): 4 for an IPv4
// address, 6 otherwise (an IPv4-mapped IPv6 address is sent as IPv6).
type AssignedAddress struct {
	// RequestID is the Request ID of the ADDRESS_REQUEST entry this answers,
	// or 0 for an unsolicited assignment.
	RequestID uint64
	// Prefix is the assigned address and prefix length. Bits beyond the
	// prefix length must be zero (Prefix.Masked() == Prefix). A refused
	// request is answered with 0.0.0.0/32 or ::/128 (RFC 9484 §4.7.2).
	Prefix netip.Prefix
}

// AddressAssign is an ADDRESS_ASSIGN capsule (RFC 9484 §4.7.1): the full set
// of addresses currently assigned to the receiver. An empty capsule is valid
// and removes every address.
type AddressAssign struct {
	Addresses []AssignedAddress
}

// RequestedAddress is one entry of an ADDRESS_REQUEST capsule (RFC 9484
// §4.7.2). The IP Version field is implied by Prefix.Addr().
type RequestedAddress struct {
	// RequestID identifies the request; it must not be zero and must be
	// unique within the capsule (and, per the RFC, never reused).
	RequestID uint64
	// Prefix is the requested address and prefix length, host bits zero.
	// An all-zero address (0.0.0.0 or ::) asks for any address of that
	// family, with the prefix length as the preferred length.
	Prefix netip.Prefix
}

// AddressRequest is an ADDRESS_REQUEST capsule (RFC 9484 §4.7.2). It holds
// one or more entries.
type AddressRequest struct {
	Addresses []RequestedAddress
}

// Append appends the whole capsule (type, length, value) to b. It validates
// the entries as [ParseAddressAssign] would and, on error, returns b
// unchanged with an [*Error].
func (c *AddressAssign) Append(b []byte) ([]byte, error) {
	n := 0
	for i, a := range c.Addresses {
		if err := checkEntry(TypeAddressAssign, i, a.RequestID, a.Prefix); err != nil {
			return b, err
		}
		n += entryLen(a.RequestID, a.Prefix)
	}
	b = appendHeader(b, TypeAddressAssign, n)
	for _, a := range c.Addresses {
		b = appendEntry(b, a.RequestID, a.Prefix)
	}
	return b, nil
}

// Append appends the whole capsule (type, length, value) to b. It validates
// the entries as [ParseAddressRequest] would (at least one entry, non-zero
// unique Request IDs, host bits zero) and, on error, returns b unchanged
// with an [*Error].
func (c *AddressRequest) Append(b []byte) ([]byte, error) {
	if len(c.Addresses) == 0 {
		return b, errorf(TypeAddressRequest, -1, "", "no Requested Address (RFC 9484 §4.7.2 requires one or more)")
	}
	n := 0
	for i, a := range c.Addresses {
		if err := checkEntry(TypeAddressRequest, i, a.RequestID, a.Prefix); err != nil {
			return b, err
		}
		n += entryLen(a.RequestID, a.Prefix)
	}
	if err := checkRequestIDs(c.Addresses); err != nil {
		return b, err
	}
	b = appendHeader(b, TypeAddressRequest, n)
	for _, a := range c.Addresses {
		b = appendEntry(b, a.RequestID, a.Prefix)
	}
	return b, nil
}

// ParseAddressAssign parses the value of an ADDRESS_ASSIGN capsule. value is
// not retained. Errors are [*Error]s.
func ParseAddressAssign(value []byte) (*AddressAssign, error) {
	c := &AddressAssign{}
	for i := 0; len(value) > 0; i++ {
		id, p, n, err := parseEntry(TypeAddressAssign, i, value)
		if err != nil {
			return nil, err
		}
		c.Addresses = append(c.Addresses, AssignedAddress{RequestID: id, Prefix: p})
		value = value[n:]
	}
	return c, nil
}

// ParseAddressRequest parses the value of an ADDRESS_REQUEST capsule. value
// is not retained. Errors are [*Error]s; RFC 9484 §4.7.2 requires the
// receiver to abort the request stream for all of them, including an empty
// capsule.
func ParseAddressRequest(value []byte) (*AddressRequest, error) {
	if len(value) == 0 {
		return nil, errorf(TypeAddressRequest, -1, "", "no Requested Address (RFC 9484 §4.7.2 requires one or more)")
	}
	c := &AddressRequest{}
	for i := 0; len(value) > 0; i++ {
		id, p, n, err := parseEntry(TypeAddressRequest, i, value)
		if err != nil {
			return nil, err
		}
		c.Addresses = append(c.Addresses, RequestedAddress{RequestID: id, Prefix: p})
		value = value[n:]
	}
	if err := checkRequestIDs(c.Addresses); err != nil {
		return nil, err
	}
	return c, nil
}

// checkRequestIDs rejects duplicate Request IDs inside one ADDRESS_REQUEST
// ("Request IDs MUST NOT be reused by an endpoint", RFC 9484 §4.7.2): the
// answer could not say which entry it refers to.
func checkRequestIDs(as []RequestedAddress) error {
	if len(as) <= 16 {
		for i := 1; i < len(as); i++ {
			for j := range i {
				if as[i].RequestID == as[j].RequestID {
					return errorf(TypeAddressRequest, i, "Request ID", "%d repeats entry %d", as[i].RequestID, j)
				}
			}
		}
		return nil
	}
	seen := make(map[uint64]int, len(as))
	for i, a := range as {
		if j, ok := seen[a.RequestID]; ok {
			return errorf(TypeAddressRequest, i, "Request ID", "%d repeats entry %d", a.RequestID, j)
		}
		seen[a.RequestID] = i
	}
	return nil
}

// checkEntry validates one address entry for encoding.
func checkEntry(t Type, i int, id uint64, p netip.Prefix) error {
	if id > quicvarint.Max {
		return errorf(t, i, "Request ID", "%d exceeds the varint maximum 2^62-1", id)
	}
	if t == TypeAddressRequest && id == 0 {
		return errorf(t, i, "Request ID", "must not be zero (RFC 9484 §4.7.2)")
	}
	if !p.IsValid() {
		return errorf(t, i, "IP Address", "invalid prefix %v; want an IPv4 or IPv6 prefix such as 192.0.2.1/32", p)
	}
	if p.Masked() != p {
		return errorf(t, i, "IP Address", "%v has bits set beyond the prefix length; want %v (RFC 9484 §4.7)", p, p.Masked())
	}
	return nil
}

func entryLen(id uint64, p netip.Prefix) int {
	return quicvarint.Len(id) + 1 + p.Addr().BitLen()/8 + 1
}

func appendEntry(b []byte, id uint64, p netip.Prefix) []byte {
	b = quicvarint.Append(b, id)
	b = appendAddr(b, p.Addr())
	return append(b, byte(p.Bits()))
}

// appendAddr appends IP Version and the address bytes.
func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(append(b, 4), v[:]...)
	}
	v := a.As16()
	return append(append(b, 6), v[:]...)
}

// parseVersionAddr parses IP Version and one address.
func parseVersionAddr(t Type, i int, b []byte, field string) (netip.Addr, int, error) {
	if len(b) < 1 {
		return netip.Addr{}, 0, errorf(t, i, "IP Version", "truncated")
	}
	a, n, err := parseAddr(t, i, b[0], b[1:], field)
	return a, n + 1, err
}

// parseAddr parses one address of IP version ver.
func parseAddr(t Type, i int, ver byte, b []byte, field string) (netip.Addr, int, error) {
	switch ver {
	case 4:
		if len(b) < 4 {
			return netip.Addr{}, 0, errorf(t, i, field, "truncated: %d of 4 bytes", len(b))
		}
		return netip.AddrFrom4([4]byte(b[:4])), 4, nil
	case 6:
		if len(b) < 16 {
			return netip.Addr{}, 0, errorf(t, i, field, "truncated: %d of 16 bytes", len(b))
		}
		return netip.AddrFrom16([16]byte(b[:16])), 16, nil
	}
	return netip.Addr{}, 0, errorf(t, i, "IP Version", "%d; must be 4 or 6", ver)
}

// parseEntry parses one Assigned or Requested Address.
func parseEntry(t Type, i int, b []byte) (id uint64, p netip.Prefix, n int, err error) {
	id, n, err = quicvarint.Parse(b)
	if err != nil {
		return 0, p, 0, errorf(t, i, "Request ID", "truncated varint")
	}
	if t == TypeAddressRequest && id == 0 {
		return 0, p, 0, errorf(t, i, "Request ID", "must not be zero (RFC 9484 §4.7.2)")
	}
	a, m, err := parseVersionAddr(t, i, b[n:], "IP Address")
	if err != nil {
		return 0, p, 0, err
	}
	n += m
	if n >= len(b) {
		return 0, p, 0, errorf(t, i, "IP Prefix Length", "truncated")
	}
	bits := int(b[n])
	n++
	if bits > a.BitLen() {
		return 0, p, 0, errorf(t, i, "IP Prefix Length", "%d exceeds %d for IPv%d", bits, a.BitLen(), ipVersion(a))
	}
	p = netip.PrefixFrom(a, bits)
	if p.Masked() != p {
		return 0, p, 0, errorf(t, i, "IP Address", "%v has bits set beyond the prefix length (RFC 9484 §4.7 requires them zero)", p)
	}
	return id, p, n, nil
}

func ipVersion(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}
