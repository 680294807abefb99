package flowstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/tuntest"
	"github.com/roamvpn/roam/tunnel/flow"
)

const (
	tcpFIN = 0x01
	tcpRST = 0x04
)

// fakeClock is a connTable clock that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// feed passes a TCP packet through t as Read (fromHost) or Write would,
// with no flow in use, and returns what t answered.
func feed(tb testing.TB, t *connTable, pkt []byte, fromHost bool) bool {
	tb.Helper()
	var p datagram.Packet
	if err := p.Decode(pkt); err != nil {
		tb.Fatal(err)
	}
	now := clock{t: t}
	if fromHost {
		return t.fromHost(pkt, &p, &now)
	}
	return t.fromTunnel(pkt, &p, &now, func(connKey) bool { return false })
}

// TestConnTable walks inbound connections through their states with a
// fake clock: dir 't' is a packet from the tunnel (peer -> host), 'h' one
// from the host (host -> peer) and 'x' a host packet of another
// connection (the ports swapped); want is whether the host's packet passes
// through (for 't', whether the packet is kept).
func TestConnTable(t *testing.T) {
	type step struct {
		after time.Duration
		dir   byte
		flags byte
		want  bool
	}
	const (
		syn    = tcpSYN
		synack = tcpSYN | tcpACK
		ack    = tcpACK
		finack = tcpFIN | tcpACK
		rst    = tcpRST
		rstack = tcpRST | tcpACK
		day    = 24 * time.Hour
	)
	tests := []struct {
		name                     string
		steps                    []step
		tracked, closed, expired uint64
		active                   int64
	}{
		{"host packet without entry goes to gVisor", []step{
			{0, 'h', syn, false}, {0, 'h', ack, false},
		}, 0, 0, 0, 0},
		{"peer's SYN, host answers", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 't', ack, true}, {0, 'h', ack, true}, {0, 'x', ack, false},
		}, 1, 0, 0, 1},
		{"SYN-only entry expires after 30 s", []step{
			{0, 't', syn, true}, {inboundSynTimeout + time.Second, 'h', synack, false},
		}, 1, 0, 1, 0},
		{"SYN retransmission refreshes", []step{
			{0, 't', syn, true}, {20 * time.Second, 't', syn, true}, {20 * time.Second, 'h', synack, true},
		}, 1, 0, 0, 1},
		{"SYN again after expiry tracks anew", []step{
			{0, 't', syn, true}, {inboundSynTimeout + time.Second, 't', syn, true}, {0, 'h', synack, true},
		}, 2, 0, 1, 1},
		{"established idle 5 days", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 't', ack, true},
			{5*day - time.Second, 'h', ack, true},
			{5*day + time.Second, 'h', ack, false},
		}, 1, 0, 1, 0},
		{"FIN both ways, then 60 s linger", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 't', ack, true},
			{0, 'h', finack, true}, {0, 't', finack, true}, {59 * time.Second, 'h', ack, true},
			{inboundCloseLinger + time.Second, 'h', ack, false},
		}, 1, 1, 0, 0},
		{"FIN from the peer first", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 't', finack, true}, {0, 'h', finack, true},
			{30 * time.Second, 't', ack, true}, {inboundCloseLinger + time.Second, 'h', ack, false},
		}, 1, 1, 0, 0},
		{"one FIN keeps the established timeout", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 't', finack, true},
			{time.Hour, 'h', ack, true}, {time.Hour, 't', ack, true},
		}, 1, 0, 0, 1},
		{"host refuses with RST", []step{
			{0, 't', syn, true}, {0, 'h', rstack, true}, {0, 'h', ack, false},
		}, 1, 1, 0, 0},
		{"RST from the peer", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 't', rst, true}, {0, 'h', ack, false},
		}, 1, 1, 0, 0},
		{"RST from the host", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 't', ack, true}, {0, 'h', rst, true}, {0, 'h', ack, false},
		}, 1, 1, 0, 0},
		{"peer reuses the 4-tuple of a closing connection", []step{
			{0, 't', syn, true}, {0, 'h', synack, true}, {0, 'h', finack, true}, {0, 't', finack, true},
			{30 * time.Second, 't', syn, true}, {0, 'h', synack, true},
			{2 * inboundCloseLinger, 'h', ack, true}, // established again: no linger
		}, 1, 0, 0, 1},
		{"tunnel packet without entry is kept", []step{
			{0, 't', ack, true}, {0, 'h', ack, false},
		}, 0, 0, 0, 0},
	}
	for _, fam := range []struct {
		name       string
		host, peer netip.AddrPort
	}{
		{"ipv4", netip.AddrPortFrom(hostAddr4, 22), netip.AddrPortFrom(remote4, 40000)},
		{"ipv6", netip.AddrPortFrom(hostAddr6, 22), netip.AddrPortFrom(remote6, 40000)},
	} {
		for _, tt := range tests {
			t.Run(fam.name+"/"+tt.name, func(t *testing.T) {
				var clock fakeClock
				tbl := newConnTable(16)
				tbl.now = clock.now
				for i, s := range tt.steps {
					clock.advance(s.after)
					var pkt []byte
					switch s.dir {
					case 't':
						pkt = buildTCP(fam.peer, fam.host, 1, 1, s.flags, nil)
					case 'h':
						pkt = buildTCP(fam.host, fam.peer, 1, 1, s.flags, nil)
					case 'x':
						pkt = buildTCP(netip.AddrPortFrom(fam.host.Addr(), fam.peer.Port()),
							netip.AddrPortFrom(fam.peer.Addr(), fam.host.Port()), 1, 1, s.flags, nil)
					}
					if got := feed(t, tbl, pkt, s.dir != 't'); got != s.want {
						t.Fatalf("step %d (%c flags %#x): got %v, want %v", i, s.dir, s.flags, got, s.want)
					}
				}
				tbl.sweep()
				if got := [...]uint64{tbl.tracked.Load(), tbl.closed.Load(), tbl.expired.Load()}; got != [...]uint64{tt.tracked, tt.closed, tt.expired} {
					t.Errorf("tracked, closed, expired = %v, want %v", got, [...]uint64{tt.tracked, tt.closed, tt.expired})
				}
				if tbl.len() != tt.active {
					t.Errorf("%d entries, want %d", tbl.len(), tt.active)
				}
				if tbl.hasPort(fam.host.Port()) != (tt.active > 0) || tbl.hasPort(fam.peer.Port()) {
					t.Errorf("port bitmap: host port %v, peer port %v; want %v, false",
						tbl.hasPort(fam.host.Port()), tbl.hasPort(fam.peer.Port()), tt.active > 0)
				}
			})
		}
	}
}

