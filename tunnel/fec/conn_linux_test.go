//go:build linux

package fec

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
)

func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func udp(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// relay forwards datagrams between one client and upstream, dropping each
// with probability loss (both ways), and counts what it saw. Toward
// upstream it sends from one socket at a time (the client's address as the
// server sees it); rebind moves to a new one, as a NAT rebinding does.
type relay struct {
	pc              *net.UDPConn
	upstream        *net.UDPAddr
	loss            float64
	dropped, fecOut atomic.Uint64 // fecOut: FEC frames toward the client
	plainOut        atomic.Uint64

	mu     sync.Mutex
	rng    *rand.Rand
	client *net.UDPAddr
	up     *net.UDPConn // the current upstream socket
}

func startRelay(t *testing.T, upstream *net.UDPAddr, loss float64) *relay {
	r := &relay{pc: udp(t), upstream: upstream, loss: loss, rng: rand.New(rand.NewPCG(7, 8))}
	// Loopback bursts would overflow default buffers: loss that is not
	// the random loss under test.
	r.pc.SetReadBuffer(8 << 20)
	r.pc.SetWriteBuffer(8 << 20)
	r.rebind(t)
	go func() {
		b := make([]byte, 2048)
		for {
			n, a, err := r.pc.ReadFromUDP(b)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.client = a
			up := r.up
			r.mu.Unlock()
			if r.drop() {
				r.dropped.Add(1)
				continue
			}
			up.WriteToUDP(b[:n], upstream)
		}
	}()
	return r
}

func (r *relay) drop() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rng.Float64() < r.loss
}

// upSocket returns the socket the relay now sends upstream from.
func (r *relay) upSocket() *net.UDPConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.up
}

// rebind sends upstream from a new socket from now on (what comes back to
// the old one is still forwarded).
// It returns the count of FEC frames that come back to the new socket.
func (r *relay) rebind(t *testing.T) *atomic.Uint64 {
	var fecHere atomic.Uint64
	up := udp(t)
	up.SetReadBuffer(8 << 20)
	up.SetWriteBuffer(8 << 20)
	r.mu.Lock()
	r.up = up
	r.mu.Unlock()
	go func() {
		b := make([]byte, 2048)
		for {
			n, _, err := up.ReadFromUDP(b)
			if err != nil {
				return
			}
			if IsFEC(b[0]) {
				r.fecOut.Add(1)
				fecHere.Add(1)
			} else {
				r.plainOut.Add(1)
			}
			if r.drop() {
				r.dropped.Add(1)
				continue
			}
			r.mu.Lock()
			a := r.client
			r.mu.Unlock()
			r.pc.WriteToUDP(b[:n], a)
		}
	}()
	return &fecHere
}

// The test servers' ALPN protocols: a client that dials with alpnFEC has
// FEC negotiated (it stands in for Roam's CONNECT-IP header), and the
// server binds its connection to the Conn.
const (
	alpnPlain = "fec-test"
	alpnFEC   = "fec-test-fec"
)

// listen returns a listener on a FEC-accepting Conn that binds the
// connections that dial with alpnFEC.
func listen(t testing.TB, fc *Conn) *quic.Listener {
	tr := &quic.Transport{Conn: fc}
	t.Cleanup(func() { tr.Close() })
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{alpnFEC, alpnPlain}}, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func accept(ln *quic.Listener, fc *Conn) (*quic.Conn, error) {
	conn, err := ln.Accept(context.Background())
	if err == nil && conn.ConnectionState().TLS.NegotiatedProtocol == alpnFEC {
		fc.Bind(conn)
	}
	return conn, err
}

// startServer runs an echo-the-hash QUIC server on a FEC-accepting Conn:
// each stream's bytes are hashed and the sum written back.
func startServer(t *testing.T) (*Conn, *net.UDPAddr) {
	sock := udp(t)
	fc := NewConn(sock, Config{Accept: true})
	ln := listen(t, fc)
	go func() {
		for {
			conn, err := accept(ln, fc)
			if err != nil {
				return
			}
			go func() {
				for {
					str, err := conn.AcceptStream(context.Background())
					if err != nil {
						return
					}
					go func() {
						h := sha256.New()
						io.Copy(h, str)
						str.Write(h.Sum(nil))
						str.Close()
					}()
				}
			}()
		}
	}()
	return fc, sock.LocalAddr().(*net.UDPAddr)
}

