package capsule

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func hexs(s string) string { return hex.EncodeToString([]byte(s)) }

// Byte vectors follow draft-ietf-masque-connect-ip-dns-06 Figures 1-4: the
// 4-byte varint type 0x1ACE79EC (9a ce 79 ec), Length, then per DNS
// Configuration: Nameserver Count, Nameservers {Service Priority (16), IPv4
// Address Count, IPv4 Addresses, IPv6 Address Count, IPv6 Addresses,
// Authentication Domain Name {Length, Name}, Service Parameters Length,
// Service Parameters}, Internal Domain Count, Domains, Search Domain Count,
// Domains.
func TestDNSAssignVectors(t *testing.T) {
	tests := []struct {
		name string
		c    DNSAssign
		wire string
	}{
		{"empty", DNSAssign{}, "9ace79ec 00"},
		{"one IPv4 resolver for the root", DNSAssignFor([]netip.Addr{ip("10.0.0.1")}),
			"9ace79ec 0e  01 0001 01 0a000001 00 00 00  01 00  00"},
		{"two resolvers keep their order", DNSAssignFor([]netip.Addr{ip("fd00::53"), ip("10.0.0.1")}),
			"9ace79ec 24  02" +
				" 0001 00 01 fd000000000000000000000000000053 00 00" +
				" 0002 01 0a000001 00 00 00" +
				" 01 00  00"},
		{"draft split-tunnel example (§3.6.2)", DNSAssign{[]DNSConfig{{
			Nameservers:     []Nameserver{{Priority: 1, Addrs: []netip.Addr{ip("2001:db8::1"), ip("192.0.2.33")}}},
			InternalDomains: []string{"internal.corp.example"},
			SearchDomains:   []string{"internal.corp.example", "corp.example"},
		}}}, "9ace79ec 4056  01 0001 01 c0000221 01 20010db8000000000000000000000001 00 00" +
			" 01 15 " + hexs("internal.corp.example") +
			" 02 15 " + hexs("internal.corp.example") + " 0c " + hexs("corp.example")},
		{"DoH nameserver by name (§3.6.1 shape)", DNSAssign{[]DNSConfig{{
			Nameservers: []Nameserver{{Priority: 1, AuthName: "masque.example",
				ServiceParams: h("0001 0006 02683202 6833")}}, // alpn=h2,h3
			InternalDomains: []string{""},
		}}}, "9ace79ec 22  01 0001 00 00 0e " + hexs("masque.example") + " 0a 0001 0006 02683202 6833  01 00  00"},
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
			if err != nil || ty != TypeDNSAssign || n != len(want) {
				t.Fatalf("ParseCapsule = %v %d %v", ty, n, err)
			}
			p, err := ParseDNSAssign(v)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			again, err := p.Append(nil)
			if err != nil || !bytes.Equal(again, want) {
				t.Fatalf("re-encoded % x, %v", again, err)
			}
		})
	}
}

func TestDNSAssignString(t *testing.T) {
	if s := TypeDNSAssign.String(); s != "DNS_ASSIGN" {
		t.Fatal(s)
	}
	if TypeDNSAssign.Known() {
		t.Fatal("DNS_ASSIGN must be skipped, not refused, when oversized")
	}
}

func TestParseDNSAssignErrors(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct {
		name  string
		value string
		entry int
		field string
		msg   string
	}{
		{"truncated count", "40", 0, "Nameserver Count", "truncated varint"},
		{"lying nameserver count", "3f 0001", 0, "Nameserver Count", "cannot fit"},
		{"truncated priority", "01 00", 0, "Nameserver Count", "cannot fit"},
		{"priority zero", "01 0000 01 0a000001 00 00 00 00 00", 0, "Service Priority", "must not be 0"},
		{"lying IPv4 count", "01 0001 05 0a000001 00 00 00 00 00", 0, "IPv4 Address Count", "cannot fit"},
		{"truncated IPv6", "01 0001 00 01 20010db8 00 00", 0, "IPv6 Address Count", "cannot fit"},
		{"no address, no name", "01 0001 00 00 00 00 00 00", 0, "IP Address Count", "needs an address"},
		{"domain too long", "01 0001 01 0a000001 00 00 00 01 4100" + hex.EncodeToString([]byte(long)) + " 00", 0, "Internal Domain Length", "exceeds 255"},
		{"truncated domain", "01 0001 01 0a000001 00 00 00 01 05 6162", 0, "Internal Domain", "truncated"},
		{"empty search domain", "01 0001 01 0a000001 00 00 00 00 01 00", 0, "Search Domain", "must not be empty"},
		{"non-ASCII domain", "00 01 02 c3bc 00", 0, "Internal Domain", "not printable ASCII"},
		{"space in domain", "00 01 03 612062 00", 0, "Internal Domain", "not printable ASCII"},
		{"svc params truncated", "01 0001 01 0a000001 00 00 05 0003 00", 0, "Service Parameters", "truncated"},
		{"svc param value truncated", "01 0001 01 0a000001 00 00 06 0003 0004 0035 00 00", 0, "Service Parameters", "truncated"},
		{"svc keys not increasing", "01 0001 01 0a000001 00 01 61 0a 0003 0002 0035 0001 0000 00 00", 0, "Service Parameters", "must increase"},
		{"ipv4hint", "01 0001 01 0a000001 00 01 61 08 0004 0004 0a000001 00 00", 0, "Service Parameters", "ipv4hint"},
		{"alpn without name", "01 0001 01 0a000001 00 00 07 0001 0003 02 6832 00 00", 0, "Service Parameters", "need an Authentication Domain Name"},
		{"bad port length", "01 0001 01 0a000001 00 00 05 0003 0001 35 00 00", 0, "Service Parameters", "want 2"},
		{"second config bad", "00 00 00  01 0000 01 0a000001 00 00 00 00 00", 1, "Service Priority", "must not be 0"},
		{"second config truncated", "00 00 00  01", 1, "Nameserver Count", "cannot fit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseDNSAssign(h(tt.value))
			if c != nil {
				t.Fatal("non-nil capsule with error")
			}
			checkErr(t, err, TypeDNSAssign, tt.entry, tt.field, tt.msg)
		})
	}
}