// TestConnTableBound: a full table drops new SYNs (and only SYNs) until a
// sweep frees entries; a periodic sweep on insert removes expired entries.
func TestConnTableBound(t *testing.T) {
	var clock fakeClock
	tbl := newConnTable(2)
	tbl.now = clock.now
	host := netip.AddrPortFrom(hostAddr4, 22)
	peer := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(remote4, port) }
	synFrom := func(port uint16) bool { return feed(t, tbl, buildTCP(peer(port), host, 1, 0, tcpSYN, nil), false) }
	if !synFrom(1) || !synFrom(2) {
		t.Fatal("SYNs dropped below the bound")
	}
	feed(t, tbl, buildTCP(host, peer(2), 1, 2, tcpSYN|tcpACK, nil), true) // 2 is established
	if synFrom(3) {
		t.Fatal("SYN kept with the table full")
	}
	if !feed(t, tbl, buildTCP(peer(2), host, 2, 0, tcpACK, nil), false) || !feed(t, tbl, buildTCP(host, peer(2), 1, 2, tcpACK, nil), true) {
		t.Fatal("a full table affects tracked connections")
	}
	if tbl.dropped.Load() != 1 || tbl.len() != 2 {
		t.Fatalf("dropped %d, %d entries; want 1, 2", tbl.dropped.Load(), tbl.len())
	}
	// Half a second later the table is still full of live entries, and it
	// is not swept again: still dropped.
	clock.advance(500 * time.Millisecond)
	if synFrom(4) {
		t.Fatal("SYN kept with the table full")
	}
	// Entry 1 (SYN only) expires; the next SYN sweeps and takes its place.
	clock.advance(inboundSynTimeout + time.Second)
	if !synFrom(5) {
		t.Fatal("SYN dropped although an entry had expired")
	}
	if tbl.expired.Load() != 1 || tbl.len() != 2 || tbl.dropped.Load() != 2 {
		t.Fatalf("expired %d, %d entries, dropped %d; want 1, 2, 2", tbl.expired.Load(), tbl.len(), tbl.dropped.Load())
	}

	// Periodic sweep: with room in the table, a SYN after sweepEvery
	// still removes what expired meanwhile.
	tbl = newConnTable(100)
	tbl.now = clock.now
	synFrom(1)
	synFrom(2)
	clock.advance(inboundSynTimeout + time.Second)
	synFrom(3)
	if tbl.len() != 1 || tbl.expired.Load() != 2 {
		t.Fatalf("after the periodic sweep: %d entries, %d expired; want 1, 2", tbl.len(), tbl.expired.Load())
	}
}

