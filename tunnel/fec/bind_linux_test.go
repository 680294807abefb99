//go:build linux

package fec

import (
	"bytes"
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// fakeRemote is a connection whose address the test moves.
type fakeRemote struct {
	addr atomic.Pointer[net.UDPAddr]
	ctx  context.Context
}

func (r *fakeRemote) RemoteAddr() net.Addr     { return r.addr.Load() }
func (r *fakeRemote) Context() context.Context { return r.ctx }

// bindRig is a server Conn and client sockets that send it frames.
type bindRig struct {
	t   *testing.T
	srv *Conn
	ms  []ipv4.Message
	seq uint32
}

// frame sends an unprotected data frame carrying one QUIC-looking packet
// with marker from c and checks that the server delivers the packet.
func (g *bindRig) frame(c *net.UDPConn, marker byte) {
	g.t.Helper()
	g.seq++
	pkt := []byte{0x40, marker, 1, 2, 3}
	if _, err := c.WriteToUDP(AppendData(nil, false, g.seq, pkt), g.srv.LocalAddr().(*net.UDPAddr)); err != nil {
		g.t.Fatal(err)
	}
	g.srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := g.srv.ReadBatch(g.ms, 0)
	if err != nil {
		g.t.Fatal(err)
	}
	if n != 1 || g.ms[0].N != len(pkt) || g.ms[0].Buffers[0][1] != marker {
		g.t.Fatalf("read %d packets (first %x); want the one with marker %d", n, g.ms[0].Buffers[0][:g.ms[0].N], marker)
	}
}

// framedTo reports whether a packet the server sends to c arrives framed
// (the datagrams of earlier sends, parity and reports are skipped).
func (g *bindRig) framedTo(c *net.UDPConn) bool {
	g.t.Helper()
	g.seq++
	pkt := []byte{0x40, 9, byte(g.seq), byte(g.seq >> 8)}
	if _, _, err := g.srv.WriteMsgUDP(pkt, nil, c.LocalAddr().(*net.UDPAddr)); err != nil {
		g.t.Fatal(err)
	}
	b := make([]byte, 2048)
	for {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := c.ReadFromUDP(b)
		if err != nil {
			g.t.Fatal(err)
		}
		switch {
		case bytes.Equal(b[:n], pkt):
			return false
		case n == DataHeaderLen+len(pkt) && (b[0] == TypeData || b[0] == TypeDataProtected) && bytes.Equal(b[DataHeaderLen:n], pkt):
			return true
		}
	}
}

// TestConnBind: a server Conn frames toward an address only while a bound
// connection is there and the address has sent frames; it follows the
// connection when its address changes (on a rescan that a frame from the
// new address triggers), stops when the connection's context ends, and a
// full table makes room for a bound address (an address refused state
// still has the packets of its data frames delivered).
func TestConnBind(t *testing.T) {
	g := &bindRig{t: t, srv: NewConn(udp(t), Config{Accept: true, MaxPeers: 2}), ms: testMessages(4)}
	a, b, c := udp(t), udp(t), udp(t)

	// Frames alone: decoded, never answered with frames.
	g.frame(a, 1)
	if g.framedTo(a) {
		t.Fatal("framed toward an address that is no bound connection's")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &fakeRemote{ctx: ctx}
	r.addr.Store(a.LocalAddr().(*net.UDPAddr))
	g.srv.Bind(r)
	if !g.framedTo(a) {
		t.Fatal("not framed toward a bound connection's address")
	}
	g.frame(b, 2) // b: state, not bound
	if s := g.srv.Stats(); s.Peers != 2 || s.Sending != 1 {
		t.Fatalf("stats %+v: want two peers, one framed to", s)
	}
	if g.framedTo(b) {
		t.Fatal("framed toward an unbound address")
	}

	// The connection moves to c. The table is full, but c's first frame
	// triggers a rescan that finds the connection there, so c takes the
	// place of the longest-silent address not framed to (a, which the
	// connection left).
	r.addr.Store(c.LocalAddr().(*net.UDPAddr))
	g.srv.scanAt = time.Time{} // as if the last rescan were long ago
	g.frame(c, 3)
	if s := g.srv.Stats(); s.Peers != 2 || s.Sending != 1 || s.PeersRefused != 0 {
		t.Fatalf("stats %+v: want peers b and c, c framed to", s)
	}
	if g.framedTo(a) || g.framedTo(b) || !g.framedTo(c) {
		t.Fatal("framing did not follow the connection from a to c")
	}
	// Another unbound address finds the table full: no state, but its
	// packet is delivered.
	g.frame(udp(t), 4)
	if s := g.srv.Stats(); s.Peers != 2 || s.PeersRefused != 1 {
		t.Fatalf("stats %+v: want one address refused", s)
	}

	// The connection ends: nothing is framed to anymore.
	cancel()
	waitFor(t, "the binding to end", func() bool { return g.srv.Stats().Sending == 0 })
	if g.framedTo(c) {
		t.Fatal("framed toward the address of a closed connection")
	}
}
