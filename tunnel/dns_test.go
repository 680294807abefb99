package tunnel

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/dns/dnstest"
)

// In-process DNS push, no root: the server pushes its gateway addresses,
// the client's device gets them in DeviceConfig.DNS, and a name resolves
// through the tunnel: the userspace NAT forwards the gateway's port 53 to
// a test DNS server on loopback.
func TestDNSPushUserspace(t *testing.T) {
	rsv, err := dnstest.Listen("127.0.0.1:0", map[string][]netip.Addr{
		"inside.example": {netip.MustParseAddr("192.0.2.80"), netip.MustParseAddr("2001:db8::80")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rsv.Close()
	gw := []netip.Addr{netip.MustParseAddr("100.96.0.1"), netip.MustParseAddr("fd00:96::1")}
	ts := startTestServerWith(t, testServerOpts{dns: gw, dnsForward: rsv.AddrPort()})
	var got []netip.Addr
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		newDev := c.NewDevice
		c.NewDevice = func(dc DeviceConfig) (datagram.Device, error) {
			got = dc.DNS
			return newDev(dc)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, gw) {
		t.Fatalf("DeviceConfig.DNS = %v, want %v", got, gw)
	}
	for _, server := range gw {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(server.String()+"/"+network, func(t *testing.T) {
				r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
					dst := netip.AddrPortFrom(server, 53)
					if network == "tcp" {
						return tc.net.DialContextTCPAddrPort(ctx, dst)
					}
					return tc.net.DialUDPAddrPort(netip.AddrPort{}, dst)
				}}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				addrs, err := r.LookupNetIP(ctx, "ip", "inside.example")
				if err != nil {
					t.Fatal(err)
				}
				slices.SortFunc(addrs, netip.Addr.Compare)
				if len(addrs) != 2 || addrs[0] != netip.MustParseAddr("192.0.2.80") || addrs[1] != netip.MustParseAddr("2001:db8::80") {
					t.Fatalf("resolved %v", addrs)
				}
			})
		}
	}
	if rsv.Queries.Load() < 8 {
		t.Errorf("the resolver answered %d queries, want at least 8 (A and AAAA, 4 ways)", rsv.Queries.Load())
	}
}

// A server whose DNS servers lie outside its routes says so at start; a
// bad address is refused.
func TestServerDNSConfig(t *testing.T) {
	ts := startTestServer(t, nil)
	cfg := ts.srv.cfg
	cfg.DNS = []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1")}
	if _, err := NewServer(cfg); err == nil || !strings.Contains(err.Error(), "ServerConfig.DNS[0]") {
		t.Fatalf("err = %v", err)
	}
	cfg.DNS = []netip.Addr{netip.MustParseAddr("192.0.2.53")}
	cfg.Routes = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	var logs lockedBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "outside the advertised routes") {
		t.Fatalf("no warning; logs:\n%s", logs.String())
	}
}

// dnsDevice is a test device that records UpdateDNS calls.
type dnsDevice struct {
	datagram.Device
	mu      sync.Mutex
	updates [][]netip.Addr
}

func (d *dnsDevice) UpdateDNS(dns []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.updates = append(d.updates, dns)
	return nil
}

func (d *dnsDevice) get() [][]netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.updates)
}

// After a reconnect to a server that pushes other DNS servers, a device
// that is a DNSUpdater gets them; the same servers again change nothing.
func TestDNSUpdateOnReconnect(t *testing.T) {
	secret := make([]byte, 32)
	for i := range secret {
		secret[i] = byte(i)
	}
	first := []netip.Addr{netip.MustParseAddr("100.96.0.1")}
	second := []netip.Addr{netip.MustParseAddr("fd00:96::1"), netip.MustParseAddr("100.96.0.1")}
	ts := startTestServerWith(t, testServerOpts{secret: secret, dns: first})
	cert := ts.srv.cfg.TLS.Certificates[0]
	var dev *dnsDevice
	var initial []netip.Addr
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		newDev := c.NewDevice
		c.NewDevice = func(dc DeviceConfig) (datagram.Device, error) {
			d, err := newDev(dc)
			initial, dev = dc.DNS, &dnsDevice{Device: d}
			return dev, err
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(initial, first) {
		t.Fatalf("DeviceConfig.DNS = %v", initial)
	}
	for i, dns := range [][]netip.Addr{first, second} {
		ts.stop()
		ts = startTestServerWith(t, testServerOpts{addr: ts.addr, cert: cert, secret: secret, dns: dns})
		waitForCond(t, "the client to reconnect", 20*time.Second, func() bool { return tc.client.reconnects.Load() == uint64(i+1) })
	}
	waitForCond(t, "the DNS update", 5*time.Second, func() bool { return len(dev.get()) > 0 })
	if got := dev.get(); len(got) != 1 || !slices.Equal(got[0], second) {
		t.Fatalf("UpdateDNS calls %v, want one with %v", got, second)
	}
}