// dial connects to a test server; withFEC dials with alpnFEC (the server
// binds the connection).
func dial(t *testing.T, tr *quic.Transport, addr *net.UDPAddr, withFEC bool) *quic.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	proto := alpnPlain
	if withFEC {
		proto = alpnFEC
	}
	conn, err := tr.Dial(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{proto}}, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

// transfer sends n random bytes on a new stream and checks the server's
// hash of them.
func transfer(t *testing.T, conn *quic.Conn, n int) {
	t.Helper()
	transferWithin(t, conn, n, 60*time.Second)
}

func transferWithin(t *testing.T, conn *quic.Conn, n int, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(n)}).Read(data)
	if _, err := str.Write(data); err != nil {
		t.Fatal(err)
	}
	str.Close()
	got, err := io.ReadAll(str)
	if err != nil {
		t.Fatalf("reading the hash: %v (connection: %v)", err, context.Cause(conn.Context()))
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(got, want[:]) {
		t.Fatal("the server hashed other bytes than were sent")
	}
}

// TestConnQUICOverLossyRelay carries a real quic-go connection through a
// relay that drops 3 % each way, with FEC on both ends: the transfer is
// byte exact, FEC rebuilt packets in both directions, and once the server
// has bound the connection (after the handshake here, as after the
// CONNECT-IP request in Roam) it frames everything it sends.
func TestConnQUICOverLossyRelay(t *testing.T) {
	srv, saddr := startServer(t)
	r := startRelay(t, saddr, lossForTest)
	csock := udp(t)
	cc := NewConn(csock, Config{})
	raddr := r.pc.LocalAddr().(*net.UDPAddr)
	cc.Enable(raddr, Policy{K: 16, M: 4})
	tr := &quic.Transport{Conn: cc}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, raddr, true)
	waitFor(t, "the server to bind the connection", func() bool { return srv.Stats().Sending == 1 })
	// Plain packets sent before the binding may still be on their way.
	transfer(t, conn, 64<<10)
	plainBefore := r.plainOut.Load()
	transfer(t, conn, 4<<20)
	if err := context.Cause(conn.Context()); err != nil {
		t.Fatalf("connection error: %v", err)
	}
	cs, ss := cc.Stats(), srv.Stats()
	t.Logf("relay dropped %d; client %+v; server %+v", r.dropped.Load(), cs, ss)
	// The client receives only the server's ACKs (a few hundred frames):
	// some runs lose none of them, so only a loss must be recovered there.
	if r.dropped.Load() == 0 || ss.Recovered == 0 || (cs.Lost > 0 && cs.Recovered == 0) {
		t.Fatalf("nothing recovered (client %d of %d lost, server %d of %d) with %d drops",
			cs.Recovered, cs.Lost, ss.Recovered, ss.Lost, r.dropped.Load())
	}
	if ss.Peers != 1 || ss.M != 4 {
		t.Fatalf("server peers %d, parity %d:%d (want the client's 16:4)", ss.Peers, ss.K, ss.M)
	}
	if n := r.plainOut.Load() - plainBefore; n != 0 {
		t.Fatalf("the server sent %d plain QUIC packets to a bound FEC peer", n)
	}
}

// TestConnPlainPeer: a quic-go client without FEC against the FEC-accepting
// server gets plain QUIC only.
func TestConnPlainPeer(t *testing.T) {
	srv, saddr := startServer(t)
	r := startRelay(t, saddr, 0)
	tr := &quic.Transport{Conn: udp(t)}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, r.pc.LocalAddr().(*net.UDPAddr), false)
	transfer(t, conn, 1<<20)
	if n := r.fecOut.Load(); n != 0 {
		t.Fatalf("the server sent %d FEC frames to a plain QUIC client", n)
	}
	if s := srv.Stats(); s.Peers != 0 || s.DataFrames != 0 {
		t.Fatalf("server stats %+v", s)
	}
}

