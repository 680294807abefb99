package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/roamvpn/roam/tun/dns"
	"github.com/roamvpn/roam/tunnel"
	"github.com/roamvpn/roam/tunnel/addrpool"
)

// dnsForward is the resolver the userspace NAT forwards DNS on the
// gateways to: --dns-forward, else the first nameserver of the host's
// /etc/resolv.conf on port 53 (a loopback stub such as 127.0.0.53 is fine:
// the server's own sockets dial it). The zero AddrPort (gateway DNS goes
// to loopback port 53) if neither is there.
func dnsForward(f *serverFlags, log *slog.Logger) netip.AddrPort {
	if f.dnsForward != "" {
		return netip.MustParseAddrPort(f.dnsForward) // checked with the flags
	}
	a, err := dns.HostResolver(dns.DefaultResolvConf)
	if err != nil {
		log.Warn("the userspace NAT cannot forward DNS on the gateway addresses; give --dns-forward", "err", err)
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, 53)
}

// pushDNS is what the server pushes to clients: --dns, or in userspace
// mode the gateway addresses (where the userspace NAT answers DNS), unless
// there is no resolver to forward to (dnsForward has warned then).
func pushDNS(f *serverFlags, pool4, pool6 *addrpool.Pool) []netip.Addr {
	if len(f.dns.vals) > 0 {
		return slices.Clone(f.dns.vals)
	}
	if f.nat != "userspace" || !f.upstream.IsValid() {
		return nil
	}
	return []netip.Addr{pool4.Gateway(), pool6.Gateway()}
}

// clientDNS points the host's resolver at the servers the server pushed
// (--dns auto), through the TUN link name. It returns nil (nothing to
// restore) with --dns off or when the server pushed none.
func clientDNS(f *clientFlags, dc tunnel.DeviceConfig, link string, log *slog.Logger) (*dns.Handle, error) {
	// Only unicast servers the tunnel can carry: a loopback, link-local or
	// multicast address from the server would never go through it.
	dc.DNS = slices.DeleteFunc(slices.Clone(dc.DNS), func(a netip.Addr) bool {
		if !a.IsGlobalUnicast() {
			log.Warn("ignoring a pushed DNS server that is not a unicast address the tunnel carries", "dns", a)
			return true
		}
		return false
	})
	if f.dns == "off" || len(dc.DNS) == 0 {
		if len(dc.DNS) > 0 {
			log.Info("not configuring the DNS servers the server pushes (--dns off)", "dns", dc.DNS)
		}
		return nil, nil
	}
	full := false
	for _, r := range dc.Routes {
		full = full || r.Bits() == 0
	}
	for _, a := range dc.DNS {
		if !slices.ContainsFunc(dc.Routes, func(p netip.Prefix) bool { return p.Contains(a) }) {
			log.Warn("a pushed DNS server is outside the tunnel's routes: its queries leave outside the tunnel", "dns", a)
		}
	}
	cfg := dns.Config{Servers: dc.DNS, IfName: link, FullTunnel: full, ResolvConf: f.resolvConf, Logger: log}
	if f.resolvConf != dns.DefaultResolvConf {
		cfg.Backend = dns.File // a file of its own, never resolved (tests, containers)
	}
	h, err := dns.Configure(cfg)
	if err != nil {
		return nil, fmt.Errorf("configuring DNS (--dns off leaves it alone): %w", err)
	}
	return h, nil
}
