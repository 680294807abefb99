package tunnel

import (
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestReconnectAfterServerRestart: the server stops and a new one starts on
// the same port; the client reconnects by itself with the same addresses
// and the same device, and traffic flows again. With the same secret the
// client resumes with 0-RTT; with a new secret its ticket is refused and it
// falls back to a full handshake.
func TestReconnectAfterServerRestart(t *testing.T) {
	for _, tt := range []struct {
		name       string
		sameSecret bool
	}{
		{"same-secret", true},
		{"new-secret", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			secret := make([]byte, 32)
			rand.Read(secret)
			ts := startTestServerWith(t, testServerOpts{secret: secret})
			cert := ts.srv.cfg.TLS.Certificates[0]
			tc, err := startTestClient(t, ts, nil)
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			gw := netip.MustParseAddr("100.96.0.1")
			pingOnce(t, tc.net, gw)

			ts.stop()
			if !tt.sameSecret {
				secret = make([]byte, 32)
				rand.Read(secret)
			}
			ts2 := startTestServerWith(t, testServerOpts{addr: ts.addr, cert: cert, secret: secret})
			waitForCond(t, "the client to reconnect", 20*time.Second, func() bool { return tc.client.reconnects.Load() == 1 })
			for _, a := range tc.info.Addresses {
				if s := ts2.srv.sessionFor(a.Addr()); s == nil {
					t.Fatalf("the new server has no session for the client's address %v", a)
				}
			}
			pingOnce(t, tc.net, gw)
			if n := ts2.srv.Stats().SessionsTotal.Load(); n != 1 {
				t.Fatalf("the new server saw %d sessions, want 1", n)
			}
		})
	}
}

func waitForCond(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeMonitor is a NetworkMonitor whose path the test sets.
type fakeMonitor struct {
	changes chan struct{}
	mu      sync.Mutex
	local   netip.Addr
	ifindex int
	down    bool
}

func (m *fakeMonitor) Changes() <-chan struct{} { return m.changes }

func (m *fakeMonitor) PathTo(netip.Addr) (netip.Addr, int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return netip.Addr{}, 0, errors.New("no route")
	}
	return m.local, m.ifindex, nil
}

func (m *fakeMonitor) set(local string, ifindex int, down bool) {
	m.mu.Lock()
	m.local, m.ifindex, m.down = netip.MustParseAddr(local), ifindex, down
	m.mu.Unlock()
	m.changes <- struct{}{}
}

// TestStopWhileReconnecting: the server goes away for good; the client,
// resuming with 0-RTT, has a request waiting for the server's SETTINGS
// (quic-go v0.65+ holds an Extended CONNECT until then) when it is told
// to stop, and Run returns at once, not after the handshake timeout.
func TestStopWhileReconnecting(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	ts := startTestServerWith(t, testServerOpts{secret: secret})
	tc, err := startTestClient(t, ts, nil)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	pingOnce(t, tc.net, netip.MustParseAddr("100.96.0.1"))
	ts.stop()
	// The connection is closed by the server at once; the first attempt
	// follows within the first backoff and stalls on its request.
	time.Sleep(minBackoff + 300*time.Millisecond)
	start := time.Now()
	tc.cancel()
	select {
	case err := <-tc.done:
		tc.done <- err // for the cleanup
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Run returned %v after the cancel, want at once", d.Round(time.Millisecond))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of the cancel")
	}
}

// TestMigrateOnNetworkChange: when the monitor reports a new path, the
// client moves its connection to a new socket (AddPath, Probe, Switch) and
// the tunnel keeps working, migration after migration (a quic-go v0.64
// server allowed two per connection); the change that would open the
// connection's maxLinkSockets+1st socket reconnects instead;
// while there is no route the pump is paused (drops counted), and the same
// path coming back resumes it without a migration or reconnect.
func TestMigrateOnNetworkChange(t *testing.T) {
	ts := startTestServer(t, nil)
	tc, mon, sockets := startMigratingClient(t, ts)
	gw := netip.MustParseAddr("100.96.0.1")
	pingOnce(t, tc.net, gw)

	for i := 1; i < maxLinkSockets; i++ {
		mon.set("127.0.0."+strconv.Itoa(i+1), i+1, false)
		waitForCond(t, "a migration", 10*time.Second, func() bool { return tc.client.migrations.Load() == uint64(i) })
		pingOnce(t, tc.net, gw)
	}
	if n := sockets.Load(); n != maxLinkSockets {
		t.Fatalf("%d sockets opened, want %d (one per path)", n, maxLinkSockets)
	}
	if r := tc.client.reconnects.Load(); r != 0 {
		t.Fatalf("%d reconnects during %d migrations, want 0", r, maxLinkSockets-1)
	}
	// One more change would open one more socket: the client reconnects
	// instead, which closes the old connection's sockets.
	last := maxLinkSockets + 1
	mon.set("127.0.0."+strconv.Itoa(last), last, false)
	waitForCond(t, "a reconnect", 10*time.Second, func() bool { return tc.client.reconnects.Load() == 1 })
	pingOnce(t, tc.net, gw)

	// No route: paused; packets are dropped and counted, not sent.
	mon.set("127.0.0."+strconv.Itoa(last), last, true)
	waitForCond(t, "the pause", 10*time.Second, func() bool {
		c, err := tc.net.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(gw, 9))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		time.Sleep(20 * time.Millisecond)
		return tc.client.stats.DropNoLink.Load() > 0
	})
	// The same path is back: resumed without another migration.
	mon.set("127.0.0."+strconv.Itoa(last), last, false)
	pingOnce(t, tc.net, gw)
	if m, r := tc.client.migrations.Load(), tc.client.reconnects.Load(); m != maxLinkSockets-1 || r != 1 {
		t.Fatalf("migrations %d reconnects %d, want %d and 1", m, r, maxLinkSockets-1)
	}
}

