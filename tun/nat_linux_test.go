package tun

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestMasqueradeTable(t *testing.T) {
	needTool(t, "nft")
	ns := newNetns(t)
	cfg := MasqueradeConfig{
		TunName: "roamt0",
		Pools:   []netip.Prefix{netip.MustParsePrefix("10.77.0.0/16"), netip.MustParsePrefix("fd77::/64")},
	}
	var m1, m2 *Masquerade
	inNetns(t, ns, func() {
		var err error
		if m1, err = NewMasquerade(cfg); err != nil {
			t.Fatal(err)
		}
	})
	if m1.Table() != "roam_roamt0" {
		t.Errorf("Table() = %q", m1.Table())
	}
	out := nsRun(t, ns, "nft", "list", "table", "inet", "roam_roamt0")
	for _, want := range []string{
		"type nat hook postrouting priority srcnat",
		`ip saddr 10.77.0.0/16 oifname != "roamt0"`,
		`ip6 saddr fd77::/64 oifname != "roamt0"`,
		"masquerade",
		"type filter hook forward priority filter; policy accept;",
		`iifname "roamt0"`,
		`oifname "roamt0" ct state established,related`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	// A second NewMasquerade (as after a crash) replaces the table.
	cfg.Egress = "eth9"
	inNetns(t, ns, func() {
		var err error
		if m2, err = NewMasquerade(cfg); err != nil {
			t.Fatal(err)
		}
	})
	out = nsRun(t, ns, "nft", "list", "table", "inet", "roam_roamt0")
	if n := strings.Count(out, "masquerade"); n != 2 {
		t.Errorf("%d masquerade rules after replacing, want 2:\n%s", n, out)
	}
	if !strings.Contains(out, `oifname "eth9"`) {
		t.Errorf("replacement table lacks the egress match:\n%s", out)
	}
	if n := strings.Count(nsRun(t, ns, "nft", "list", "tables"), "roam_roamt0"); n != 1 {
		t.Errorf("%d tables named roam_roamt0, want 1", n)
	}

	// Close deletes it (from any goroutine and namespace) and is idempotent;
	// the stale object's Close does not fail on the missing table.
	for _, m := range []*Masquerade{m2, m2, m1} {
		if err := m.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if out := nsRun(t, ns, "nft", "list", "tables"); strings.Contains(out, "roam_") {
		t.Fatalf("table left after Close:\n%s", out)
	}
}

func TestMasqueradeBadConfig(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() {
		if _, err := NewMasquerade(MasqueradeConfig{TunName: "roamt0"}); err == nil || !strings.Contains(err.Error(), "Pools") {
			t.Fatalf("NewMasquerade without pools = %v, want error naming Pools", err)
		}
	})
}

// TestMasqueradeForwards sends packets from pool addresses through a real TUN
// out of a veth into a second namespace, which has no route back to the pool:
// its replies only arrive if the source was masqueraded.
func TestMasqueradeForwards(t *testing.T) {
	srv, inet := newNetns(t), newNetns(t)
	pools := []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24"), netip.MustParsePrefix("fd77::/64")}
	var dev Device
	inNetns(t, srv, func() {
		var name string
		dev, name = mustCreate(t, "roamt0", 1400)
		if err := ConfigureLink(name, []netip.Prefix{
			netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("fd77::1/64"),
		}, 0); err != nil {
			t.Fatal(err)
		}
		addVethPair(t, "roamt-a", "roamt-b", inet,
			[]netip.Prefix{netip.MustParsePrefix("192.168.99.1/24"), netip.MustParsePrefix("fd99::1/64")},
			[]netip.Prefix{netip.MustParsePrefix("192.168.99.2/24"), netip.MustParsePrefix("fd99::2/64")})
		restore, err := EnableForwarding()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { restore() })
		m, err := NewMasquerade(MasqueradeConfig{TunName: name, Pools: pools, Egress: "roamt-a"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
	})
	inNetns(t, inet, func() {
		for _, addr := range []string{"192.168.99.2:7", "[fd99::2]:7"} {
			whoamiServer(t, addr)
		}
	})
	pkts := startReader(dev)
	tests := []struct {
		client, server netip.AddrPort
		wantSeen       string // the source the server saw
	}{
		{netip.MustParseAddrPort("10.77.0.5:5555"), netip.MustParseAddrPort("192.168.99.2:7"), "192.168.99.1:"},
		{netip.MustParseAddrPort("[fd77::5]:5555"), netip.MustParseAddrPort("[fd99::2]:7"), "[fd99::1]:"},
	}
	for _, tt := range tests {
		writePacket(t, dev, buildUDP(tt.client, tt.server, []byte("who am i")))
		u := waitUDP(t, pkts, tt.client)
		if u.src != tt.server || !strings.HasPrefix(string(u.payload), tt.wantSeen) {
			t.Errorf("reply from %v: server saw %q; want from %v, seen as %s*", u.src, u.payload, tt.server, tt.wantSeen)
		}
	}
}

// whoamiServer answers each UDP datagram with the sender's address, on a
// socket created in the current namespace, until the test ends.
func whoamiServer(t *testing.T, addr string) {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo([]byte(from.String()), from)
		}
	}()
}

func TestPrefixMask(t *testing.T) {
	tests := []struct {
		p    string
		want []byte
	}{
		{"10.0.0.0/8", []byte{255, 0, 0, 0}},
		{"10.77.0.0/17", []byte{255, 255, 128, 0}},
		{"0.0.0.0/0", []byte{0, 0, 0, 0}},
		{"fd77::/20", []byte{255, 255, 240, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.p, func(t *testing.T) {
			if got := prefixMask(netip.MustParsePrefix(tt.p)); !bytes.Equal(got, tt.want) {
				t.Errorf("prefixMask(%s) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}