// spoofedFrames returns what an off-path attacker would send from a plain
// client's address to turn FEC on toward it: a valid block of four data
// frames (short-header-looking packets) with its parity, and a report
// asking for parity.
func spoofedFrames() [][]byte {
	enc := NewEncoder(Policy{K: 4, M: 1}, 77)
	now := time.Now()
	var frames [][]byte
	for i := range 4 {
		pkt := make([]byte, 60)
		pkt[0], pkt[1] = 0x40, byte(i)
		b, full := enc.AppendData(nil, pkt, now)
		frames = append(frames, b)
		if full {
			p, n, l := enc.AppendParity(nil)
			for j := range n {
				frames = append(frames, p[j*l:(j+1)*l])
			}
		}
	}
	return append(frames, AppendReport(nil, 16, 4, 4, 0))
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestConnSpoofedFramesPlainClient: FEC frames that someone else sends
// from a plain QUIC client's address (spoofed; here sent from the relay's
// upstream socket, which is the client's address as the server sees it)
// are decoded but do not make the server frame toward that client: its
// connection keeps working and gets no FEC frame.
func TestConnSpoofedFramesPlainClient(t *testing.T) {
	srv, saddr := startServer(t)
	r := startRelay(t, saddr, 0)
	tr := &quic.Transport{Conn: udp(t)}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, r.pc.LocalAddr().(*net.UDPAddr), false)
	transfer(t, conn, 64<<10)
	up := r.upSocket()
	for _, f := range spoofedFrames() {
		if _, err := up.WriteToUDP(f, saddr); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the server to decode the spoofed frames", func() bool {
		s := srv.Stats()
		return s.Peers == 1 && s.Received >= 4
	})
	transferWithin(t, conn, 1<<20, 10*time.Second)
	if n := r.fecOut.Load(); n != 0 {
		t.Fatalf("the server sent %d FEC frames to a plain QUIC client after spoofed frames", n)
	}
	if s := srv.Stats(); s.DataFrames != 0 || s.Reports != 0 || s.Sending != 0 {
		t.Fatalf("server stats %+v", s)
	}
}

// TestConnRebindFollowsConnection: a FEC client whose address changes
// mid-connection (a NAT rebinding: the relay sends from a new socket)
// keeps FEC both ways over a lossy relay: the server decodes its frames
// from the new address at once, frames toward it once quic-go has moved
// the connection there (and stops framing toward the old one), and
// losses are still rebuilt after the move.
func TestConnRebindFollowsConnection(t *testing.T) {
	srv, saddr := startServer(t)
	r := startRelay(t, saddr, lossForTest)
	cc := NewConn(udp(t), Config{})
	raddr := r.pc.LocalAddr().(*net.UDPAddr)
	cc.Enable(raddr, Policy{K: 16, M: 4})
	tr := &quic.Transport{Conn: cc}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, raddr, true)
	transfer(t, conn, 1<<20)
	if s := srv.Stats(); s.Sending != 1 {
		t.Fatalf("before the move: server %+v", s)
	}
	fecNew := r.rebind(t)
	ss0, cs0 := srv.Stats(), cc.Stats()
	transfer(t, conn, 4<<20)
	ss, cs := srv.Stats(), cc.Stats()
	t.Logf("after the move: %d FEC frames to the new address; server %+v; client %+v", fecNew.Load(), ss, cs)
	if fecNew.Load() == 0 {
		t.Fatal("the server never framed toward the client's new address")
	}
	if ss.Recovered == ss0.Recovered {
		t.Fatalf("the server rebuilt nothing after the move (%d lost)", ss.Lost-ss0.Lost)
	}
	if lost := cs.Lost - cs0.Lost; lost > 0 && cs.Recovered == cs0.Recovered {
		t.Fatalf("the client rebuilt none of %d lost after the move", lost)
	}
	if ss.Peers != 2 || ss.Sending != 1 {
		t.Fatalf("server peers %d, sending %d: want state for both addresses, frames to the new one only", ss.Peers, ss.Sending)
	}
}

