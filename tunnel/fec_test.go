//go:build linux

package tunnel

import (
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamvpn/roam/tunnel/fec"
)

// lossyRelay forwards UDP between one client and the server on loopback,
// dropping each datagram with probability loss, and counts FEC frames.
type lossyRelay struct {
	addr              string
	back              *net.UDPConn // the client's address as the server sees it
	dropped, fecFrame atomic.Uint64
}

func startLossyRelay(t *testing.T, upstream string, loss float64) *lossyRelay {
	t.Helper()
	up, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		t.Fatal(err)
	}
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { front.Close(); back.Close() })
	for _, c := range []*net.UDPConn{front, back} {
		c.SetReadBuffer(8 << 20)
	}
	r := &lossyRelay{addr: front.LocalAddr().String(), back: back}
	var mu sync.Mutex
	rng := mrand.New(mrand.NewPCG(3, 4))
	var client *net.UDPAddr
	drop := func(b byte) bool {
		if fec.IsFEC(b) {
			r.fecFrame.Add(1)
		}
		mu.Lock()
		defer mu.Unlock()
		if rng.Float64() < loss {
			r.dropped.Add(1)
			return true
		}
		return false
	}
	go func() {
		b := make([]byte, 2048)
		for {
			n, a, err := front.ReadFromUDP(b)
			if err != nil {
				return
			}
			mu.Lock()
			client = a
			mu.Unlock()
			if n > 0 && !drop(b[0]) {
				back.WriteToUDP(b[:n], up)
			}
		}
	}()
	go func() {
		b := make([]byte, 2048)
		for {
			n, _, err := back.ReadFromUDP(b)
			if err != nil {
				return
			}
			mu.Lock()
			a := client
			mu.Unlock()
			if n > 0 && a != nil && !drop(b[0]) {
				front.WriteToUDP(b[:n], a)
			}
		}
	}()
	return r
}

// TestFECEndToEnd: a client with --fec 16:4 through a relay dropping 2 %
// each way negotiates FEC with the server, the tunnel carries TCP byte
// exact, and both ends rebuilt lost packets.
func TestFECEndToEnd(t *testing.T) {
	ts := startTestServer(t, nil)
	relay := startLossyRelay(t, ts.addr, 0.02)
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		c.Server = relay.addr
		c.FEC = fec.Policy{K: 16, M: 4}
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	tcpThroughTunnel(t, tc, 4<<20)
	cs, on := tc.client.FECStats()
	ss, son := ts.srv.FECStats()
	t.Logf("relay dropped %d; client %+v; server %+v", relay.dropped.Load(), cs, ss)
	if !on || !son {
		t.Fatalf("FEC not on (client %v, server %v)", on, son)
	}
	if cs.Recovered == 0 || ss.Recovered == 0 || ss.Peers != 1 {
		t.Fatalf("recovered: client %d, server %d; server peers %d", cs.Recovered, ss.Recovered, ss.Peers)
	}
	if st := tc.client.Status(); st.FEC == nil || !st.FEC.Active || st.FEC.Parity != "16:4" {
		t.Fatalf("client status FEC %+v", st.FEC)
	}
	if st := ts.srv.Status(); st.FEC == nil || !st.FEC.Active {
		t.Fatalf("server status FEC %+v", st.FEC)
	}
}

// TestFECServerDisabled: a server with DisableFEC does not answer the
// client's FEC header; the client stays plain QUIC and the tunnel works.
func TestFECServerDisabled(t *testing.T) {
	ts := startTestServerWith(t, testServerOpts{disableFEC: true})
	relay := startLossyRelay(t, ts.addr, 0)
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		c.Server = relay.addr
		c.FEC = fec.Policy{K: fec.AutoK, Auto: true}
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	tcpThroughTunnel(t, tc, 256<<10)
	if cs, on := tc.client.FECStats(); on || cs.DataFrames != 0 {
		t.Fatalf("client FEC on %v, stats %+v", on, cs)
	}
	if n := relay.fecFrame.Load(); n != 0 {
		t.Fatalf("%d FEC frames on the wire", n)
	}
	if st := ts.srv.Status(); st.FEC != nil {
		t.Fatalf("server status FEC %+v with DisableFEC", st.FEC)
	}
}

// TestFECPlainClient: a client without FEC against a server with it gets
// plain QUIC only.
func TestFECPlainClient(t *testing.T) {
	ts := startTestServer(t, nil)
	relay := startLossyRelay(t, ts.addr, 0)
	tc, err := startTestClient(t, ts, func(c *ClientConfig) { c.Server = relay.addr })
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	tcpThroughTunnel(t, tc, 256<<10)
	if n := relay.fecFrame.Load(); n != 0 {
		t.Fatalf("%d FEC frames on the wire", n)
	}
	if ss, _ := ts.srv.FECStats(); ss.Peers != 0 || ss.DataFrames != 0 {
		t.Fatalf("server FEC stats %+v", ss)
	}
	if st := tc.client.Status(); st.FEC != nil {
		t.Fatalf("client status FEC %+v with FEC off", st.FEC)
	}
}