// TestInboundSynAck: a SYN from the tunnel side reaches the host, whose
// SYN-ACK comes back out of Read as a packet instead of being terminated
// by gVisor; a RST from the peer ends the entry.
func TestInboundSynAck(t *testing.T) {
	for _, tt := range []struct {
		name       string
		host, peer netip.AddrPort
	}{
		{"ipv4", netip.AddrPortFrom(hostAddr4, 22), netip.AddrPortFrom(remote4, 40000)},
		{"ipv6", netip.AddrPortFrom(hostAddr6, 22), netip.AddrPortFrom(remote6, 40000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
				t.Error("Connect called for an inbound connection")
				return nil, &flow.Error{Kind: flow.Refused}
			}})
			ln, err := h.hnet.ListenTCPAddrPort(tt.host)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			const iss = 0x01020304
			if n, err := h.stack.Write([][]byte{buildTCP(tt.peer, tt.host, iss, 0, tcpSYN, nil)}, 0); n != 1 || err != nil {
				t.Fatalf("Write SYN = %d, %v", n, err)
			}
			var p []byte
			select {
			case p = <-h.nonTCP:
			case <-time.After(30 * time.Second):
				t.Fatal("no SYN-ACK from Read")
			}
			var pkt datagram.Packet
			if err := pkt.Decode(p); err != nil || pkt.Proto != protoTCP {
				t.Fatalf("Read returned %x (%v), want the host's SYN-ACK", p, err)
			}
			th := tcpHeader(p, &pkt)
			if th == nil {
				t.Fatalf("Read returned %x, want the host's SYN-ACK", p)
			}
			if k, flags := tcpKey(p, &pkt, th, true), th[13]; k != keyOf(tt.host, tt.peer) || flags != tcpSYN|tcpACK {
				t.Fatalf("Read returned flags %#x of %+v, want a SYN-ACK %v -> %v", flags, k, tt.host, tt.peer)
			}
			if ack := binary.BigEndian.Uint32(p[pkt.HdrLen+8:]); ack != iss+1 {
				t.Errorf("SYN-ACK acknowledges %#x, want %#x", ack, iss+1)
			}
			st := h.stack.Stats()
			if st.PacketsDiverted != 0 || st.PacketsInbound != 1 || st.InboundTracked != 1 || st.InboundActive != 1 {
				t.Errorf("stats %+v; want nothing diverted, 1 inbound packet, 1 inbound connection", st)
			}
			h.stack.Write([][]byte{buildTCP(tt.peer, tt.host, iss+1, 0, tcpRST, nil)}, 0)
			if st := h.stack.Stats(); st.InboundActive != 0 || st.InboundClosed != 1 {
				t.Errorf("after the peer's RST: stats %+v; want no entry, 1 closed", st)
			}
			if st := h.stack.Stats(); st.FlowsOpened+st.FlowsRefused+st.FlowsFailed != 0 {
				t.Errorf("stats %+v: a flow was attempted", st)
			}
		})
	}
}

