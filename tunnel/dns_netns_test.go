package tunnel

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamvpn/roam/tun/dns"
	"github.com/roamvpn/roam/tun/dns/dnstest"
)

// TestNetnsDNSPush runs the real roam binary in the three namespaces of
// newTopo: the server pushes DNS servers, the client (full tunnel) writes
// them into a resolv.conf the test owns (--resolv-conf, so nothing outside
// the test's temp directory is touched), a name resolves through the
// tunnel, the client namespace's "local network" resolver that the file
// listed before is never asked, and the file is back byte for byte after
// the client exits.
//
//   - userspace: --nat userspace without --dns pushes the gateway
//     addresses; the userspace NAT forwards their port 53 to a resolver on
//     the server namespace's loopback (--dns-forward).
//   - userspace-flow: the same with the client in flow mode, where DNS
//     over TCP is a flow the server dials (to the same resolver).
//   - kernel: --dns 10.231.2.2 pushes the inet host's resolver, reached
//     through the tunnel and the kernel NAT.
func TestNetnsDNSPush(t *testing.T) {
	requireRoot(t, "ip", "nft", "go")
	bin, err := buildRoam()
	if err != nil {
		t.Fatal(err)
	}
	tp := newTopo(t)
	tunnelAnswer := map[string][]netip.Addr{"inside.example": {netip.MustParseAddr("192.0.2.80"), netip.MustParseAddr("2001:db8::80")}}

	// The client's local network resolver (on the server's veth address,
	// the client's next hop), which a full tunnel must not ask.
	var lan, loop, inet *dnstest.Server
	tp.in(tp.s, func() {
		if lan, err = dnstest.Listen("10.231.1.1:53", map[string][]netip.Addr{"inside.example": {netip.MustParseAddr("198.51.100.66")}}); err != nil {
			t.Fatal(err)
		}
		if loop, err = dnstest.Listen("127.0.0.1:5353", tunnelAnswer); err != nil {
			t.Fatal(err)
		}
	})
	defer lan.Close()
	defer loop.Close()
	tp.in(tp.i, func() {
		if inet, err = dnstest.Listen("10.231.2.2:53", tunnelAnswer); err != nil {
			t.Fatal(err)
		}
	})
	defer inet.Close()

	for _, tt := range []struct {
		name     string
		args     []string
		mode     string // the client's --mode
		pushed   []string
		resolver *dnstest.Server
	}{
		{"userspace", []string{"--nat", "userspace", "--dns-forward", "127.0.0.1:5353"}, "packet", []string{"100.96.0.1", "fd00:96::1"}, loop},
		// In flow mode DNS over TCP is a flow the server dials itself
		// (ServerConfig.GatewayDNS), not a packet for the userspace NAT.
		{"userspace-flow", []string{"--nat", "userspace", "--dns-forward", "127.0.0.1:5353"}, "flow", []string{"100.96.0.1", "fd00:96::1"}, loop},
		{"kernel", []string{"--nat", "kernel", "--dns", "10.231.2.2"}, "packet", []string{"10.231.2.2"}, inet},
	} {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			tokFile := filepath.Join(state, "tokens")
			os.WriteFile(tokFile, []byte(testToken+"\n"), 0o600)
			srv := tp.start(tp.s, append([]string{bin, "server", "--listen", "10.231.1.1:4433", "--state-dir", state, "--tokens", tokFile}, tt.args...)...)
			defer srv.stop(t)
			waitFor(t, "the server's client line", 10*time.Second, func() bool { return strings.Contains(srv.out.String(), "roam client --server") })
			pin := strings.TrimSpace(string(must(os.ReadFile(filepath.Join(state, "pin")))))

			rc := filepath.Join(t.TempDir(), "resolv.conf")
			const before = "# the client's network\nnameserver 10.231.1.1\nsearch lan\n"
			if err := os.WriteFile(rc, []byte(before), 0o644); err != nil {
				t.Fatal(err)
			}
			cli := tp.start(tp.c, bin, "client", "--server", "10.231.1.1:4433", "--token", testToken, "--pin", pin, "--resolv-conf", rc, "--mode", tt.mode)
			waitFor(t, "the client's tunnel and DNS", 10*time.Second, func() bool {
				b, _ := os.ReadFile(rc)
				return strings.Contains(cli.out.String(), "tunnel up") && strings.HasPrefix(string(b), dns.Header)
			})
			managed := string(must(os.ReadFile(rc)))
			var servers []string
			for line := range strings.Lines(managed) {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "nameserver" {
					servers = append(servers, f[1])
				}
			}
			if strings.Join(servers, " ") != strings.Join(tt.pushed, " ") {
				t.Fatalf("resolv.conf lists %v, want the pushed %v:\n%s", servers, tt.pushed, managed)
			}

			// Resolve the way the host's stub resolver would: every
			// nameserver of the file, UDP and TCP, from the client
			// namespace (whose only way to those addresses is roam0).
			before0 := tt.resolver.Queries.Load()
			for _, server := range servers {
				for _, network := range []string{"udp", "tcp"} {
					t.Run(server+"/"+network, func(t *testing.T) {
						// The socket is made in the client namespace and
						// stays there; the query runs on it from anywhere.
						var c net.Conn
						var derr error
						tp.in(tp.c, func() {
							c, derr = net.DialTimeout(network, net.JoinHostPort(server, "53"), 10*time.Second)
						})
						if derr != nil {
							t.Fatal(derr)
						}
						defer c.Close()
						c.SetDeadline(time.Now().Add(10 * time.Second))
						got, err := dnstest.LookupA(c, network == "tcp", "inside.example.")
						if err != nil {
							t.Fatal(err)
						}
						if got != netip.MustParseAddr("192.0.2.80") {
							t.Fatalf("resolved %v, want 192.0.2.80 from the tunnel's resolver", got)
						}
					})
				}
			}
			if n := tt.resolver.Queries.Load() - before0; n < uint64(2*len(servers)) {
				t.Errorf("the tunnel's resolver answered %d queries, want at least %d", n, 2*len(servers))
			}
			if n := lan.Queries.Load(); n != 0 {
				t.Errorf("the local network's resolver was asked %d times", n)
			}

			cli.stop(t)
			if got := string(must(os.ReadFile(rc))); got != before {
				t.Fatalf("resolv.conf after the client exited:\n%s\nwant:\n%s", got, before)
			}
			if _, err := os.Lstat(rc + dns.BackupSuffix); !os.IsNotExist(err) {
				t.Fatalf("backup left behind: %v", err)
			}
		})
	}
}
