package datagram

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"
)

const testQSID = 1000 // a 2-byte varint; with context ID 0 the prefix is 3 bytes

// side is one end of a test tunnel: a pump between a fake device and one
// end of a fake connection.
type side struct {
	dev   *chanDevice
	conn  *chanConn
	stats *Stats
	pump  *Pump
	done  chan error
}

func startSide(t *testing.T, ctx context.Context, conn *chanConn, configure func(*Pump)) *side {
	t.Helper()
	s := &side{dev: newChanDevice(8), conn: conn, stats: new(Stats), done: make(chan error, 1)}
	s.pump = &Pump{
		Dev:             s.dev,
		Conn:            conn,
		QuarterStreamID: testQSID,
		TooLarge:        tooLarge,
		Stats:           s.stats,
		OnStop:          func() { s.dev.Close() },
	}
	if configure != nil {
		configure(s.pump)
	}
	go func() { s.done <- s.pump.Run(ctx) }()
	t.Cleanup(func() {
		s.dev.Close()
		<-s.done
	})
	return s
}

// newTunnel starts two pumps connected through a fake connection pair.
func newTunnel(t *testing.T, ctx context.Context) (a, b *side) {
	ca, cb := newConnPair()
	t.Cleanup(func() { ca.Close(); cb.Close() })
	return startSide(t, ctx, ca, nil), startSide(t, ctx, cb, nil)
}

func TestPumpBothWays(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := newTunnel(t, ctx)

	var pkts [][]byte
	for _, n := range []int{0, 1, 100, 1000, 1372} {
		pkts = append(pkts,
			buildV4(v4opts{proto: 17, payload: udpPayload(n)}),
			buildV6(v6opts{proto: 17, payload: udpPayload(n), exts: []ext{{typ: protoDestOpts, len: 8}}}))
	}
	var total uint64
	for _, p := range pkts {
		a.dev.in <- p
		b.dev.in <- p
		total += uint64(len(p))
	}
	for i, p := range pkts {
		if got := b.dev.recv(t); !bytes.Equal(got, p) {
			t.Fatalf("a->b packet %d differs", i)
		}
		if got := a.dev.recv(t); !bytes.Equal(got, p) {
			t.Fatalf("b->a packet %d differs", i)
		}
	}
	for _, s := range []*side{a, b} {
		waitFor(t, "counters", func() bool { return s.stats.RxPackets.Load() == uint64(len(pkts)) })
		if s.stats.TxPackets.Load() != uint64(len(pkts)) || s.stats.TxBytes.Load() != total || s.stats.RxBytes.Load() != total {
			t.Fatalf("counters: tx %d/%d rx %d/%d, want %d/%d", s.stats.TxPackets.Load(), s.stats.TxBytes.Load(),
				s.stats.RxPackets.Load(), s.stats.RxBytes.Load(), len(pkts), total)
		}
	}
}

func TestPumpWireFormat(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, cb := newConnPair()
	a := startSide(t, ctx, ca, nil)
	pkt := buildV4(v4opts{proto: 17, payload: udpPayload(10)})
	a.dev.in <- append(append([]byte{}, pkt...), 0xde, 0xad) // trailing bytes beyond the total length are not sent
	d, err := cb.ReceiveDatagram(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := append(AppendPrefix(nil, testQSID, 0), pkt...)
	if !bytes.Equal(d, want) {
		t.Fatalf("datagram\n %x\nwant\n %x", d, want)
	}
}

func TestPumpTooLarge(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, cb := newConnPair()
	ca.maxSize = 1300
	a := startSide(t, ctx, ca, nil)
	startSide(t, ctx, cb, nil)
	wantMTU := 1300 - PrefixLen(testQSID, 0)

	tests := []struct {
		name    string
		pkt     []byte
		wantMTU uint32
	}{
		{"IPv4 DF", buildV4(v4opts{proto: 6, df: true, payload: udpPayload(1400)}), uint32(wantMTU)},
		{"IPv6", buildV6(v6opts{proto: 6, payload: udpPayload(1400)}), uint32(wantMTU)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a.dev.in <- tt.pkt
			reply := a.dev.recv(t)
			p, msg := verifyICMP(t, reply)
			var o Packet
			if err := o.Decode(tt.pkt); err != nil {
				t.Fatal(err)
			}
			if p.Src != o.Dst || p.Dst != o.Src {
				t.Fatalf("reply %v -> %v, want %v -> %v", p.Src, p.Dst, o.Dst, o.Src)
			}
			var mtu uint32
			if p.Version == 4 {
				mtu = uint32(binary.BigEndian.Uint16(msg[6:]))
			} else {
				mtu = binary.BigEndian.Uint32(msg[4:])
			}
			if mtu != tt.wantMTU {
				t.Fatalf("MTU in reply %d, want %d", mtu, tt.wantMTU)
			}
			if !bytes.HasPrefix(tt.pkt, msg[8:]) || len(msg[8:]) < o.HdrLen+8 {
				t.Fatal("reply does not quote the original packet")
			}
		})
	}
	// IPv4 without DF: dropped, counted, no reply; the pump keeps running.
	a.dev.in <- buildV4(v4opts{proto: 6, payload: udpPayload(1400)})
	small := buildV4(v4opts{proto: 6, payload: udpPayload(10)})
	a.dev.in <- small
	waitFor(t, "the small packet to be sent", func() bool { return a.stats.TxPackets.Load() == 1 })
	if got, want := a.stats.DropTooBig.Load(), uint64(3); got != want {
		t.Fatalf("DropTooBig = %d, want %d", got, want)
	}
	if got := a.stats.ICMPTooBig.Load(); got != 2 {
		t.Fatalf("ICMPTooBig = %d, want 2", got)
	}
	select {
	case p := <-a.dev.out:
		t.Fatalf("unexpected packet written back: %x", p[:20])
	default:
	}
}

