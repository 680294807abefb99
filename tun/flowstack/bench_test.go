package flowstack

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"runtime/pprof"
	"testing"
	"time"
)

// BenchmarkThroughput moves bulk data through one flow: the host's
// application (a second gVisor stack) <-> the Stack <-> a loopback TCP
// server standing in for the upstream stream. It reports, besides MB/s,
// the process CPU time per gigabit (cpu-s/Gbit; all of it: both gVisor
// stacks, the loopback kernel TCP and the test's pumps, so an upper bound
// for the Stack alone). Profiles are labelled side=flowstack / host /
// server (go tool pprof -tags) to split the CPU between them.
func BenchmarkThroughput(b *testing.B) {
	const chunk = 1 << 20
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			addr := listen(b, func(c *net.TCPConn) {
				pprof.Do(context.Background(), pprof.Labels("side", "server"), func(context.Context) {
					var hdr [8]byte
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					if n := binary.BigEndian.Uint64(hdr[:]); n > 0 { // download: send n chunks
						buf := make([]byte, chunk)
						for range n {
							if _, err := c.Write(buf); err != nil {
								return
							}
						}
						c.CloseWrite()
						return
					}
					io.Copy(io.Discard, c) // upload: sink
					c.Write([]byte{1})     // ack the whole upload
				})
			})
			h := newHarness(b, Config{Connect: connectTo(func(netip.AddrPort) string { return addr })})
			b.ReportAllocs()
			b.SetBytes(chunk)
			pprof.Do(context.Background(), pprof.Labels("side", "host"), func(context.Context) {
				c, err := h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, 5201))
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				var hdr [8]byte
				if dir == "download" {
					binary.BigEndian.PutUint64(hdr[:], uint64(b.N))
				}
				buf := make([]byte, chunk)
				cpu0, t0 := cpuTime(), time.Now()
				b.ResetTimer()
				c.Write(hdr[:])
				if dir == "upload" {
					for range b.N {
						if _, err := c.Write(buf); err != nil {
							b.Fatal(err)
						}
					}
					c.CloseWrite()
					if _, err := io.ReadFull(c, buf[:1]); err != nil {
						b.Fatal(err)
					}
				} else {
					n, err := io.CopyBuffer(io.Discard, c, buf)
					if err != nil || n != int64(b.N)*chunk {
						b.Fatalf("downloaded %d bytes, %v; want %d", n, err, int64(b.N)*chunk)
					}
				}
				b.StopTimer()
				cpu, wall := cpuTime()-cpu0, time.Since(t0)
				gbit := float64(b.N) * chunk * 8 / 1e9
				if cpu > 0 {
					b.ReportMetric(cpu.Seconds()/gbit, "cpu-s/Gbit")
					b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
				}
			})
			st := h.stack.Stats()
			b.ReportMetric(float64(st.DropOutQueue), "queue-drops")
		})
	}
}