// TestMigrateBackReusesSocket: a client moving back and forth between two
// networks takes each network's socket again instead of opening one per
// move, so one connection follows any number of such moves without
// reconnecting (quic-go v0.64 servers allowed two).
func TestMigrateBackReusesSocket(t *testing.T) {
	ts := startTestServer(t, nil)
	tc, mon, sockets := startMigratingClient(t, ts)
	gw := netip.MustParseAddr("100.96.0.1")
	pingOnce(t, tc.net, gw)
	moves := 2 * maxLinkSockets
	for i := 1; i <= moves; i++ {
		n := 1 + i%2 // 127.0.0.2, 127.0.0.1, 127.0.0.2, ...
		mon.set("127.0.0."+strconv.Itoa(n), n, false)
		waitForCond(t, "a migration", 10*time.Second, func() bool { return tc.client.migrations.Load() == uint64(i) })
		pingOnce(t, tc.net, gw)
	}
	if n := sockets.Load(); n != 2 {
		t.Fatalf("%d sockets opened for %d moves between two networks, want 2", n, moves)
	}
	if r := tc.client.reconnects.Load(); r != 0 {
		t.Fatalf("%d reconnects, want 0", r)
	}
	if n := ts.srv.Stats().SessionsTotal.Load(); n != 1 {
		t.Fatalf("the server saw %d sessions, want 1", n)
	}
}

// startMigratingClient starts a client of ts on a fake network monitor
// (at 127.0.0.1, ifindex 1) whose sockets are counted.
func startMigratingClient(t *testing.T, ts *testServer) (*testClient, *fakeMonitor, *atomic.Int32) {
	t.Helper()
	mon := &fakeMonitor{changes: make(chan struct{}, 1), local: netip.MustParseAddr("127.0.0.1"), ifindex: 1}
	sockets := new(atomic.Int32)
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		c.Monitor = mon
		c.ListenPacket = func(netip.Addr) (net.PacketConn, error) {
			sockets.Add(1)
			return net.ListenPacket("udp", "127.0.0.1:0")
		}
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return tc, mon, sockets
}

func TestLiveness(t *testing.T) {
	t0 := time.Unix(1000, 0)
	rtt := quic.ConnectionStats{SmoothedRTT: 10 * time.Millisecond}
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for _, tt := range []struct {
		name  string
		steps []struct {
			ms       int
			recv, tx uint64
		}
		stalled bool
	}{
		{"idle", []struct {
			ms       int
			recv, tx uint64
		}{{250, 0, 0}, {5000, 0, 0}, {60000, 0, 0}}, false},
		{"answered", []struct {
			ms       int
			recv, tx uint64
		}{{250, 0, 5}, {1000, 3, 9}, {2000, 4, 20}, {3000, 9, 30}}, false},
		{"sent, no answer", []struct {
			ms       int
			recv, tx uint64
		}{{250, 0, 5}, {1000, 0, 6}, {1800, 0, 6}}, true},
		{"sent after a long idle, too recent", []struct {
			ms       int
			recv, tx uint64
		}{{60000, 0, 1}, {60250, 0, 2}}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var lv liveness
			lv.reset(t0, rtt, 0)
			stalled := false
			for _, s := range tt.steps {
				cs := rtt
				cs.PacketsReceived = s.recv
				_, stalled = lv.check(at(s.ms), cs, s.tx)
			}
			if stalled != tt.stalled {
				t.Fatalf("stalled = %v, want %v", stalled, tt.stalled)
			}
		})
	}
}