// newestFECConn returns the FEC wrapper of the socket c's link opened last.
func newestFECConn(c *Client) *fec.Conn {
	l := c.sup.Load().cur.Load()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fecs[len(l.fecs)-1]
}

// TestFECSpoofedFramesPlainClient: valid FEC frames sent from a plain
// client's address by someone else (spoofed: here from the relay's socket
// toward the server, which is that address) give the server FEC state for
// the address, but the server answers the client's connection with plain
// QUIC still (it negotiated no FEC), and the tunnel keeps working.
func TestFECSpoofedFramesPlainClient(t *testing.T) {
	ts := startTestServer(t, nil)
	relay := startLossyRelay(t, ts.addr, 0)
	tc, err := startTestClient(t, ts, func(c *ClientConfig) { c.Server = relay.addr })
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	tcpThroughTunnel(t, tc, 64<<10)
	saddr, err := net.ResolveUDPAddr("udp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	enc := fec.NewEncoder(fec.Policy{K: 4, M: 1}, 1)
	for i := range 4 {
		pkt := make([]byte, 60)
		pkt[0], pkt[1] = 0x40, byte(i)
		f, full := enc.AppendData(nil, pkt, time.Now())
		relay.back.WriteToUDP(f, saddr)
		if full {
			p, n, l := enc.AppendParity(nil)
			for j := range n {
				relay.back.WriteToUDP(p[j*l:(j+1)*l], saddr)
			}
		}
	}
	relay.back.WriteToUDP(fec.AppendReport(nil, 16, 4, 4, 0), saddr)
	waitForCond(t, "the server to decode the spoofed frames", 10*time.Second, func() bool {
		ss, _ := ts.srv.FECStats()
		return ss.Peers == 1 && ss.Received >= 4
	})
	tcpThroughTunnel(t, tc, 256<<10)
	if n := relay.fecFrame.Load(); n != 0 {
		t.Fatalf("%d FEC frames through the relay", n)
	}
	if ss, _ := ts.srv.FECStats(); ss.Sending != 0 || ss.DataFrames != 0 {
		t.Fatalf("server FEC stats %+v", ss)
	}
}

// TestFECMigrationAndReconnect: after migrations (new sockets) and a
// reconnect (a new connection), the client still frames from the first
// packet of each new path, the server answers each new address with FEC
// (and only the connection's current one), and the tunnel works
// throughout.
func TestFECMigrationAndReconnect(t *testing.T) {
	ts := startTestServer(t, nil)
	mon := &fakeMonitor{changes: make(chan struct{}, 1), local: netip.MustParseAddr("127.0.0.1"), ifindex: 1}
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		c.Monitor = mon
		c.FEC = fec.Policy{K: 8, M: 2}
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	gw := netip.MustParseAddr("100.96.0.1")
	pingOnce(t, tc.net, gw)
	for i := 1; i < maxLinkSockets; i++ {
		mon.set("127.0.0."+strconv.Itoa(i+1), i+1, false)
		waitForCond(t, "a migration", 10*time.Second, func() bool { return tc.client.migrations.Load() == uint64(i) })
		pingOnce(t, tc.net, gw)
		if ss, _ := ts.srv.FECStats(); i <= 2 && ss.Peers < i+1 {
			t.Fatalf("after migration %d the server has FEC state for %d addresses", i, ss.Peers)
		}
		// The server frames toward the new path once quic-go has moved
		// the connection there: the new socket decodes its frames.
		fc := newestFECConn(tc.client)
		waitForCond(t, "FEC frames on the new path", 10*time.Second, func() bool {
			pingOnce(t, tc.net, gw)
			return fc.Stats().Received > 0
		})
		if ss, _ := ts.srv.FECStats(); ss.Sending != 1 {
			t.Fatalf("after migration %d the server frames toward %d addresses", i, ss.Sending)
		}
	}
	// One more socket than a connection may hold: the client reconnects.
	last := maxLinkSockets + 1
	mon.set("127.0.0."+strconv.Itoa(last), last, false)
	waitForCond(t, "a reconnect", 10*time.Second, func() bool { return tc.client.reconnects.Load() == 1 })
	pingOnce(t, tc.net, gw)
	// The old connection is gone: only the new one's address is framed to.
	waitForCond(t, "the server to frame toward one address", 10*time.Second, func() bool {
		ss, _ := ts.srv.FECStats()
		return ss.Sending == 1
	})
	cs, on := tc.client.FECStats()
	if !on || cs.DataFrames == 0 || cs.Received == 0 {
		t.Fatalf("after the reconnect: FEC on %v, client %+v", on, cs)
	}
	if ss, _ := ts.srv.FECStats(); ss.Malformed != 0 || ss.NoPeer != 0 {
		t.Fatalf("server dropped frames: %+v", ss)
	}
}
