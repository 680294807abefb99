package tunnel

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/tun"
	"github.com/roamvpn/roam/tunnel/addrpool"
)

// TestNetnsIdentityPolicy: a token whose identity allows one inet host
// (10.231.2.2/32) and two ports (TCP 8080, UDP 7007) reaches exactly that,
// in packet mode and in flow mode, with the real client binary, a real
// TUN and kernel NAT on the server (run in-process, in the server
// namespace, so that the test can give it that identity). Everything
// else is refused: the client gets only that route, and what a client
// sends outside it anyway (raw datagrams and flow requests) is dropped and
// counted, or answered destination_ip_prohibited, by the server.
func TestNetnsIdentityPolicy(t *testing.T) {
	requireRoot(t, "ip", "ping", "nft", "sysctl", "go")
	bin, err := buildRoam()
	if err != nil {
		t.Fatal(err)
	}
	tp := newTopo(t)
	// A second inet address and an IPv6 one the identity does not allow.
	run(t, "ip", "-n", tp.i, "addr", "add", "10.231.2.3/24", "dev", "eth-s")
	run(t, "ip", "netns", "exec", tp.s, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

	// Inet services: TCP on 8080 and 8081 answer "hello PORT"; UDP on
	// 7007 and 7008 echo and record what they got.
	udpGot := make(chan string, 100)
	tp.in(tp.i, func() {
		for _, port := range []string{"8080", "8081"} {
			ln, err := net.Listen("tcp", ":"+port)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					fmt.Fprintf(c, "hello %s\n", port)
					c.Close()
				}
			}()
		}
		for _, port := range []string{"7007", "7008"} {
			pc, err := net.ListenPacket("udp", ":"+port)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 2000)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					udpGot <- port + " " + string(buf[:n])
					pc.WriteTo(buf[:n], from)
				}
			}()
		}
	})

	// The server, in-process with the test's identity for testToken.
	inet := netip.MustParseAddr("10.231.2.2")
	ta := testAuth{testToken: {User: "erin", Routes: []netip.Prefix{netip.PrefixFrom(inet, 32)},
		Ports: []auth.PortRange{{Lo: 8080, Hi: 8080}, {Lo: 7007, Hi: 7007}}}}
	cert, _, err := auth.LoadOrCreateCert(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pinStr := auth.Pin(cert.Certificate[0])
	pin, err := auth.ParsePin(pinStr)
	if err != nil {
		t.Fatal(err)
	}
	pool4 := must(addrpool.New(netip.MustParsePrefix("100.96.0.0/24")))
	pool6 := must(addrpool.New(netip.MustParsePrefix("fd00:96::/64")))
	var srv *Server
	var pc net.PacketConn
	tp.in(tp.s, func() {
		dev, name, err := tun.Create("roamp0", TunnelMTU)
		if err != nil {
			t.Fatal(err)
		}
		gw4 := netip.PrefixFrom(pool4.Gateway(), pool4.Prefix().Bits())
		gw6 := netip.PrefixFrom(pool6.Gateway(), pool6.Prefix().Bits())
		if err := tun.ConfigureLink(name, []netip.Prefix{gw4, gw6}, TunnelMTU); err != nil {
			dev.Close()
			t.Fatal(err)
		}
		nat, err := tun.NewMasquerade(tun.MasqueradeConfig{TunName: name, Pools: []netip.Prefix{pool4.Prefix(), pool6.Prefix()}})
		if err != nil {
			dev.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() { tp.in(tp.s, func() { nat.Close() }) })
		if srv, err = NewServer(ServerConfig{TLS: tlsConfigFor(cert), Auth: ta, Pool4: pool4, Pool6: pool6,
			Device: dev, DisableWeb: true, Logger: testLogger(t)}); err != nil {
			dev.Close()
			t.Fatal(err)
		}
		if pc, err = net.ListenPacket("udp", "10.231.1.1:4433"); err != nil {
			t.Fatal(err)
		}
	})
	// Flows are dialed from the server's namespace, not from whichever
	// thread runs the dial.
	srv.dialer.Dial = dialInNetns(tp.s)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
		pc.Close()
	})
	<-srv.Ready()
	st := srv.Stats()

	for _, mode := range []string{"packet", "flow"} {
		t.Run(mode, func(t *testing.T) {
			cli := tp.start(tp.c, bin, "client", "--server", "10.231.1.1:4433", "--token", testToken, "--pin", pinStr, "--mode", mode)
			defer cli.stop(t)
			waitFor(t, "the client's tunnel", 10*time.Second, func() bool {
				out, _ := exec.Command("ip", "-n", tp.c, "-o", "addr", "show", "dev", "roam0").Output()
				return strings.Contains(string(out), "100.96.") && strings.Contains(cli.out.String(), "tunnel up")
			})
			// Only the identity's route goes into the tunnel.
			routes := run(t, "ip", "-n", tp.c, "route", "show", "table", "all", "dev", "roam0")
			if !strings.Contains(routes, "10.231.2.2") || strings.Contains(routes, "default") || strings.Contains(routes, "0.0.0.0/0") {
				t.Fatalf("client routes through the tunnel:\n%s", routes)
			}
			t.Run("allowed", func(t *testing.T) {
				run(t, "ip", "netns", "exec", tp.c, "ping", "-c", "2", "-i", "0.2", "-W", "3", "10.231.2.2")
				if got := tcpHello(t, tp, "10.231.2.2:8080"); got != "hello 8080" {
					t.Fatalf("TCP 8080: %q", got)
				}
				var c net.Conn
				tp.in(tp.c, func() { c, err = net.Dial("udp", "10.231.2.2:7007") })
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Write([]byte("udp " + mode))
				buf := make([]byte, 100)
				if n, err := c.Read(buf); err != nil || string(buf[:n]) != "udp "+mode {
					t.Fatalf("UDP 7007 echo: %q %v", buf[:n], err)
				}
				if got := <-udpGot; got != "7007 udp "+mode {
					t.Fatalf("inet got %q", got)
				}
			})
			t.Run("refused", func(t *testing.T) {
				// The client has no route for the rest; the port is on the
				// allowed host, so the server refuses it (packet mode: the
				// SYN is dropped; flow mode: the flow is prohibited).
				if got := tcpHello(t, tp, "10.231.2.2:8081"); got != "" {
					t.Fatalf("TCP 8081 through the tunnel: %q", got)
				}
				if got := tcpHello(t, tp, "10.231.2.3:8080"); got != "" {
					t.Fatalf("TCP to 10.231.2.3: %q", got)
				}
			})
		})
	}

	t.Run("server-enforced", func(t *testing.T) {
		// A client that ignores the advertisement: raw datagrams and flow
		// requests outside the identity's policy.
		var rpc net.PacketConn
		tp.in(tp.c, func() { rpc, err = net.ListenPacket("udp", "10.231.1.2:0") })
		if err != nil {
			t.Fatal(err)
		}
		l, err := linkWithToken(rpc, "10.231.1.1:4433", pin, testToken)
		if err != nil {
			t.Fatal(err)
		}
		defer l.close("test over")
		for len(udpGot) > 0 {
			<-udpGot
		}
		before := st.DropPolicy.Load()
		sendUDP(t, l, netip.MustParseAddr("10.231.2.3"), 7007, "other host")
		sendUDP(t, l, netip.MustParseAddr("fd31:2::2"), 7007, "ipv6")
		sendUDP(t, l, inet, 7008, "other port")
		sendUDP(t, l, inet, 7007, "allowed")
		select {
		case got := <-udpGot:
			if got != "7007 allowed" {
				t.Fatalf("inet received %q", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the allowed datagram did not arrive")
		}
		select {
		case got := <-udpGot:
			t.Fatalf("inet received %q", got)
		case <-time.After(500 * time.Millisecond):
		}
		if n := st.DropPolicy.Load() - before; n != 3 {
			t.Fatalf("DropPolicy grew by %d, want 3", n)
		}
		for _, tt := range []struct {
			authority string
			status    int
		}{
			{"10.231.2.2:8080", 200},
			{"10.231.2.2:8081", 502},
			{"10.231.2.3:8080", 502},
			{"[fd31:2::2]:8080", 502},
		} {
			status, ps := connectFlow(t, l, tt.authority, testToken)
			if status != tt.status || (status == 502 && !strings.Contains(ps, "destination_ip_prohibited")) {
				t.Errorf("flow to %s: HTTP %d %q, want %d (prohibited)", tt.authority, status, ps, tt.status)
			}
		}
	})
}

// tcpHello dials addr from the client namespace and returns the line the
// inet service answers, or "" if the connection fails within 3 s.
func tcpHello(t *testing.T, tp *topo, addr string) string {
	t.Helper()
	var c net.Conn
	var err error
	tp.in(tp.c, func() { c, err = net.DialTimeout("tcp", addr, 3*time.Second) })
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

// dialInNetns returns a flow dialer whose sockets are created in network
// namespace ns (a goroutine locked to a thread that switched to it).
func dialInNetns(ns string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := netns.Get()
			if err != nil {
				ch <- result{nil, err}
				return // the locked thread ends with the goroutine
			}
			defer orig.Close()
			h, err := netns.GetFromName(ns)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ch <- result{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, address)
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread() // else the thread, still in ns, dies with the goroutine
			}
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}
