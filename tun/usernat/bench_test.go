package usernat

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
)

// BenchmarkTCPThroughput moves bytes over one TCP connection through the
// whole path: client gVisor stack (wireguard netstack) -> packet pumps ->
// Stack -> host socket -> 127.0.0.1 listener, and back. Note the client
// stack costs about as much CPU as the NAT itself.
func BenchmarkTCPThroughput(b *testing.B) {
	const chunk = 64 << 10
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			h := newHarness(b, testConfig())
			ln, err := net.Listen("tcp4", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				if dir == "upload" {
					io.Copy(io.Discard, c)
					return
				}
				buf := make([]byte, chunk)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
			c, err := h.cnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(testGW4, uint16(ln.Addr().(*net.TCPAddr).Port)))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if dir == "upload" {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				} else if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
		})
	}
}

// BenchmarkWriteRead measures the NAT's own per-packet path without a client
// stack: an echo request to the gateway goes in through Write, the stack
// answers, and the reply comes out of Read.
func BenchmarkWriteRead(b *testing.B) {
	s, err := New(testConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	pkt := append(make([]byte, testHeadroom), buildEchoRequestPacket(false, testClient4, testGW4, 1, 1, make([]byte, 1000))...)
	in := [][]byte{pkt}
	out := [][]byte{make([]byte, testHeadroom+1500)}
	sizes := []int{0}
	b.SetBytes(int64(len(pkt) - testHeadroom))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s.Write(in, testHeadroom)
		if _, err := s.Read(out, sizes, testHeadroom); err != nil {
			b.Fatal(err)
		}
	}
}
