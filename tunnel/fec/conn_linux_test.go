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
// with probability loss (both ways), and counts what it saw.
type relay struct {
	pc              *net.UDPConn
	loss            float64
	dropped, fecOut atomic.Uint64 // fecOut: FEC frames toward the client
	plainOut        atomic.Uint64
}

func startRelay(t *testing.T, upstream *net.UDPAddr, loss float64) *relay {
	r := &relay{pc: udp(t), loss: loss}
	up := udp(t)
	// Loopback bursts would overflow default buffers: loss that is not
	// the random loss under test.
	for _, c := range []*net.UDPConn{r.pc, up} {
		c.SetReadBuffer(8 << 20)
		c.SetWriteBuffer(8 << 20)
	}
	var mu sync.Mutex
	var client *net.UDPAddr
	rng := rand.New(rand.NewPCG(7, 8))
	drop := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return rng.Float64() < r.loss
	}
	go func() {
		b := make([]byte, 2048)
		for {
			n, a, err := r.pc.ReadFromUDP(b)
			if err != nil {
				return
			}
			mu.Lock()
			client = a
			mu.Unlock()
			if drop() {
				r.dropped.Add(1)
				continue
			}
			up.WriteToUDP(b[:n], upstream)
		}
	}()
	go func() {
		b := make([]byte, 2048)
		for {
			n, _, err := up.ReadFromUDP(b)
			if err != nil {
				return
			}
			if IsFEC(b[0]) {
				r.fecOut.Add(1)
			} else {
				r.plainOut.Add(1)
			}
			if drop() {
				r.dropped.Add(1)
				continue
			}
			mu.Lock()
			a := client
			mu.Unlock()
			r.pc.WriteToUDP(b[:n], a)
		}
	}()
	return r
}

// startServer runs an echo-the-hash QUIC server on a FEC-accepting Conn:
// each stream's bytes are hashed and the sum written back.
func startServer(t *testing.T) (*Conn, *net.UDPAddr) {
	sock := udp(t)
	fc := NewConn(sock, Config{Accept: true})
	tr := &quic.Transport{Conn: fc}
	t.Cleanup(func() { tr.Close() })
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{"fec-test"}}, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			conn, err := ln.Accept(context.Background())
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

func dial(t *testing.T, tr *quic.Transport, addr *net.UDPAddr) *quic.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := tr.Dial(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"fec-test"}}, &quic.Config{})
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
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
// byte exact, FEC rebuilt packets in both directions, and the plain-QUIC
// first flight reached the server untouched.
func TestConnQUICOverLossyRelay(t *testing.T) {
	srv, saddr := startServer(t)
	r := startRelay(t, saddr, lossForTest)
	csock := udp(t)
	cc := NewConn(csock, Config{})
	raddr := r.pc.LocalAddr().(*net.UDPAddr)
	cc.Enable(raddr, Policy{K: 16, M: 4})
	tr := &quic.Transport{Conn: cc}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, raddr)
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
	if r.plainOut.Load() != 0 {
		t.Fatalf("the server sent %d plain QUIC packets to a FEC peer", r.plainOut.Load())
	}
}

// TestConnPlainPeer: a quic-go client without FEC against the FEC-accepting
// server gets plain QUIC only.
func TestConnPlainPeer(t *testing.T) {
	srv, saddr := startServer(t)
	r := startRelay(t, saddr, 0)
	tr := &quic.Transport{Conn: udp(t)}
	t.Cleanup(func() { tr.Close() })
	conn := dial(t, tr, r.pc.LocalAddr().(*net.UDPAddr))
	transfer(t, conn, 1<<20)
	if n := r.fecOut.Load(); n != 0 {
		t.Fatalf("the server sent %d FEC frames to a plain QUIC client", n)
	}
	if s := srv.Stats(); s.Peers != 0 || s.DataFrames != 0 {
		t.Fatalf("server stats %+v", s)
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
	conn := dial(t, tr, saddr)
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
	conn := dial(t, tr, raddr)
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