// TestConnAutoCleanLink: auto policy starts with parity (the prior) and
// stops sending any once a clean link has been reported for a while.
func TestConnAutoCleanLink(t *testing.T) {
	srv, saddr := startServer(t)
	csock := udp(t)
	cc := NewConn(csock, Config{})
	cc.Enable(saddr, Policy{K: AutoK, Auto: true})
	tr := &quic.Transport{Conn: cc}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, saddr, true)
	transfer(t, conn, 1<<20)
	if s := cc.Stats(); s.ParityFrames == 0 {
		t.Fatalf("no parity at the start: %+v", s)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		before, sbefore := cc.Stats().ParityFrames, srv.Stats().ParityFrames
		time.Sleep(reportInterval) // one more report each way
		transfer(t, conn, 256<<10)
		cs, ss := cc.Stats(), srv.Stats()
		if cs.ParityFrames == before && ss.ParityFrames == sbefore && cs.M == 0 && ss.M == 0 {
			if cs.Lost != 0 || ss.Lost != 0 {
				t.Fatalf("loss on loopback: client %+v; server %+v", cs, ss)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("auto still sends parity on a clean link: client %+v; server %+v", cs, ss)
		}
	}
}

// TestConnAutoLossyLink: auto policy turns parity on once loss is reported.
func TestConnAutoLossyLink(t *testing.T) {
	srv, saddr := startServer(t)
	r := startRelay(t, saddr, 0.02)
	cc := NewConn(udp(t), Config{})
	raddr := r.pc.LocalAddr().(*net.UDPAddr)
	cc.Enable(raddr, Policy{K: AutoK, Auto: true})
	tr := &quic.Transport{Conn: cc}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, raddr, true)
	transfer(t, conn, 4<<20)
	cs, ss := cc.Stats(), srv.Stats()
	t.Logf("client %+v; server %+v", cs, ss)
	if cs.ParityFrames == 0 || ss.ParityFrames == 0 || cs.Recovered+ss.Recovered == 0 {
		t.Fatalf("auto sent no parity on a lossy link: client %+v; server %+v", cs, ss)
	}
}

var lossForTest = 0.03

// TestConnAllocs: framing packets, sending a block's parity and reading
// the frames back allocate no more than the plain socket path quic-go
// uses anyway (x/net's ReadBatch and net's WriteMsgUDP allocate an
// address per packet) plus one allocation per block inside the
// Reed-Solomon codec.
func TestConnAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	a, b := udp(t), udp(t)
	for _, c := range []*net.UDPConn{a, b} {
		c.SetReadBuffer(8 << 20)
	}
	baddr, aaddr := b.LocalAddr().(*net.UDPAddr), a.LocalAddr().(*net.UDPAddr)
	pkt := make([]byte, 1200)
	pkt[0] = 0x40
	ms := make([]ipv4.Message, 8)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128)
	}
	round := func(w func([]byte, []byte, *net.UDPAddr) (int, int, error), r func([]ipv4.Message, int) (int, error)) func() {
		return func() {
			for range 4 { // one block: 4 data, 1 parity
				if _, _, err := w(pkt, nil, baddr); err != nil {
					t.Fatal(err)
				}
			}
			for got := 0; got < 4; {
				n, err := r(ms, 0)
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
		}
	}
	plain := round(a.WriteMsgUDP, ipv4.NewPacketConn(b).ReadBatch)
	base := testing.AllocsPerRun(100, plain)

	ca, cb := NewConn(a, Config{}), NewConn(b, Config{})
	ca.Enable(baddr, Policy{K: 4, M: 1})
	cb.Enable(aaddr, Policy{K: 4, M: 1})
	framed := round(ca.WriteMsgUDP, cb.ReadBatch)
	for range 2 * window / 4 { // every slot of the decoder's window used once
		framed()
	}
	// The parity frame is one more write and read than the plain round.
	n := testing.AllocsPerRun(200, framed)
	t.Logf("%.1f allocations per framed block, %.1f per plain round", n, base)
	if n > base*5/4+1.5 {
		t.Errorf("%.1f allocations per block of 4 packets; the plain socket path makes %.1f", n, base)
	}
}