func TestPumpReceiveDrops(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, cb := newConnPair()
	b := startSide(t, ctx, cb, nil)
	good := buildV4(v4opts{proto: 17, payload: udpPayload(30)})
	good6 := buildV6(v6opts{proto: 17, payload: udpPayload(30)})

	tests := []struct {
		name  string
		dgram []byte
		get   func(*Stats) uint64
	}{
		{name: "context ID 7", dgram: append(AppendPrefix(nil, testQSID, 7), good...), get: func(s *Stats) uint64 { return s.DropContext.Load() }},
		{name: "context ID 2^62-1", dgram: append(AppendPrefix(nil, testQSID, 1<<62-1), good...), get: func(s *Stats) uint64 { return s.DropContext.Load() }},
		{name: "other stream", dgram: append(AppendPrefix(nil, testQSID+1, 0), good...), get: func(s *Stats) uint64 { return s.DropStream.Load() }},
		{name: "truncated prefix", dgram: []byte{0x43}, get: func(s *Stats) uint64 { return s.DropMalformed.Load() }},
		{name: "empty datagram", dgram: []byte{}, get: func(s *Stats) uint64 { return s.DropMalformed.Load() }},
		{name: "empty packet", dgram: AppendPrefix(nil, testQSID, 0), get: func(s *Stats) uint64 { return s.DropMalformed.Load() }},
		{name: "bad version", dgram: append(AppendPrefix(nil, testQSID, 0), 0x55, 1, 2, 3), get: func(s *Stats) uint64 { return s.DropMalformed.Load() }},
		{name: "truncated packet", dgram: append(AppendPrefix(nil, testQSID, 0), good[:30]...), get: func(s *Stats) uint64 { return s.DropMalformed.Load() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.get(b.stats)
			if err := ca.SendDatagram(tt.dgram); err != nil {
				t.Fatal(err)
			}
			// A good packet behind it still arrives: the pump keeps running,
			// and since datagrams are handled in order, the drop is counted.
			if err := ca.SendDatagram(append(AppendPrefix(nil, testQSID, 0), good6...)); err != nil {
				t.Fatal(err)
			}
			if got := b.dev.recv(t); !bytes.Equal(got, good6) {
				t.Fatal("good packet after the bad one differs")
			}
			if got := tt.get(b.stats); got != before+1 {
				t.Fatalf("counter %d -> %d, want +1", before, got)
			}
		})
	}
	if n := b.stats.RxPackets.Load(); n != uint64(len(tests)) {
		t.Fatalf("RxPackets = %d, want %d", n, len(tests))
	}
	// Every datagram taken from the connection counts, dropped or not.
	if n := b.stats.RxDatagrams.Load(); n != uint64(2*len(tests)) {
		t.Fatalf("RxDatagrams = %d, want %d", n, 2*len(tests))
	}
}

