package tun

import (
	"context"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// setupClientTun creates roamt0 in the current namespace with a /32 and a
// /128, up.
func setupClientTun(t *testing.T) (Device, string) {
	t.Helper()
	dev, name := mustCreate(t, "roamt0", 1400)
	if err := ConfigureLink(name, []netip.Prefix{
		netip.MustParsePrefix("10.99.0.2/32"), netip.MustParsePrefix("fd00:99::2/128"),
	}, 0); err != nil {
		t.Fatal(err)
	}
	return dev, name
}

func TestRoutingInstallClose(t *testing.T) {
	needTool(t, "ip")
	needTool(t, "nft")
	ns := newNetns(t)
	var r1, r2 *Routing
	cfg := RoutingConfig{
		TunName: "roamt0",
		Routes:  []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"), netip.MustParsePrefix("10.1.2.3/8")},
	}
	inNetns(t, ns, func() {
		setupClientTun(t)
		writeSysctl(t, sysctlSrcValidMark, "0")
		var err error
		if r1, err = InstallRouting(cfg); err != nil {
			t.Fatal(err)
		}
		if v := readSysctl(t, sysctlSrcValidMark); v != "1" {
			t.Errorf("src_valid_mark = %s, want 1", v)
		}
		// Again, as after a crash: the stale rules and routes are replaced.
		if r2, err = InstallRouting(cfg); err != nil {
			t.Fatalf("second InstallRouting: %v", err)
		}
	})
	for _, fam := range []string{"-4", "-6"} {
		rules := nsRun(t, ns, "ip", fam, "rule", "show")
		for _, want := range []string{
			"5260:\tfrom all lookup main suppress_prefixlength 0",
			"5261:\tnot from all fwmark 0x526f lookup 21103",
		} {
			if n := strings.Count(rules, want); n != 1 {
				t.Errorf("ip %s rule: %d × %q, want 1:\n%s", fam, n, want, rules)
			}
		}
	}
	if got := nsRun(t, ns, "ip", "-4", "route", "show", "table", "21103"); !strings.Contains(got, "default dev roamt0") ||
		!strings.Contains(got, "10.0.0.0/8 dev roamt0") || strings.Count(got, "\n") != 2 {
		t.Errorf("ip -4 route show table 21103:\n%s", got)
	}
	if got := nsRun(t, ns, "ip", "-6", "route", "show", "table", "21103"); !strings.Contains(got, "default dev roamt0") || strings.Count(got, "\n") != 1 {
		t.Errorf("ip -6 route show table 21103:\n%s", got)
	}
	mark := nsRun(t, ns, "nft", "list", "table", "inet", "roam_mark_roamt0")
	for _, want := range []string{
		"type filter hook prerouting priority mangle",
		"meta l4proto udp ct mark 0x0000526f meta mark set ct mark",
		"type filter hook postrouting priority mangle",
		"meta l4proto udp meta mark 0x0000526f ct mark set meta mark",
	} {
		if !strings.Contains(mark, want) {
			t.Errorf("reply-mark table lacks %q:\n%s", want, mark)
		}
	}

	for _, r := range []*Routing{r2, r2, r1} {
		if err := r.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		if rules := nsRun(t, ns, "ip", fam, "rule", "show"); strings.Contains(rules, "526") {
			t.Errorf("rules left after Close:\n%s", rules)
		}
		if routes := nsRun(t, ns, "ip", fam, "route", "show", "table", "21103"); routes != "" {
			t.Errorf("routes left after Close:\n%s", routes)
		}
	}
	if out := nsRun(t, ns, "nft", "list", "tables"); strings.Contains(out, "roam_") {
		t.Errorf("nftables table left after Close:\n%s", out)
	}
	inNetns(t, ns, func() {
		if v := readSysctl(t, sysctlSrcValidMark); v != "0" {
			t.Errorf("src_valid_mark = %s after Close, want 0", v)
		}
	})
}

func TestRoutingIPv4OnlyCustom(t *testing.T) {
	needTool(t, "ip")
	ns := newNetns(t)
	var r *Routing
	inNetns(t, ns, func() {
		setupClientTun(t)
		var err error
		r, err = InstallRouting(RoutingConfig{
			TunName: "roamt0", Routes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			Table: 1000, Mark: 0x99, Priority: 100, NoReplyMark: true,
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	defer r.Close()
	if rules := nsRun(t, ns, "ip", "-4", "rule", "show"); !strings.Contains(rules, "100:\tfrom all lookup main suppress_prefixlength 0") ||
		!strings.Contains(rules, "101:\tnot from all fwmark 0x99 lookup 1000") {
		t.Errorf("ip -4 rule:\n%s", rules)
	}
	if rules := nsRun(t, ns, "ip", "-6", "rule", "show"); strings.Contains(rules, "lookup 1000") || strings.Contains(rules, "100:") {
		t.Errorf("IPv6 rules without IPv6 routes:\n%s", rules)
	}
	if out := nsRun(t, ns, "nft", "list", "tables"); strings.Contains(out, "roam_mark") {
		t.Errorf("reply-mark table despite NoReplyMark:\n%s", out)
	}
}

// TestRoutingRemovesStaleRedirectTable: InstallRouting deletes the
// system stack's redirect table that a crashed run left for the TUN
// (whatever stack the new run uses, the table would send the TCP routed
// into the TUN to a dead loopback port), and only that table.
func TestRoutingRemovesStaleRedirectTable(t *testing.T) {
	needTool(t, "ip")
	needTool(t, "nft")
	ns := newNetns(t)
	stale := RedirectTableName("roamt0")
	for _, cmd := range [][]string{
		{"nft", "add", "table", "inet", stale},
		{"nft", "add", "chain", "inet", stale, "output", "{ type nat hook output priority -100; policy accept; }"},
		{"nft", "add", "rule", "inet", stale, "output", "oifname", "roamt0", "tcp", "flags", "syn", "/", "syn,ack", "redirect", "to", ":4242"},
		{"nft", "add", "table", "inet", RedirectTableName("roamt1")}, // another TUN's
	} {
		nsRun(t, ns, cmd...)
	}
	var r *Routing
	inNetns(t, ns, func() {
		setupClientTun(t)
		var err error
		r, err = InstallRouting(RoutingConfig{
			TunName: "roamt0", Routes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, NoReplyMark: true,
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	defer r.Close()
	out := nsRun(t, ns, "nft", "list", "tables")
	if strings.Contains(out, stale+"\n") {
		t.Errorf("the stale table %s is still there:\n%s", stale, out)
	}
	if !strings.Contains(out, RedirectTableName("roamt1")) {
		t.Errorf("InstallRouting deleted another TUN's table %s:\n%s", RedirectTableName("roamt1"), out)
	}
}

func TestRoutingBadConfig(t *testing.T) {
	ns := newNetns(t)
	v4 := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	tests := []struct {
		name string
		cfg  RoutingConfig
		want string
	}{
		{"no tun", RoutingConfig{Routes: v4}, "TunName is empty"},
		{"no routes", RoutingConfig{TunName: "roamt0"}, "Routes is empty"},
		{"main table", RoutingConfig{TunName: "roamt0", Routes: v4, Table: 254}, "reserved"},
		{"priority after main", RoutingConfig{TunName: "roamt0", Routes: v4, Priority: 32765}, "Priority 32765"},
		{"invalid route", RoutingConfig{TunName: "roamt0", Routes: []netip.Prefix{{}}}, "Routes[0]"},
		{"missing link", RoutingConfig{TunName: "roamt9", Routes: v4}, "roamt9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t, ns, func() {
				r, err := InstallRouting(tt.cfg)
				if err == nil {
					r.Close()
				}
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("InstallRouting = %v, want error containing %q", err, tt.want)
				}
			})
		})
	}
}

// TestRoutingFullTunnel checks the routing decisions in a client namespace
// with strict reverse-path filtering, connected by a veth to a server
// namespace: unmarked traffic enters the TUN, marked traffic and the LAN
// bypass it, and replies to the marked socket get through rp_filter=1.
func TestRoutingFullTunnel(t *testing.T) {
	client, server := newNetns(t), newNetns(t)
	far := netip.MustParseAddrPort("203.0.113.1:7")  // beyond the default gateway
	lan := netip.MustParseAddrPort("192.168.50.2:7") // on the client's link
	inNetns(t, server, func() {
		if err := ConfigureLink("lo", []netip.Prefix{netip.MustParsePrefix("203.0.113.1/32")}, 0); err != nil {
			t.Fatal(err)
		}
	})
	var dev Device
	inNetns(t, client, func() {
		dev, _ = setupClientTun(t)
		addVethPair(t, "roamt-c", "roamt-s", server,
			[]netip.Prefix{netip.MustParsePrefix("192.168.50.1/24")},
			[]netip.Prefix{netip.MustParsePrefix("192.168.50.2/24")})
		gw := &netlink.Route{Dst: nil, Gw: net.ParseIP("192.168.50.2")}
		if err := netlink.RouteAdd(gw); err != nil {
			t.Fatalf("add default route: %v", err)
		}
		for _, p := range []string{"all", "default", "roamt-c"} {
			writeSysctl(t, "/proc/sys/net/ipv4/conf/"+p+"/rp_filter", "1")
		}
	})
	inNetns(t, server, func() {
		whoamiServer(t, far.String())
		whoamiServer(t, lan.String())
	})
	pkts := startReader(dev)

	// Without the reply mark, strict rp_filter drops the replies to the
	// marked socket (counted as IPReversePathFilter).
	inNetns(t, client, func() {
		r, err := InstallRouting(RoutingConfig{TunName: "roamt0", Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, NoReplyMark: true})
		if err != nil {
			t.Fatal(err)
		}
		before := rpFilterDrops(t)
		c := listenMarked(t)
		if _, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(far)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "an rp_filter drop", func() bool { return rpFilterDrops(t) > before })
		c.Close()
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	})

	inNetns(t, client, func() {
		r, err := InstallRouting(RoutingConfig{TunName: "roamt0", Routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()

		// Marked: out of the veth, and the reply passes rp_filter.
		c := listenMarked(t)
		defer c.Close()
		if _, err := c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(far)); err != nil {
			t.Fatal(err)
		}
		if got, _ := recvFrom(t, c); !strings.HasPrefix(string(got), "192.168.50.1:") {
			t.Errorf("marked socket: server saw %q, want 192.168.50.1:*", got)
		}

		// Unmarked, to the LAN: main's non-default route wins.
		u, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if _, err := u.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(lan)); err != nil {
			t.Fatal(err)
		}
		if got, _ := recvFrom(t, u); !strings.HasPrefix(string(got), "192.168.50.1:") {
			t.Errorf("unmarked LAN: server saw %q", got)
		}

		// Unmarked, beyond the gateway: into the TUN, from the tunnel address.
		if _, err := u.WriteTo([]byte("tunnel"), net.UDPAddrFromAddrPort(far)); err != nil {
			t.Fatal(err)
		}
		p := waitUDP(t, pkts, far)
		if p.src.Addr() != netip.MustParseAddr("10.99.0.2") || string(p.payload) != "tunnel" {
			t.Errorf("TUN got %v -> %v %q", p.src, p.dst, p.payload)
		}
	})
}

// listenMarked opens a UDP socket carrying DefaultMark in the current
// namespace.
func listenMarked(t *testing.T) net.PacketConn {
	t.Helper()
	lc := net.ListenConfig{Control: ControlMark(DefaultMark)}
	c, err := lc.ListenPacket(context.Background(), "udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var rpFilterRE = regexp.MustCompile(`\bIPReversePathFilter\b`)

// rpFilterDrops reads TcpExt IPReversePathFilter of the calling thread's
// namespace (/proc/net is the process's namespace; thread-self is ours).
func rpFilterDrops(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/net/netstat")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "TcpExt:") || !rpFilterRE.MatchString(lines[i]) {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, n := range names {
			if n == "IPReversePathFilter" && j < len(values) {
				v, _ := strconv.Atoi(values[j])
				return v
			}
		}
	}
	t.Fatal("IPReversePathFilter not found in netstat")
	return 0
}
