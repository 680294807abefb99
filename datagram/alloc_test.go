package datagram

import (
	"context"
	"testing"
)

// assertNoAllocs fails if f allocates.
func assertNoAllocs(t *testing.T, name string, f func()) {
	t.Helper()
	if n := testing.AllocsPerRun(200, f); n != 0 {
		t.Errorf("%s: %v allocations per run, want 0", name, n)
	}
}

func TestZeroAllocs(t *testing.T) {
	v4 := buildV4(v4opts{proto: 17, df: true, payload: udpPayload(1372)})
	v6 := buildV6(v6opts{proto: 6, payload: udpPayload(1300), exts: []ext{{typ: protoHopByHop, len: 8}, {typ: protoFragment}}})
	bad := v4[:30]
	var p Packet
	assertNoAllocs(t, "Decode IPv4", func() { _ = p.Decode(v4) })
	assertNoAllocs(t, "Decode IPv6 with extension headers", func() { _ = p.Decode(v6) })
	assertNoAllocs(t, "Decode error", func() { _ = p.Decode(bad) })
	_ = p.Decode(v4)
	assertNoAllocs(t, "Ports", func() { _, _, _ = p.Ports(v4) })

	buf := make([]byte, BufSize)
	assertNoAllocs(t, "PutPrefix", func() { _, _ = PutPrefix(buf, Headroom, 1<<40, 0) })
	assertNoAllocs(t, "PutPrefix error", func() { _, _ = PutPrefix(buf, 1, 1<<40, 0) })
	dgram := append(AppendPrefix(nil, 1000, 0), v4...)
	assertNoAllocs(t, "ParsePrefix", func() { _, _, _, _ = ParsePrefix(dgram) })
	assertNoAllocs(t, "ParsePrefix error", func() { _, _, _, _ = ParsePrefix(dgram[:1]) })
	assertNoAllocs(t, "AppendPrefix into capacity", func() { _ = AppendPrefix(buf[:0], 1000, 0) })

	icmp := make([]byte, 0, MaxTooBigLen)
	assertNoAllocs(t, "AppendTooBig IPv4", func() { _, _ = AppendTooBig(icmp[:0], v4, 1200) })
	assertNoAllocs(t, "AppendTooBig IPv6", func() { _, _ = AppendTooBig(icmp[:0], v6, 1200) })
	assertNoAllocs(t, "AppendTooBig refused", func() { _, _ = AppendTooBig(icmp[:0], bad, 1200) })
}

// nopConn is a DatagramConn whose SendDatagram copies into a reusable
// buffer, like quic-go's copy but without the allocation, and whose
// ReceiveDatagram hands out one prepared datagram (shared, read-only).
type nopConn struct {
	sendBuf  [BufSize]byte
	sent     int
	tooLarge int // SendDatagram fails above this size (0: never)
	recv     []byte
}

func (c *nopConn) SendDatagram(p []byte) error {
	if c.tooLarge > 0 && len(p) > c.tooLarge {
		return errTooLargeStatic
	}
	copy(c.sendBuf[:], p)
	c.sent++
	return nil
}

func (c *nopConn) ReceiveDatagram(context.Context) ([]byte, error) { return c.recv, nil }

var errTooLargeStatic = &tooLargeError{max: 1200}

// nopDevice is a Device whose Write discards and whose Read is unused.
type nopDevice struct {
	chanDevice
	written int
}

func (d *nopDevice) Write(bufs [][]byte, offset int) (int, error) {
	d.written += len(bufs)
	return len(bufs), nil
}

// TestPathZeroAllocs drives the uplink batch step, the receive step and the
// writer's batch step directly (no goroutines), proving the packet path
// allocates nothing in steady state.
func TestPathZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	v4 := buildV4(v4opts{proto: 17, df: true, payload: udpPayload(1372)})
	v6 := buildV6(v6opts{proto: 17, payload: udpPayload(1352)})
	dev := &nopDevice{chanDevice: chanDevice{batch: 32}}
	conn := &nopConn{}
	st := new(Stats)
	// errors.As allocates (its target escapes), so this TooLarge uses a type
	// assertion; the allocation would be the caller's, once per too-large
	// packet, not the pump's.
	noAllocTooLarge := func(err error) (int, bool) {
		if e, ok := err.(*tooLargeError); ok {
			return e.max, true
		}
		return 0, false
	}
	p := &Pump{Dev: dev, Conn: conn, QuarterStreamID: 1000, Stats: st, TooLarge: noAllocTooLarge,
		Allow: func(pk *Packet) DropReason {
			if pk.Proto == 47 {
				return DropReasonPolicy
			}
			return NoDrop
		}}
	w := NewWriter(dev, st, 64)
	r := newReader(p, w, discardLogger())
	for i := range r.bufs {
		pkt := v4
		if i%2 == 1 {
			pkt = v6
		}
		r.sizes[i] = copy(r.bufs[i][Headroom:], pkt)
	}
	assertNoAllocs(t, "uplink batch", func() {
		if err := r.batch(len(r.bufs)); err != nil {
			t.Fatal(err)
		}
	})
	if conn.sent == 0 || st.TxPackets.Load() != uint64(conn.sent) {
		t.Fatalf("sent %d, TxPackets %d", conn.sent, st.TxPackets.Load())
	}

	// Too-large path: ICMP reply built into the reader's scratch and queued.
	conn.tooLarge = 1200
	wb := newWriteBatch(dev.BatchSize())
	ctx := context.Background()
	assertNoAllocs(t, "uplink batch, all too large, and the writer", func() {
		if err := r.batch(4); err != nil {
			t.Fatal(err)
		}
		w.fill(wb)
		w.flush(ctx, wb)
	})
	if st.ICMPTooBig.Load() == 0 || st.ICMPTooBig.Load() != st.DropTooBig.Load() {
		t.Fatalf("ICMPTooBig %d DropTooBig %d", st.ICMPTooBig.Load(), st.DropTooBig.Load())
	}

	// Downlink: received datagram -> checks -> queue -> batch -> Write.
	conn.recv = append(AppendPrefix(nil, 1000, 0), v4...)
	var pkt Packet
	before := dev.written
	assertNoAllocs(t, "downlink datagram and writer batch", func() {
		for range 8 {
			b, _ := conn.ReceiveDatagram(ctx)
			p.handleDatagram(b, &pkt, w, p.link.Load())
		}
		w.fill(wb)
		w.flush(ctx, wb)
	})
	if dev.written-before == 0 || st.DropQueueFull.Load() != 0 {
		t.Fatalf("written %d, DropQueueFull %d", dev.written-before, st.DropQueueFull.Load())
	}
	assertNoAllocs(t, "Writer.Enqueue (copying) and batch", func() {
		for range 8 {
			w.Enqueue(v6)
		}
		w.fill(wb)
		w.flush(ctx, wb)
	})
	wb.free()
	r.free()
}
