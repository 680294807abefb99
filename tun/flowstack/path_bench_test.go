package flowstack

import (
	"context"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/flow"
)

// benchDev is a device for the per-packet benchmarks: every Read returns
// the same batch of packets (copied), Write discards.
type benchDev struct {
	batch  [][]byte
	closed atomic.Bool
}

func (d *benchDev) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.closed.Load() {
		return 0, os.ErrClosed
	}
	n := min(len(bufs), len(d.batch))
	for i := range n {
		sizes[i] = copy(bufs[i][offset:], d.batch[i])
	}
	return n, nil
}

func (d *benchDev) Write(bufs [][]byte, offset int) (int, error) {
	if d.closed.Load() {
		return 0, os.ErrClosed
	}
	return len(bufs), nil
}

func (d *benchDev) BatchSize() int       { return testBatch }
func (d *benchDev) MTU() (int, error)    { return testMTU, nil }
func (d *benchDev) Close() error         { d.closed.Store(true); return nil }
func (d *benchDev) setBatch(p ...[]byte) { d.batch = p }

// BenchmarkPacketPath measures the Stack's per-packet cost on its two
// paths, one op being a batch of testBatch (16) packets of 1400 bytes:
//
//   - write/udp: Write of UDP packets from the tunnel;
//   - write/tcp-untracked: Write of TCP data from the tunnel for a
//     connection the Stack does not track;
//   - write/tcp-inbound: the same after the peer's SYN was written, so the
//     connection is tracked as inbound;
//   - read/udp: Read of UDP packets (passed through);
//   - read/tcp-inbound: Read of the host's TCP packets of the tracked
//     inbound connection (15) and one UDP packet: passed through (before
//     connection tracking they were diverted into gVisor, which answered
//     each with a RST).
func BenchmarkPacketPath(b *testing.B) {
	host := netip.AddrPortFrom(hostAddr4, 22)
	peer := netip.AddrPortFrom(remote4, 40000)
	other := netip.AddrPortFrom(remote4, 40001)
	payload := make([]byte, testMTU-40)
	newStack := func(b *testing.B) (*Stack, *benchDev) {
		dev := &benchDev{}
		s, err := New(Config{Dev: dev, Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
			return nil, &flow.Error{Kind: flow.Refused}
		}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s, dev
	}
	batchOf := func(n int, pkt []byte) [][]byte {
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = make([]byte, datagram.Headroom+len(pkt), datagram.BufSize)
			copy(bufs[i][datagram.Headroom:], pkt)
		}
		return bufs
	}
	synIn := batchOf(1, buildTCP(peer, host, 1000, 0, tcpSYN, nil))
	data := buildTCP(peer, host, 1001, 5001, tcpACK, payload)
	dataOther := buildTCP(other, host, 1001, 5001, tcpACK, payload)
	writeBench := func(b *testing.B, track bool, pkt []byte) {
		s, _ := newStack(b)
		if track {
			if _, err := s.Write(synIn, datagram.Headroom); err != nil {
				b.Fatal(err)
			}
		}
		bufs := batchOf(testBatch, pkt)
		b.ReportAllocs()
		b.SetBytes(int64(testBatch * len(pkt)))
		b.ResetTimer()
		for range b.N {
			if _, err := s.Write(bufs, datagram.Headroom); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*testBatch), "ns/pkt")
	}
	b.Run("write/udp", func(b *testing.B) {
		writeBench(b, true, buildUDP(netip.AddrPortFrom(remote4, 53), netip.AddrPortFrom(hostAddr4, 5000), payload[:len(payload)-8]))
	})
	b.Run("write/tcp-untracked", func(b *testing.B) { writeBench(b, false, dataOther) })
	b.Run("write/tcp-inbound", func(b *testing.B) { writeBench(b, true, data) })

	readBench := func(b *testing.B, track bool, pkts [][]byte) {
		s, dev := newStack(b)
		if track {
			if _, err := s.Write(synIn, datagram.Headroom); err != nil {
				b.Fatal(err)
			}
		}
		dev.setBatch(pkts...)
		bufs, sizes := make([][]byte, testBatch), make([]int, testBatch)
		for i := range bufs {
			bufs[i] = make([]byte, datagram.BufSize)
		}
		b.ReportAllocs()
		b.SetBytes(int64(testBatch * len(pkts[0])))
		b.ResetTimer()
		for range b.N {
			if _, err := s.Read(bufs, sizes, datagram.Headroom); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*testBatch), "ns/pkt")
	}
	udp := buildUDP(netip.AddrPortFrom(hostAddr4, 5000), netip.AddrPortFrom(remote4, 53), payload[:len(payload)-8])
	udps := make([][]byte, testBatch)
	for i := range udps {
		udps[i] = udp
	}
	b.Run("read/udp", func(b *testing.B) { readBench(b, false, udps) })
	reply := buildTCP(host, peer, 5001, 1001, tcpACK, payload)
	replies := make([][]byte, testBatch)
	for i := range replies {
		replies[i] = reply
	}
	replies[testBatch-1] = udp // never an all-TCP batch: Read would read again
	b.Run("read/tcp-inbound", func(b *testing.B) { readBench(b, true, replies) })
}

// BenchmarkConnTable measures one lookup of a host packet in the inbound
// table (Read's per-packet cost for TCP) among 1000 entries of
// connections to host port 22: table empty; a flow's packet (host port
// 40000: the port bitmap answers); a packet from port 22 to another peer
// (a miss under the lock); a hit.
func BenchmarkConnTable(b *testing.B) {
	host := netip.AddrPortFrom(hostAddr4, 22)
	for _, tt := range []struct {
		name     string
		entries  int
		hostPort uint16
		peer     uint16
	}{
		{"empty", 0, 22, 1},
		{"miss-flow", 1000, 40000, 1},
		{"miss-locked", 1000, 22, 5000},
		{"hit", 1000, 22, 1},
	} {
		b.Run(tt.name, func(b *testing.B) {
			tbl := newConnTable(DefaultMaxInbound)
			for i := range tt.entries {
				feed(b, tbl, buildTCP(netip.AddrPortFrom(remote4, uint16(1+i)), host, 1, 0, tcpSYN, nil), false)
			}
			pkt := buildTCP(netip.AddrPortFrom(hostAddr4, tt.hostPort), netip.AddrPortFrom(remote4, tt.peer), 1, 1, tcpACK, make([]byte, 1000))
			var p datagram.Packet
			if err := p.Decode(pkt); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				now := clock{t: tbl}
				if tbl.fromHost(pkt, &p, &now) != (tt.name == "hit") {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}
