//go:build linux

package fec

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// benchConns sends 8 packets of 1350 bytes as one GSO batch from a to b
// and reads them back (plus parity frames when framed).
func benchConns(b *testing.B, p Policy) {
	ua, ub := udp(b), udp(b)
	ub.SetReadBuffer(8 << 20)
	baddr, aaddr := ub.LocalAddr().(*net.UDPAddr), ua.LocalAddr().(*net.UDPAddr)
	var w func([]byte, []byte, *net.UDPAddr) (int, int, error) = ua.WriteMsgUDP
	var r func([]ipv4.Message, int) (int, error) = ipv4.NewPacketConn(ub).ReadBatch
	if !p.Off() || p.Auto {
		ca, cb := NewConn(ua, Config{}), NewConn(ub, Config{})
		ca.Enable(baddr, p)
		cb.Enable(aaddr, p)
		if p.Auto { // as after a second of clean reports
			for _, pr := range ca.peers {
				pr.enc.SetPolicy(p, 0)
			}
		}
		w, r = ca.WriteMsgUDP, cb.ReadBatch
	}
	sendBatches(b, w, r, baddr)
}

func BenchmarkPlainSocket(b *testing.B) { benchConns(b, Policy{}) }
func BenchmarkFECNoParity(b *testing.B) { benchConns(b, Policy{K: 16, Auto: true}) }
func BenchmarkFEC16x4(b *testing.B)     { benchConns(b, Policy{K: 16, M: 4}) }

// benchQUIC sends b.N MB over one quic-go stream through Conns on both
// ends (or plain sockets with p off).
func benchQUIC(b *testing.B, p Policy) {
	sock := udp(b)
	var fc *Conn
	var ln *quic.Listener
	if !p.Off() || p.Auto {
		fc = NewConn(sock, Config{Accept: true})
		ln = listen(b, fc)
	} else {
		tr := &quic.Transport{Conn: sock}
		b.Cleanup(func() { tr.Close() })
		var err error
		ln, err = tr.Listen(&tls.Config{Certificates: []tls.Certificate{testCert(b)}, NextProtos: []string{alpnPlain}}, &quic.Config{})
		if err != nil {
			b.Fatal(err)
		}
	}
	done := make(chan int64, 1)
	go func() {
		conn, err := accept(ln, fc)
		if err != nil {
			return
		}
		str, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, str)
		done <- n
	}()
	csock := udp(b)
	var cliConn net.PacketConn = csock
	saddr := sock.LocalAddr().(*net.UDPAddr)
	if !p.Off() || p.Auto {
		cc := NewConn(csock, Config{})
		cc.Enable(saddr, p)
		if p.Auto {
			for _, pr := range cc.peers {
				pr.enc.SetPolicy(p, 0)
			}
		}
		cliConn = cc
	}
	proto := alpnPlain
	if fc != nil {
		proto = alpnFEC
	}
	ctr := &quic.Transport{Conn: cliConn}
	b.Cleanup(func() { ctr.Close() })
	conn, err := ctr.Dial(context.Background(), saddr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{proto}}, &quic.Config{})
	if err != nil {
		b.Fatal(err)
	}
	str, err := conn.OpenStream()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, err := str.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	str.Close()
	<-done
}

func BenchmarkQUICPlain(b *testing.B)    { benchQUIC(b, Policy{}) }
func BenchmarkQUICNoParity(b *testing.B) { benchQUIC(b, Policy{K: 16, Auto: true}) }

// benchReadPlain sends GSO batches of 8 plain QUIC packets of 1350 bytes
// and reads them back through r: the receive path a plain client's packets
// take on a server with FEC on (a Conn with Accept) against a plain
// socket. It reports the cost per packet (send included).
func benchReadPlain(b *testing.B, conn bool, gro bool) {
	ua, ub := udp(b), udp(b)
	ub.SetReadBuffer(8 << 20)
	baddr := ub.LocalAddr().(*net.UDPAddr)
	var r func([]ipv4.Message, int) (int, error) = ipv4.NewPacketConn(ub).ReadBatch
	if conn {
		c := NewConn(ub, Config{Accept: true})
		if !gro && c.gro {
			rc, err := ub.SyscallConn()
			if err != nil {
				b.Fatal(err)
			}
			rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 0) })
			c.gro = false
			for i := range c.rmsgs {
				c.rmsgs[i].Buffers[0] = c.rmsgs[i].Buffers[0][:rbufSize]
			}
		} else if gro && !c.gro {
			b.Skip("no UDP_GRO on this kernel")
		}
		r = c.ReadBatch
	}
	sendBatches(b, ua.WriteMsgUDP, r, baddr)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(8*b.N), "ns/packet")
}

func BenchmarkReadPlainSocket(b *testing.B)    { benchReadPlain(b, false, false) }
func BenchmarkReadPlainConnGRO(b *testing.B)   { benchReadPlain(b, true, true) }
func BenchmarkReadPlainConnNoGRO(b *testing.B) { benchReadPlain(b, true, false) }

// sendBatches times b.N rounds of one GSO batch of 8 QUIC-like packets of
// 1350 bytes, sent with w to addr and read back with r.
func sendBatches(b *testing.B, w func([]byte, []byte, *net.UDPAddr) (int, int, error), r func([]ipv4.Message, int) (int, error), addr *net.UDPAddr) {
	buf := make([]byte, 8*1350)
	for i := 0; i < len(buf); i += 1350 {
		buf[i] = 0x40
	}
	oob := appendSegment(nil, 1350)
	ms := make([]ipv4.Message, 8)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128)
	}
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		if _, _, err := w(buf, oob, addr); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < 8; {
			n, err := r(ms, 0)
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
}