// TestInboundTransfer: TCP connections from the tunnel side (a gVisor
// peer) to a listener of the host carry 1 MB each way byte-exact, over
// IPv4 and IPv6, while flows the host opens still go through gVisor; when
// they close (FIN both ways) the entries end after the linger.
func TestInboundTransfer(t *testing.T) {
	size := int64(1 << 20)
	if testing.Short() {
		size = 256 << 10
	}
	echo := listen(t, func(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() })
	h := newHarness(t, Config{Connect: connectTo(func(netip.AddrPort) string { return echo })})
	var clock fakeClock
	h.stack.conns.now = clock.now // before any entry exists
	peer := newTunnelPeer(t, h.stack)
	h.setPump(peer.deliver)

	var wg sync.WaitGroup
	for i, host := range []netip.Addr{hostAddr4, hostAddr6} {
		ln, err := h.hnet.ListenTCPAddrPort(netip.AddrPortFrom(host, 22))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		wg.Add(2)
		go func() { // the host's server
			defer wg.Done()
			c, err := ln.Accept()
			if err != nil {
				t.Errorf("accept: %v", err)
				return
			}
			defer c.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				io.Copy(c, io.LimitReader(pattern(i, 'd'), size))
				c.(interface{ CloseWrite() error }).CloseWrite()
			}()
			if err := expectStream(c, pattern(i, 'u'), size); err != nil {
				t.Errorf("host %v read: %v", host, err)
			}
			<-done
		}()
		go func() { // the tunnel side's client
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := peer.net.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(host, 22))
			if err != nil {
				t.Errorf("dial %v from the tunnel side: %v", host, err)
				ln.Close() // unblocks the server's Accept
				return
			}
			defer c.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				io.Copy(c, io.LimitReader(pattern(i, 'u'), size))
				c.CloseWrite()
			}()
			if err := expectStream(c, pattern(i, 'd'), size); err != nil {
				t.Errorf("tunnel side read from %v: %v", host, err)
			}
			<-done
		}()
	}
	// A flow the host opens meanwhile.
	c, err := h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, 7))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("flow"))
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "flow" {
		t.Errorf("echo over a flow: %q, %v", b, err)
	}
	c.Close()
	wg.Wait()

	closing := func() bool {
		t := h.stack.conns
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, e := range t.m {
			if e.state&(hostFIN|peerFIN) != hostFIN|peerFIN {
				return false
			}
		}
		return true
	}
	waitFor(t, "FINs both ways", closing)
	st := h.stack.Stats()
	if st.InboundTracked != 2 || st.InboundActive != 2 || st.InboundDropped != 0 || st.FlowsOpened != 1 {
		t.Errorf("stats %+v; want 2 inbound connections, 1 flow", st)
	}
	clock.advance(inboundCloseLinger + time.Second)
	h.stack.conns.sweep()
	if st := h.stack.Stats(); st.InboundActive != 0 || st.InboundClosed != 2 || st.InboundExpired != 0 {
		t.Errorf("after the linger: stats %+v; want 2 closed, none left", st)
	}
	t.Logf("stats: %+v", h.stack.Stats())
}