func TestPumpDeviceDrops(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, cb := newConnPair()
	blocked := netip.MustParseAddr("10.9.9.9")
	a := startSide(t, ctx, ca, func(p *Pump) {
		p.Allow = func(pk *Packet) DropReason {
			switch {
			case pk.Src == blocked:
				return DropReasonSrc
			case pk.Dst == blocked:
				return DropReasonDst
			case pk.Proto == 47:
				return DropReasonPolicy
			}
			return NoDrop
		}
	})
	b := startSide(t, ctx, cb, func(p *Pump) {
		p.AllowIn = func(pk *Packet) DropReason {
			if pk.Proto == 132 {
				return DropReasonDst
			}
			return NoDrop
		}
	})
	good := buildV4(v4opts{proto: 17, payload: udpPayload(30)})
	for _, p := range [][]byte{
		{0x45, 0, 0},               // malformed
		{0x60},                     // malformed
		make([]byte, MaxPacketLen), // all zeros: bad version
		buildV4(v4opts{src: blocked, proto: 17}),
		buildV4(v4opts{dst: blocked, proto: 17}),
		buildV6(v6opts{proto: 47}),
		buildV4(v4opts{proto: 132}), // passes a, dropped by b's AllowIn
		good,
	} {
		a.dev.in <- p
	}
	if got := b.dev.recv(t); !bytes.Equal(got, good) {
		t.Fatal("good packet differs")
	}
	waitFor(t, "counters", func() bool { return a.stats.TxPackets.Load() == 2 })
	for name, got := range map[string]uint64{
		"DropMalformed": a.stats.DropMalformed.Load(), "DropSrc": a.stats.DropSrc.Load(),
		"DropDst": a.stats.DropDst.Load(), "DropPolicy": a.stats.DropPolicy.Load(), "b.DropDst": b.stats.DropDst.Load(),
	} {
		want := uint64(1)
		if name == "DropMalformed" {
			want = 3
		}
		if got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
}

func TestPumpStop(t *testing.T) {
	pkt := buildV4(v4opts{proto: 17, payload: udpPayload(30)})
	t.Run("context cancelled", func(t *testing.T) {
		checkGoroutines(t)
		ctx, cancel := context.WithCancel(context.Background())
		ca, cb := newConnPair()
		defer cb.Close()
		a := startSide(t, ctx, ca, nil)
		a.dev.in <- pkt
		if _, err := cb.ReceiveDatagram(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-a.done; err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		a.done <- nil // for the cleanup
	})
	t.Run("device closed", func(t *testing.T) {
		checkGoroutines(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ca, _ := newConnPair()
		a := startSide(t, ctx, ca, func(p *Pump) { p.OnStop = nil })
		a.dev.Close()
		if err := <-a.done; err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		a.done <- nil
	})
	t.Run("connection fails", func(t *testing.T) {
		checkGoroutines(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ca, _ := newConnPair()
		a := startSide(t, ctx, ca, nil) // OnStop closes the device
		ca.Close()
		err := <-a.done
		if !errors.Is(err, errConnClosed) {
			t.Fatalf("Run = %v, want the connection's error", err)
		}
		a.done <- nil
	})
	t.Run("send fails", func(t *testing.T) {
		checkGoroutines(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ca, _ := newConnPair()
		a := startSide(t, ctx, ca, func(p *Pump) { p.TooLarge = nil })
		ca.maxSize = 10 // every send fails; without TooLarge that is fatal
		a.dev.in <- pkt
		var tl *tooLargeError
		if err := <-a.done; !errors.As(err, &tl) {
			t.Fatalf("Run = %v, want the send error", err)
		}
		a.done <- nil
	})
	t.Run("missing fields", func(t *testing.T) {
		ca, _ := newConnPair()
		for _, p := range []*Pump{
			{Conn: ca, Stats: new(Stats)},
			{Dev: newChanDevice(1), Stats: new(Stats)},
			{Dev: newChanDevice(1), Conn: ca},
			{Dev: newChanDevice(1), Conn: ca, Stats: new(Stats), QuarterStreamID: 1 << 62},
		} {
			if err := p.Run(context.Background()); err == nil {
				t.Errorf("Run with %+v succeeded", p)
			}
		}
	})
}

// flakyDevice fails every Read.
type flakyDevice struct{ *chanDevice }

func (d flakyDevice) Read([][]byte, []int, int) (int, error) { return 0, errors.New("EIO") }

func TestPumpReadErrors(t *testing.T) {
	checkGoroutines(t)
	ca, _ := newConnPair()
	dev := flakyDevice{newChanDevice(4)}
	st := new(Stats)
	p := &Pump{Dev: dev, Conn: ca, Stats: st}
	err := p.Run(context.Background())
	if err == nil || st.ReadErrors.Load() != maxConsecutiveReadErrors {
		t.Fatalf("Run = %v, ReadErrors = %d; want an error after %d failures", err, st.ReadErrors.Load(), maxConsecutiveReadErrors)
	}
}

func TestPumpOmitQuarterStreamID(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, cb := newConnPair()
	ca.maxSize = 1300
	omit := func(p *Pump) { p.OmitQuarterStreamID = true }
	a := startSide(t, ctx, ca, omit)
	pkt := buildV6(v6opts{proto: 17, payload: udpPayload(40)})

	// On the wire: only the context ID (0x00), then the packet.
	a.dev.in <- pkt
	d, err := cb.ReceiveDatagram(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d, append([]byte{0}, pkt...)) {
		t.Fatalf("datagram %x, want 00 + packet", d[:8])
	}

	// Receiving: context 0 delivered, others dropped, truncated varint malformed.
	for _, dg := range [][]byte{{0x05, 0x45}, {0x40}, append([]byte{0x40, 0x00}, pkt...)} {
		if err := cb.SendDatagram(dg); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.dev.recv(t); !bytes.Equal(got, pkt) {
		t.Fatal("packet differs")
	}
	if a.stats.DropContext.Load() != 1 || a.stats.DropMalformed.Load() != 1 || a.stats.DropStream.Load() != 0 {
		t.Fatalf("DropContext %d DropMalformed %d DropStream %d", a.stats.DropContext.Load(), a.stats.DropMalformed.Load(), a.stats.DropStream.Load())
	}

	// The ICMP MTU still accounts for the quarter stream ID the Conn adds.
	a.dev.in <- buildV6(v6opts{proto: 17, payload: udpPayload(1400)})
	_, msg := verifyICMP(t, a.dev.recv(t))
	if got, want := binary.BigEndian.Uint32(msg[4:]), uint32(1300-PrefixLen(testQSID, 0)); got != want {
		t.Fatalf("MTU %d, want %d", got, want)
	}
}

// TestPumpLinks: a failing link pauses the pump and is reported once; a
// new link resumes both directions; a nil link drops and counts.
func TestPumpLinks(t *testing.T) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ca, cb := newConnPair()
	failed := make(chan *Link, 4)
	var pump *Pump
	a := startSide(t, ctx, ca, func(p *Pump) {
		p.OnLinkError = func(l *Link, err error) { failed <- l }
		pump = p
	})
	pkt := buildV6(v6opts{proto: 17, payload: udpPayload(40)})

	// Paused: dropped and counted, nothing sent.
	if err := pump.SetLink(nil); err != nil {
		t.Fatal(err)
	}
	a.dev.in <- pkt
	waitFor(t, "DropNoLink", func() bool { return a.stats.DropNoLink.Load() == 1 })

	// A second link with another quarter stream ID carries both ways.
	cc, cd := newConnPair()
	l2 := &Link{Conn: cc, QuarterStreamID: 7}
	if err := pump.SetLink(l2); err != nil {
		t.Fatal(err)
	}
	ca.Close() // the caller closes the replaced link; that is not a failure
	a.dev.in <- pkt
	d, err := cd.ReceiveDatagram(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d, append(AppendPrefix(nil, 7, 0), pkt...)) {
		t.Fatalf("datagram %x", d[:4])
	}
	if err := cd.SendDatagram(append(AppendPrefix(nil, 7, 0), pkt...)); err != nil {
		t.Fatal(err)
	}
	if got := a.dev.recv(t); !bytes.Equal(got, pkt) {
		t.Fatal("packet differs")
	}
	_ = cb
	select {
	case l := <-failed:
		t.Fatalf("closing the replaced link was reported as a failure of %p", l)
	default:
	}

	// A receive failure on the current link unsets it and reports it once;
	// Run goes on.
	cc.Close()
	select {
	case l := <-failed:
		if l != l2 {
			t.Fatalf("reported %p, want %p", l, l2)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("link failure not reported")
	}
	a.dev.in <- pkt
	waitFor(t, "DropNoLink after failure", func() bool { return a.stats.DropNoLink.Load() == 2 })
	select {
	case err := <-a.done:
		t.Fatalf("Run ended: %v", err)
	default:
	}
	if err := pump.SetLink(&Link{Conn: cc, QuarterStreamID: 1 << 62}); err == nil {
		t.Fatal("SetLink accepted a QuarterStreamID of 2^62")
	}
}
