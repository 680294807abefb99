package capsule

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/quic-go/quic-go/quicvarint"
)

// TypeDNSAssign is the DNS_ASSIGN capsule of draft-ietf-masque-connect-ip-dns-06
// §3.4. The value is the draft's provisional codepoint (§6: "if this
// document is approved, this value will be replaced by a smaller one before
// publication"); it is the one connect-ip-go v0.7.0 uses as well.
const TypeDNSAssign Type = 0x1ACE79EC

// Limits on a DNS_ASSIGN capsule, from the formats the draft builds on.
const (
	// MaxDomainLen is the longest Domain Name accepted: 255 octets (RFC
	// 1035 §2.3.4).
	MaxDomainLen = 255
	// MaxServiceParamsLen is the longest Service Parameters field: SvcParams
	// are DNS RDATA, whose RDLENGTH is 16 bits (RFC 9460 §2.2).
	MaxServiceParamsLen = 1<<16 - 1
)

// SvcParamKeys this package checks (RFC 9460 §14.3.2).
const (
	svcKeyALPN          = 1
	svcKeyNoDefaultALPN = 2
	svcKeyPort          = 3
	svcKeyIPv4Hint      = 4
	svcKeyIPv6Hint      = 6
)

// Nameserver is one Nameserver structure of a DNS Configuration
// (draft-ietf-masque-connect-ip-dns-06 §3.2).
type Nameserver struct {
	// Priority is the SVCB SvcPriority (RFC 9460 §2.4.1); lower is
	// preferred. It must not be zero (ServiceMode only).
	Priority uint16
	// Addrs are the nameserver's addresses. On the wire the IPv4 and the
	// IPv6 addresses are two separate lists, IPv4 first; a parsed
	// Nameserver lists them in that order. Addresses must be plain IPv4 or
	// IPv6 (no zone, no IPv4-mapped IPv6).
	Addrs []netip.Addr
	// AuthName is the Authentication Domain Name, in DNS presentation
	// format with IDNA A-labels. Empty for a nameserver that speaks only
	// unencrypted DNS on port 53.
	AuthName string
	// ServiceParams are SvcParams in the wire format of RFC 9460 §2.2
	// (keys in increasing order, each SvcParamKey (16), SvcParamValue
	// length (16), value). They must not contain ipv4hint or ipv6hint; with
	// an empty AuthName they must not contain alpn or no-default-alpn.
	ServiceParams []byte
}

// DNSConfig is one DNS Configuration structure (§3.3).
type DNSConfig struct {
	// Nameservers resolve the internal domains.
	Nameservers []Nameserver
	// InternalDomains are the domains (with their subdomains) the
	// nameservers resolve; the empty string is the root, i.e. every name.
	InternalDomains []string
	// SearchDomains are appended to single-label names. None may be empty.
	SearchDomains []string
}

// DNSAssign is a DNS_ASSIGN capsule (§3.4): the sender's complete DNS
// configuration, superseding any earlier DNS_ASSIGN. An empty capsule is
// valid and withdraws the configuration.
type DNSAssign struct {
	Configs []DNSConfig
}

// DNSAssignFor returns the DNS_ASSIGN a Roam server sends for its
// resolvers: one configuration for the root domain (the resolvers answer
// every name) with one unencrypted-DNS nameserver per address, priorities
// 1, 2, ... in the order given. addrs is not retained. No addresses gives
// an empty capsule.
func DNSAssignFor(addrs []netip.Addr) DNSAssign {
	if len(addrs) == 0 {
		return DNSAssign{}
	}
	cfg := DNSConfig{InternalDomains: []string{""}}
	for i, a := range addrs {
		cfg.Nameservers = append(cfg.Nameservers, Nameserver{Priority: uint16(min(i+1, 0xffff)), Addrs: []netip.Addr{a}})
	}
	return DNSAssign{Configs: []DNSConfig{cfg}}
}

