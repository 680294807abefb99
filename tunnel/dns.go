package tunnel

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/roamvpn/roam/tunnel/capsule"
)

// checkDNS validates ServerConfig.DNS and warns about resolvers the
// server's routes do not cover: a client would reach those outside the
// tunnel, which leaks its queries to whatever network it is on.
func (s *Server) checkDNS() error {
	for i, a := range s.cfg.DNS {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || a.Is4In6() {
			return fmt.Errorf("tunnel: ServerConfig.DNS[%d]: %v is not a usable resolver address; want a plain IPv4 or IPv6 address such as 100.96.0.1", i, a)
		}
	}
	if out := dnsOutside(s.cfg.DNS, s.auth.Load().routes); len(out) > 0 {
		s.log.Warn("DNS servers outside the advertised routes: clients will reach them outside the tunnel", "dns", out, "routes", s.cfg.Routes)
	}
	return nil
}

// dnsOutside returns the addresses of dns that rs does not carry DNS
// (UDP or TCP port 53) to.
func dnsOutside(dns []netip.Addr, rs routeSet) []netip.Addr {
	var out []netip.Addr
	for _, a := range dns {
		if !rs.allows(a, 17) && !rs.allows(a, 6) {
			out = append(out, a)
		}
	}
	return out
}

// appendDNS appends the session's DNS_ASSIGN to b, if the server has DNS
// servers, and warns when the session's policy (its identity's routes and
// ports) does not let DNS reach some of them.
func (sess *session) appendDNS(b []byte) ([]byte, error) {
	dns := sess.srv.cfg.DNS
	if len(dns) == 0 {
		return b, nil
	}
	pol := sess.pol.Load()
	if out := dnsOutside(dns, pol.routes); len(out) > 0 && len(dnsOutside(dns, sess.srv.auth.Load().routes)) == 0 {
		sess.log.Warn("DNS servers outside this session's routes: the client will reach them outside the tunnel", "dns", out)
	}
	if !pol.id.AllowsPort(53) {
		sess.log.Warn("this session's token does not allow port 53: the pushed DNS servers will not answer it", "dns", dns)
	}
	c := capsule.DNSAssignFor(dns)
	b, err := c.Append(b)
	if err != nil {
		return b, fmt.Errorf("encoding DNS_ASSIGN: %w", err)
	}
	return b, nil
}

// dnsAddrs returns the plain-DNS resolver addresses of d (nil for nil).
func dnsAddrs(d *capsule.DNSAssign) []netip.Addr {
	if d == nil {
		return nil
	}
	return d.PlainAddrs()
}

// DNSUpdater is implemented by a device returned from
// ClientConfig.NewDevice that can change the host's DNS servers while it
// lives (cmd/roam's TUN device does, through tun/dns).
type DNSUpdater interface {
	// UpdateDNS makes the host use dns (in preference order) instead of
	// the servers it was created with or last given; empty means the
	// host's own DNS again. On error the host's own DNS is back.
	UpdateDNS(dns []netip.Addr) error
}

// noteDNS handles a DNS configuration from the server (a DNS_ASSIGN on
// the stream, or the one that came with a reconnect): if its servers
// differ from the host's, a device that is a DNSUpdater applies them,
// else the change is logged and the device keeps its DNS (like the
// addresses and routes, it is set up once). A reconnect to a server that
// sends no DNS_ASSIGN (d nil) keeps the DNS as it is.
func (s *supervisor) noteDNS(d *capsule.DNSAssign) {
	if d == nil {
		return
	}
	got := d.PlainAddrs()
	s.dnsMu.Lock()
	defer s.dnsMu.Unlock()
	if slices.Equal(got, s.dns) {
		return
	}
	if s.dnsDev == nil {
		s.c.log.Warn("server pushes other DNS servers now; the device keeps its own", "new", got, "device", s.dns)
		return
	}
	if err := s.dnsDev.UpdateDNS(got); err != nil {
		s.c.log.Warn("applying the server's new DNS servers failed; the host's own DNS is back", "dns", got, "err", err)
		s.dns = nil
		return
	}
	s.c.log.Info("server pushes other DNS servers now; the host uses them", "dns", got, "before", s.dns)
	s.dns = got
}
