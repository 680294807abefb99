package usernat

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/roamvpn/roam/tun/dns/dnstest"
)

func TestTargetDNS(t *testing.T) {
	resolver := netip.MustParseAddrPort("127.0.0.53:53")
	tests := []struct {
		name          string
		dns           netip.AddrPort
		proto         string
		dst           netip.Addr
		port          uint16
		wantNet, want string
	}{
		{"gw4 DNS to the resolver", resolver, "udp", testGW4, 53, "udp4", "127.0.0.53:53"},
		{"gw6 DNS to an IPv4 resolver", resolver, "tcp", testGW6, 53, "tcp4", "127.0.0.53:53"},
		{"gw4 other port stays loopback", resolver, "tcp", testGW4, 80, "tcp4", "127.0.0.1:80"},
		{"gw6 other port stays loopback", resolver, "udp", testGW6, 5353, "udp6", "[::1]:5353"},
		{"remote DNS is not redirected", resolver, "udp", netip.MustParseAddr("192.0.2.53"), 53, "udp4", "192.0.2.53:53"},
		{"no resolver: gateway DNS is loopback 53", netip.AddrPort{}, "udp", testGW4, 53, "udp4", "127.0.0.1:53"},
		{"IPv6 resolver", netip.MustParseAddrPort("[fd00::53]:5300"), "udp", testGW4, 53, "udp6", "[fd00::53]:5300"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.DNS = tt.dns
			s := &Stack{cfg: cfg}
			n, a := s.target(tt.proto, tt.dst, tt.port)
			if n != tt.wantNet || a != tt.want {
				t.Fatalf("target = %s %s, want %s %s", n, a, tt.wantNet, tt.want)
			}
		})
	}
}

// Queries to the gateways' port 53, over UDP and TCP and both families,
// reach the configured resolver (here a test server on a loopback port
// other than 53) and the answers come back.
func TestGatewayDNS(t *testing.T) {
	srv, err := dnstest.Listen("127.0.0.1:0", map[string][]netip.Addr{"host.example": {netip.MustParseAddr("192.0.2.7")}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := testConfig()
	cfg.DNS = srv.AddrPort()
	h := newHarness(t, cfg)
	for _, tt := range []struct {
		name string
		tcp  bool
		gw   netip.Addr
	}{
		{"udp ipv4", false, testGW4},
		{"tcp ipv4", true, testGW4},
		{"udp ipv6", false, testGW6},
		{"tcp ipv6", true, testGW6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var c net.Conn
			var err error
			if tt.tcp {
				c, err = h.cnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(tt.gw, 53))
			} else {
				c, err = h.cnet.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(tt.gw, 53))
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			got, err := dnstest.LookupA(c, tt.tcp, "host.example.")
			if err != nil {
				t.Fatal(err)
			}
			if got != netip.MustParseAddr("192.0.2.7") {
				t.Fatalf("answer %v", got)
			}
		})
	}
	if n := srv.Queries.Load(); n != 4 {
		t.Errorf("resolver answered %d queries, want 4", n)
	}
}
