package interop

import (
	"context"
	"net/netip"
	"slices"
	"testing"
)

// TestRoamServerDNSAssign: connect-ip-go v0.7.0 implements
// draft-ietf-masque-connect-ip-dns-06 too. It must parse Roam's DNS_ASSIGN
// (a malformed one would make it abort the stream) and see what `--dns`
// configured: one configuration for the root domain, one plain-DNS
// nameserver per address, priorities in flag order. The session must live
// on afterwards (a ping through it).
func TestRoamServerDNSAssign(t *testing.T) {
	srv := startRoamServer(t, "--dns", "192.0.2.53", "--dns", "2001:db8::53")
	s, rsp, err := srv.dial(t, wellKnown("*", "*"), "Bearer "+serverToken)
	if err != nil {
		t.Fatalf("CONNECT-IP to roam server: %v (response %v)", err, rsp)
	}
	a4, _ := addrsOf(t, s.assignment(t))
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cfgs, err := s.conn.ReceiveDNSConfiguration(ctx)
	if err != nil {
		t.Fatalf("waiting for DNS_ASSIGN: %v", err)
	}
	if len(cfgs) != 1 {
		t.Fatalf("%d DNS configurations, want 1: %+v", len(cfgs), cfgs)
	}
	c := cfgs[0]
	if !slices.Equal(c.InternalDomains, []string{""}) || len(c.SearchDomains) != 0 {
		t.Errorf("internal domains %q, search domains %q; want the root only and none", c.InternalDomains, c.SearchDomains)
	}
	if len(c.Nameservers) != 2 {
		t.Fatalf("nameservers %+v, want 2", c.Nameservers)
	}
	n1, n2 := c.Nameservers[0], c.Nameservers[1]
	if n1.ServicePriority != 1 || !slices.Equal(n1.IPv4Addresses, []netip.Addr{netip.MustParseAddr("192.0.2.53")}) || len(n1.IPv6Addresses) != 0 {
		t.Errorf("first nameserver %+v", n1)
	}
	if n2.ServicePriority != 2 || !slices.Equal(n2.IPv6Addresses, []netip.Addr{netip.MustParseAddr("2001:db8::53")}) || len(n2.IPv4Addresses) != 0 {
		t.Errorf("second nameserver %+v", n2)
	}
	for _, n := range c.Nameservers {
		if n.AuthenticationDomainName != "" || len(n.ServiceParameters) != 0 {
			t.Errorf("nameserver %+v: want plain DNS (no name, no SvcParams)", n)
		}
	}
	s.pingCheck(t, a4.IPPrefix.Addr(), gw4, 64)
}