// TestInboundDrops: Write drops an inbound SYN when the table is full or
// when its connection is one of the flows, and writes the rest of the
// batch.
func TestInboundDrops(t *testing.T) {
	t.Run("table full", func(t *testing.T) {
		dev := tuntest.NewChannelDevice(testMTU, 8)
		s, err := New(Config{Dev: dev, MaxInbound: 1, Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
			return nil, &flow.Error{Kind: flow.Refused}
		}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		host := netip.AddrPortFrom(hostAddr4, 22)
		syn1 := buildTCP(netip.AddrPortFrom(remote4, 1), host, 1, 0, tcpSYN, nil)
		syn2 := buildTCP(netip.AddrPortFrom(remote4, 2), host, 1, 0, tcpSYN, nil)
		udp := buildUDP(netip.AddrPortFrom(remote4, 53), netip.AddrPortFrom(hostAddr4, 5000), []byte("answer"))
		if n, err := s.Write([][]byte{syn1, syn2, udp}, 0); n != 3 || err != nil {
			t.Fatalf("Write = %d, %v; want 3 (the dropped SYN counts), nil", n, err)
		}
		for _, want := range [][]byte{syn1, udp} {
			if got := <-dev.Outbound; !bytes.Equal(got, want) {
				t.Fatalf("device got %x, want %x", got, want)
			}
		}
		select {
		case p := <-dev.Outbound:
			t.Fatalf("device got %x, want nothing more", p)
		default:
		}
		if n, err := s.Write([][]byte{syn2}, 0); n != 1 || err != nil {
			t.Fatalf("Write of a dropped SYN alone = %d, %v; want 1, nil", n, err)
		}
		if st := s.Stats(); st.InboundDropped != 2 || st.InboundTracked != 1 || st.InboundActive != 1 {
			t.Errorf("stats %+v; want 2 dropped, 1 tracked", st)
		}
	})
	t.Run("connection is a flow", func(t *testing.T) {
		echo := listen(t, func(c *net.TCPConn) { io.Copy(c, c) })
		h := newHarness(t, Config{Connect: connectTo(func(netip.AddrPort) string { return echo })})
		c, err := h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, 80))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		// The same connection, seen as a SYN from the tunnel side.
		h.stack.Write([][]byte{buildTCP(netip.AddrPortFrom(remote4, 80), local, 1, 0, tcpSYN, nil)}, 0)
		if st := h.stack.Stats(); st.InboundDropped != 1 || st.InboundTracked != 0 {
			t.Errorf("stats %+v; want the SYN dropped", st)
		}
		c.Write([]byte("still a flow"))
		b := make([]byte, 12)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "still a flow" {
			t.Errorf("echo over the flow: %q, %v", b, err)
		}
	})
}

// TestInboundAllocs: the per-packet paths do not allocate, for tracked
// packets and others.
func TestInboundAllocs(t *testing.T) {
	dev := &benchDev{}
	s, err := New(Config{Dev: dev, Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
		return nil, &flow.Error{Kind: flow.Refused}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	host, peer := netip.AddrPortFrom(hostAddr4, 22), netip.AddrPortFrom(remote4, 40000)
	udp := buildUDP(netip.AddrPortFrom(hostAddr4, 5000), netip.AddrPortFrom(remote4, 53), []byte("q"))
	if _, err := s.Write([][]byte{buildTCP(peer, host, 1, 0, tcpSYN, nil)}, 0); err != nil {
		t.Fatal(err)
	}
	wbufs := [][]byte{buildTCP(peer, host, 2, 2, tcpACK, []byte("data")), buildTCP(netip.AddrPortFrom(remote4, 1), host, 2, 2, tcpACK, nil), udp}
	dev.setBatch(buildTCP(host, peer, 2, 2, tcpACK, []byte("reply")), udp)
	rbufs, sizes := [][]byte{make([]byte, datagram.BufSize), make([]byte, datagram.BufSize)}, []int{0, 0}
	for _, tt := range []struct {
		name string
		f    func()
	}{
		{"Write", func() { s.Write(wbufs, 0) }},
		{"Read", func() {
			if n, _ := s.Read(rbufs, sizes, datagram.Headroom); n != 2 {
				t.Fatalf("Read = %d packets, want 2 (the tracked reply passed through)", n)
			}
		}},
	} {
		if n := testing.AllocsPerRun(1000, tt.f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tt.name, n)
		}
	}
}
