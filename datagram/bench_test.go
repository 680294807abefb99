package datagram

import (
	"context"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// benchDevice is a Device for benchmarks: Read fills every buffer of the
// batch with a prepared packet until limit packets were produced, then
// blocks until Close; Write counts packets and signals when done() holds.
type benchDevice struct {
	pkt      []byte
	batch    int
	limit    int64
	produced int64 // touched only by the reader goroutine
	written  atomic.Int64
	closed   chan struct{}
	once     sync.Once
	onWrite  func(total int64)
}

func (d *benchDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.produced >= d.limit {
		<-d.closed
		return 0, os.ErrClosed
	}
	n := int(min(int64(len(bufs)), d.limit-d.produced))
	for i := 0; i < n; i++ {
		sizes[i] = copy(bufs[i][offset:], d.pkt)
	}
	d.produced += int64(n)
	return n, nil
}

func (d *benchDevice) Write(bufs [][]byte, offset int) (int, error) {
	total := d.written.Add(int64(len(bufs)))
	if d.onWrite != nil {
		d.onWrite(total)
	}
	return len(bufs), nil
}

func (d *benchDevice) BatchSize() int    { return d.batch }
func (d *benchDevice) MTU() (int, error) { return 1400, nil }
func (d *benchDevice) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// benchConn copies sent datagrams into a reusable buffer and signals after
// limit sends. ReceiveDatagram returns a prepared datagram limit times (the
// same read-only slice: the pump only reads it), then blocks; it keeps at
// most window datagrams in flight ahead of the device (written() tells), as
// a sender limited by congestion control would, so that the benchmark
// measures the pump's throughput rather than its drop path.
type benchConn struct {
	sendBuf [BufSize]byte
	sent    atomic.Int64
	limit   int64
	onSent  func()
	recv    []byte
	recvd   int64 // touched only by the receiver goroutine
	window  int64
	written func() int64
}

func (c *benchConn) SendDatagram(p []byte) error {
	copy(c.sendBuf[:], p)
	if c.sent.Add(1) == c.limit && c.onSent != nil {
		c.onSent()
	}
	return nil
}

func (c *benchConn) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	if c.recvd >= c.limit {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	for c.window > 0 && c.recvd-c.written() >= c.window {
		runtime.Gosched()
	}
	c.recvd++
	return c.recv, nil
}

func runPumpBench(b *testing.B, dev *benchDevice, conn *benchConn, st *Stats, done chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pump{Dev: dev, Conn: conn, QuarterStreamID: 1000, Stats: st, QueueLen: 4096,
		OnStop: func() { dev.Close() },
		Allow:  func(*Packet) DropReason { return NoDrop }}
	errc := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	go func() { errc <- p.Run(ctx) }()
	<-done
	b.StopTimer()
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkUplink: Device.Read (batches of 128) -> Decode -> Allow ->
// PutPrefix -> SendDatagram, through Pump.Run. One op is one packet.
func BenchmarkUplink(b *testing.B) {
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{
		{"IPv4-1400", buildV4(v4opts{proto: 17, payload: udpPayload(1372)})},
		{"IPv6-1400", buildV6(v6opts{proto: 17, payload: udpPayload(1352)})},
		{"IPv4-64", buildV4(v4opts{proto: 17, payload: udpPayload(36)})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			done := make(chan struct{})
			dev := &benchDevice{pkt: bc.pkt, batch: 128, limit: int64(b.N), closed: make(chan struct{})}
			conn := &benchConn{limit: int64(b.N), onSent: func() { close(done) }}
			b.SetBytes(int64(len(bc.pkt)))
			runPumpBench(b, dev, conn, new(Stats), done)
		})
	}
}

// BenchmarkDownlink: ReceiveDatagram -> ParsePrefix -> Decode -> queue ->
// Writer batch (copy into large buffers) -> Device.Write, through Pump.Run.
// One op is one datagram. The fake connection keeps at most 1024 datagrams
// ahead of the device, so nothing is dropped.
func BenchmarkDownlink(b *testing.B) {
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{
		{"IPv4-1400", buildV4(v4opts{proto: 17, payload: udpPayload(1372)})},
		{"IPv6-1400", buildV6(v6opts{proto: 17, payload: udpPayload(1352)})},
		{"IPv4-64", buildV4(v4opts{proto: 17, payload: udpPayload(36)})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			done := make(chan struct{})
			st := new(Stats)
			n := int64(b.N)
			dev := &benchDevice{batch: 128, closed: make(chan struct{}), onWrite: func(total int64) {
				if total == n {
					close(done)
				}
			}}
			conn := &benchConn{limit: n, recv: append(AppendPrefix(nil, 1000, 0), bc.pkt...),
				window: 1024, written: dev.written.Load}
			b.SetBytes(int64(len(bc.pkt)))
			runPumpBench(b, dev, conn, st, done)
			if d := st.DropQueueFull.Load(); d != 0 {
				b.Fatalf("%d drops", d)
			}
			b.ReportMetric(float64(st.WritePackets.Load())/float64(max(st.WriteBatches.Load(), 1)), "pkts/write")
		})
	}
}

func BenchmarkDecodeIPv4(b *testing.B) {
	pkt := buildV4(v4opts{proto: 17, payload: udpPayload(1372)})
	var p Packet
	b.ReportAllocs()
	for b.Loop() {
		_ = p.Decode(pkt)
	}
}

func BenchmarkDecodeIPv6Ext(b *testing.B) {
	pkt := buildV6(v6opts{proto: 6, payload: udpPayload(100), exts: []ext{{typ: protoHopByHop, len: 8}, {typ: protoDestOpts, len: 16}}})
	var p Packet
	b.ReportAllocs()
	for b.Loop() {
		_ = p.Decode(pkt)
	}
}

func BenchmarkPutParsePrefix(b *testing.B) {
	buf := make([]byte, BufSize)
	b.ReportAllocs()
	for b.Loop() {
		start, _ := PutPrefix(buf, Headroom, 1000, 0)
		_, _, _, _ = ParsePrefix(buf[start:])
	}
}

func BenchmarkAppendTooBig(b *testing.B) {
	for _, bc := range []struct {
		name string
		pkt  []byte
	}{
		{"IPv4", buildV4(v4opts{proto: 17, df: true, payload: udpPayload(1372)})},
		{"IPv6", buildV6(v6opts{proto: 17, payload: udpPayload(1352)})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dst := make([]byte, 0, MaxTooBigLen)
			b.ReportAllocs()
			for b.Loop() {
				_, _ = AppendTooBig(dst, bc.pkt, 1300)
			}
		})
	}
}