// PlainAddrs returns the addresses of the nameservers that accept
// unencrypted DNS on port 53 (no no-default-alpn, no port other than 53),
// the lower Priority first, without duplicates. Encrypted-only
// nameservers (DoH, DoT, DoQ) are left out: Roam configures the host's
// classic resolver.
func (c *DNSAssign) PlainAddrs() []netip.Addr {
	var ns []Nameserver
	for _, cfg := range c.Configs {
		for _, n := range cfg.Nameservers {
			if plainDNS(n.ServiceParams) {
				ns = append(ns, n)
			}
		}
	}
	slices.SortStableFunc(ns, func(a, b Nameserver) int { return int(a.Priority) - int(b.Priority) })
	var out []netip.Addr
	for _, n := range ns {
		for _, a := range n.Addrs {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// plainDNS reports whether valid SvcParams leave unencrypted DNS on port
// 53 usable.
func plainDNS(params []byte) bool {
	for len(params) >= 4 {
		key := binary.BigEndian.Uint16(params)
		l := int(binary.BigEndian.Uint16(params[2:]))
		if l > len(params)-4 {
			return false // malformed; a parsed capsule never has this
		}
		v := params[4 : 4+l]
		switch key {
		case svcKeyNoDefaultALPN:
			return false
		case svcKeyPort:
			if l != 2 || binary.BigEndian.Uint16(v) != 53 {
				return false
			}
		}
		params = params[4+l:]
	}
	return true
}

// Append appends the whole capsule (type, length, value) to b. It checks
// every entry as [ParseDNSAssign] does and, on error, returns b unchanged
// with an [*Error].
func (c *DNSAssign) Append(b []byte) ([]byte, error) {
	for i, cfg := range c.Configs {
		if err := checkDNSConfig(i, &cfg); err != nil {
			return b, err
		}
	}
	var v []byte
	for _, cfg := range c.Configs {
		v = quicvarint.Append(v, uint64(len(cfg.Nameservers)))
		for _, n := range cfg.Nameservers {
			v = binary.BigEndian.AppendUint16(v, n.Priority)
			for _, want4 := range []bool{true, false} {
				cnt := 0
				for _, a := range n.Addrs {
					if a.Is4() == want4 {
						cnt++
					}
				}
				v = quicvarint.Append(v, uint64(cnt))
				for _, a := range n.Addrs {
					if a.Is4() == want4 {
						v = append(v, a.AsSlice()...)
					}
				}
			}
			v = appendDomain(v, n.AuthName)
			v = quicvarint.Append(v, uint64(len(n.ServiceParams)))
			v = append(v, n.ServiceParams...)
		}
		for _, ds := range [][]string{cfg.InternalDomains, cfg.SearchDomains} {
			v = quicvarint.Append(v, uint64(len(ds)))
			for _, d := range ds {
				v = appendDomain(v, d)
			}
		}
	}
	b = appendHeader(b, TypeDNSAssign, len(v))
	return append(b, v...), nil
}

func appendDomain(b []byte, d string) []byte {
	b = quicvarint.Append(b, uint64(len(d)))
	return append(b, d...)
}

// ParseDNSAssign parses the value of a DNS_ASSIGN capsule. value is not
// retained. Errors are [*Error]s whose Entry is the index of the DNS
// Configuration.
func ParseDNSAssign(value []byte) (*DNSAssign, error) {
	c := &DNSAssign{}
	for i := 0; len(value) > 0; i++ {
		cfg, n, err := parseDNSConfig(i, value)
		if err != nil {
			return nil, err
		}
		if err := checkDNSConfig(i, &cfg); err != nil {
			return nil, err
		}
		c.Configs = append(c.Configs, cfg)
		value = value[n:]
	}
	return c, nil
}

// dnsParser walks one DNS_ASSIGN value; the first error sticks.
type dnsParser struct {
	b   []byte
	off int
	i   int // configuration index, for errors
	err error
}

func (p *dnsParser) fail(field, format string, args ...any) {
	if p.err == nil {
		p.err = errorf(TypeDNSAssign, p.i, field, format, args...)
	}
}

func (p *dnsParser) varint(field string) uint64 {
	if p.err != nil {
		return 0
	}
	v, n, err := quicvarint.Parse(p.b[p.off:])
	if err != nil {
		p.fail(field, "truncated varint")
		return 0
	}
	p.off += n
	return v
}

func (p *dnsParser) bytes(field string, n uint64) []byte {
	if p.err != nil {
		return nil
	}
	if n > uint64(len(p.b)-p.off) {
		p.fail(field, "truncated: %d bytes announced, %d left", n, len(p.b)-p.off)
		return nil
	}
	v := p.b[p.off : p.off+int(n)]
	p.off += int(n)
	return v
}

// count reads a count of items of at least size bytes each and checks that
// they can fit in what is left, so a lying count cannot make the parser
// allocate.
func (p *dnsParser) count(field string, size int) int {
	n := p.varint(field)
	if p.err == nil && n > uint64((len(p.b)-p.off)/size) {
		p.fail(field, "%d entries cannot fit in the %d bytes left", n, len(p.b)-p.off)
	}
	if p.err != nil {
		return 0
	}
	return int(n)
}

func (p *dnsParser) domain(field string) string {
	l := p.varint(field + " Length")
	if p.err == nil && l > MaxDomainLen {
		p.fail(field+" Length", "%d exceeds %d octets (RFC 1035 §2.3.4)", l, MaxDomainLen)
	}
	return string(p.bytes(field, l))
}

func parseDNSConfig(i int, b []byte) (DNSConfig, int, error) {
	p := &dnsParser{b: b, i: i}
	var cfg DNSConfig
	// A Nameserver is at least 2+1+1+1+1 bytes.
	for range p.count("Nameserver Count", 6) {
		var n Nameserver
		if pr := p.bytes("Service Priority", 2); pr != nil {
			n.Priority = binary.BigEndian.Uint16(pr)
		}
		for _, size := range []int{4, 16} {
			field := "IPv4 Address"
			if size == 16 {
				field = "IPv6 Address"
			}
			for range p.count(field+" Count", size) {
				if a := p.bytes(field, uint64(size)); a != nil {
					addr, _ := netip.AddrFromSlice(a)
					n.Addrs = append(n.Addrs, addr)
				}
			}
		}
		n.AuthName = p.domain("Authentication Domain Name")
		l := p.varint("Service Parameters Length")
		if p.err == nil && l > MaxServiceParamsLen {
			p.fail("Service Parameters Length", "%d exceeds %d (RFC 9460 §2.2)", l, MaxServiceParamsLen)
		}
		if sp := p.bytes("Service Parameters", l); len(sp) > 0 {
			n.ServiceParams = slices.Clone(sp)
		}
		if p.err != nil {
			break
		}
		cfg.Nameservers = append(cfg.Nameservers, n)
	}
	for _, field := range []string{"Internal Domain", "Search Domain"} {
		var ds []string
		for range p.count(field+" Count", 1) {
			d := p.domain(field)
			if p.err != nil {
				break
			}
			ds = append(ds, d)
		}
		if field == "Internal Domain" {
			cfg.InternalDomains = ds
		} else {
			cfg.SearchDomains = ds
		}
	}
	if p.err != nil {
		return DNSConfig{}, 0, p.err
	}
	return cfg, p.off, nil
}

// checkDNSConfig checks the rules of §3.1-§3.3 for configuration i.
func checkDNSConfig(i int, cfg *DNSConfig) error {
	for j, n := range cfg.Nameservers {
		if n.Priority == 0 {
			return errorf(TypeDNSAssign, i, "Service Priority", "nameserver %d: must not be 0 (draft-ietf-masque-connect-ip-dns-06 §3.2)", j)
		}
		for _, a := range n.Addrs {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				return errorf(TypeDNSAssign, i, "IP Address", "nameserver %d: %v is not a plain IPv4 or IPv6 address", j, a)
			}
		}
		if err := checkDomain(i, "Authentication Domain Name", n.AuthName, true); err != nil {
			return err
		}
		if len(n.ServiceParams) > MaxServiceParamsLen {
			return errorf(TypeDNSAssign, i, "Service Parameters", "nameserver %d: %d bytes exceed %d", j, len(n.ServiceParams), MaxServiceParamsLen)
		}
		if err := checkSvcParams(i, j, &n); err != nil {
			return err
		}
	}
	for _, d := range cfg.InternalDomains {
		if err := checkDomain(i, "Internal Domain", d, true); err != nil {
			return err
		}
	}
	for _, d := range cfg.SearchDomains {
		if err := checkDomain(i, "Search Domain", d, false); err != nil {
			return err
		}
	}
	return nil
}

// checkDomain accepts a domain name in presentation format: at most
// MaxDomainLen printable ASCII characters (an A-label is ASCII; escapes
// such as \046 are printable too). allowEmpty permits the root ("").
func checkDomain(i int, field, d string, allowEmpty bool) error {
	if d == "" {
		if allowEmpty {
			return nil
		}
		return errorf(TypeDNSAssign, i, field, "must not be empty")
	}
	if len(d) > MaxDomainLen {
		return errorf(TypeDNSAssign, i, field, "%d octets exceed %d", len(d), MaxDomainLen)
	}
	for k := 0; k < len(d); k++ {
		if d[k] <= ' ' || d[k] >= 0x7f {
			return errorf(TypeDNSAssign, i, field, "%q: byte %d is not printable ASCII (want an IDNA A-label such as xn--bcher-kva.example)", d, k)
		}
	}
	return nil
}

// checkSvcParams checks the SvcParams wire format (RFC 9460 §2.2: keys
// strictly increasing, values within the field) and the draft's rules on
// which keys may appear (§3.2).
func checkSvcParams(i, j int, n *Nameserver) error {
	b := n.ServiceParams
	last := -1
	for len(b) > 0 {
		if len(b) < 4 {
			return errorf(TypeDNSAssign, i, "Service Parameters", "nameserver %d: truncated SvcParam header", j)
		}
		key := int(binary.BigEndian.Uint16(b))
		l := int(binary.BigEndian.Uint16(b[2:]))
		if key <= last {
			return errorf(TypeDNSAssign, i, "Service Parameters", "nameserver %d: SvcParamKey %d after %d; keys must increase (RFC 9460 §2.2)", j, key, last)
		}
		if l > len(b)-4 {
			return errorf(TypeDNSAssign, i, "Service Parameters", "nameserver %d: SvcParamKey %d value of %d bytes is truncated", j, key, l)
		}
		switch key {
		case svcKeyIPv4Hint, svcKeyIPv6Hint:
			return errorf(TypeDNSAssign, i, "Service Parameters", "nameserver %d: SvcParamKey %d (ipv4hint/ipv6hint) must not be sent (draft §3.2)", j, key)
		case svcKeyALPN, svcKeyNoDefaultALPN:
			if n.AuthName == "" {
				return errorf(TypeDNSAssign, i, "Service Parameters", "nameserver %d: alpn/no-default-alpn need an Authentication Domain Name (draft §3.2)", j)
			}
		case svcKeyPort:
			if l != 2 {
				return errorf(TypeDNSAssign, i, "Service Parameters", "nameserver %d: port value is %d bytes; want 2", j, l)
			}
		}
		last = key
		b = b[4+l:]
	}
	// §3.2 asks for an address whenever no-default-alpn is absent, but its
	// own DoH example (§3.6.1) has none; like connect-ip-go, insist only
	// when there is no name to find the nameserver by.
	if n.AuthName == "" && len(n.Addrs) == 0 {
		return errorf(TypeDNSAssign, i, "IP Address Count", "nameserver %d: a nameserver without an Authentication Domain Name needs an address (draft §3.2)", j)
	}
	return nil
}