func TestDNSAssignAppendErrors(t *testing.T) {
	a4in6 := netip.AddrFrom16(ip("10.0.0.1").As16())
	tests := []struct {
		name  string
		c     DNSAssign
		field string
	}{
		{"priority zero", DNSAssign{[]DNSConfig{{Nameservers: []Nameserver{{Addrs: []netip.Addr{ip("10.0.0.1")}}}}}}, "Service Priority"},
		{"mapped address", DNSAssign{[]DNSConfig{{Nameservers: []Nameserver{{Priority: 1, Addrs: []netip.Addr{a4in6}}}}}}, "IP Address"},
		{"zone", DNSAssign{[]DNSConfig{{Nameservers: []Nameserver{{Priority: 1, Addrs: []netip.Addr{ip("fe80::1%eth0")}}}}}}, "IP Address"},
		{"invalid address", DNSAssign{[]DNSConfig{{Nameservers: []Nameserver{{Priority: 1, Addrs: []netip.Addr{{}}}}}}}, "IP Address"},
		{"empty search", DNSAssign{[]DNSConfig{{SearchDomains: []string{""}}}}, "Search Domain"},
		{"long auth name", DNSAssign{[]DNSConfig{{Nameservers: []Nameserver{{Priority: 1, AuthName: strings.Repeat("x", 256)}}}}}, "Authentication Domain Name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := []byte{1, 2}
			got, err := tt.c.Append(b)
			if !bytes.Equal(got, b) {
				t.Fatalf("b changed to % x", got)
			}
			checkErr(t, err, TypeDNSAssign, 0, tt.field, "")
		})
	}
}

func TestDNSAssignPlainAddrs(t *testing.T) {
	c := DNSAssign{[]DNSConfig{
		{Nameservers: []Nameserver{
			{Priority: 5, Addrs: []netip.Addr{ip("10.0.0.5")}},
			{Priority: 1, AuthName: "dns.example", Addrs: []netip.Addr{ip("10.0.0.9")},
				ServiceParams: h("0001 0003 02 6833  0002 0000")}, // alpn=h3, no-default-alpn: DoQ/DoH only
			{Priority: 2, Addrs: []netip.Addr{ip("10.0.0.2"), ip("fd00::2")}, ServiceParams: h("0003 0002 0035")}, // port=53
			{Priority: 3, Addrs: []netip.Addr{ip("10.0.0.3")}, ServiceParams: h("0003 0002 1435")},                // port=5173
		}},
		{Nameservers: []Nameserver{{Priority: 1, Addrs: []netip.Addr{ip("10.0.0.1"), ip("10.0.0.2")}}}},
	}}
	if _, err := c.Append(nil); err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::2"), ip("10.0.0.5")}
	if got := c.PlainAddrs(); !slices.Equal(got, want) {
		t.Fatalf("PlainAddrs = %v, want %v", got, want)
	}
	if got := (&DNSAssign{}).PlainAddrs(); got != nil {
		t.Fatalf("empty: %v", got)
	}
	// Round trip through the parser keeps the same answer.
	b, _ := c.Append(nil)
	_, v, _, _ := ParseCapsule(b)
	p, err := ParseDNSAssign(v)
	if err != nil || !reflect.DeepEqual(p.PlainAddrs(), want) {
		t.Fatalf("parsed: %v %v", p, err)
	}
}

func FuzzParseDNSAssign(f *testing.F) {
	seedValues(f, TypeDNSAssign,
		&DNSAssign{},
		ptr(DNSAssignFor([]netip.Addr{ip("100.96.0.1"), ip("fd00:96::1")})),
		&DNSAssign{[]DNSConfig{
			{Nameservers: []Nameserver{{Priority: 1, AuthName: "dns.example", ServiceParams: h("0001 0003 02 6833 0003 0002 0355")}},
				InternalDomains: []string{"corp.example", ""}, SearchDomains: []string{"corp.example"}},
			{},
		}},
	)
	f.Add([]byte{0x3f, 0, 1})
	f.Fuzz(func(t *testing.T, v []byte) {
		c, err := ParseDNSAssign(v)
		if err != nil {
			return
		}
		b := reparse(t, TypeDNSAssign, c)
		if !bytes.Equal(b, v) {
			// Varints need not be minimal on the wire (§2), so only the
			// parsed values must survive, not the bytes.
			if len(b) > len(v) {
				t.Fatalf("re-encoding grew: % x -> % x", v, b)
			}
		}
		c2, err := ParseDNSAssign(b)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip: %+v != %+v", c, c2)
		}
		_ = c.PlainAddrs()
	})
}

func ptr[T any](v T) *T { return &v }
