package systack

import (
	"context"
	"net/netip"
	"os"
	"testing"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/flow"
)

// fakeDev is a device whose Read returns the packets in pkts (then
// os.ErrClosed) and whose Write keeps copies of what it is given (or only
// counts them if count is set).
type fakeDev struct {
	pkts    [][]byte
	written [][]byte
	count   bool
	n       int
}

func (d *fakeDev) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(d.pkts) == 0 {
		return 0, os.ErrClosed
	}
	n := 0
	for n < len(bufs) && len(d.pkts) > 0 {
		sizes[n] = copy(bufs[n][offset:], d.pkts[0])
		d.pkts = d.pkts[1:]
		n++
	}
	return n, nil
}

func (d *fakeDev) Write(bufs [][]byte, offset int) (int, error) {
	d.n += len(bufs)
	if !d.count {
		for _, b := range bufs {
			d.written = append(d.written, append([]byte(nil), b[offset:]...))
		}
	}
	return len(bufs), nil
}

func (d *fakeDev) BatchSize() int    { return 8 }
func (d *fakeDev) MTU() (int, error) { return 1500, nil }
func (d *fakeDev) Close() error      { return nil }

// newTestStack is a Stack on dev without a listener or accept loop (its
// port is lnPrt): enough for Read and the rewrite path.
func newTestStack(dev *fakeDev) *Stack {
	s := &Stack{
		cfg:    Config{Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) { return nil, nil }},
		dev:    dev,
		port:   lnPrt,
		v6:     true,
		nat:    newNATTable(64, lnPrt),
		rbufs:  make([][]byte, dev.BatchSize()),
		rsizes: make([]int, dev.BatchSize()),
		wb:     make([][]byte, 0, dev.BatchSize()),
	}
	for i := range s.rbufs {
		s.rbufs[i] = make([]byte, bufSize)
	}
	return s
}

func newBufs(n int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, datagram.BufSize)
	}
	return bufs, make([]int, n)
}

// TestRead drives Read with a batch: the application's SYN and data are
// rewritten toward the listener and written back, the listener's answer
// is rewritten back, and the rest reaches the caller in order.
func TestRead(t *testing.T) {
	udp := buildTCP(tcpSpec{src: app4, dst: dst4})
	udp[9] = 17 // not TCP: the caller's, unchecked
	inbound := buildTCP(tcpSpec{src: netip.MustParseAddrPort("10.9.0.2:22"), dst: netip.MustParseAddrPort("192.0.2.9:40000"), flags: flagSYN | flagACK})
	dev := &fakeDev{pkts: [][]byte{
		buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagSYN, seq: 1}),
		udp,
		buildTCP(tcpSpec{src: app6, dst: dst6, flags: flagSYN, seq: 1}),
		inbound, // no entry, not a SYN: passed
		buildTCP(tcpSpec{src: netip.AddrPortFrom(app4.Addr(), lnPrt), dst: netip.AddrPortFrom(dst4.Addr(), minNATPort), flags: flagSYN | flagACK}),
		buildTCP(tcpSpec{src: netip.AddrPortFrom(app4.Addr(), lnPrt), dst: netip.AddrPortFrom(dst4.Addr(), 5555), flags: flagACK}), // no entry: dropped
		buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagACK, payload: []byte("data")}),
	}}
	s := newTestStack(dev)
	bufs, sizes := newBufs(8)
	n, err := s.Read(bufs, sizes, datagram.Headroom)
	if err != nil || n != 2 {
		t.Fatalf("Read: %d, %v; want the UDP and the inbound packet", n, err)
	}
	if string(bufs[0][datagram.Headroom:datagram.Headroom+sizes[0]]) != string(udp) ||
		string(bufs[1][datagram.Headroom:datagram.Headroom+sizes[1]]) != string(inbound) {
		t.Fatal("passed packets changed or out of order")
	}
	want := [][]byte{
		buildTCP(tcpSpec{src: netip.AddrPortFrom(dst4.Addr(), minNATPort), dst: netip.AddrPortFrom(app4.Addr(), lnPrt), flags: flagSYN, seq: 1}),
		buildTCP(tcpSpec{src: netip.AddrPortFrom(dst6.Addr(), minNATPort+1), dst: netip.AddrPortFrom(app6.Addr(), lnPrt), flags: flagSYN, seq: 1}),
		buildTCP(tcpSpec{src: dst4, dst: app4, flags: flagSYN | flagACK}),
		buildTCP(tcpSpec{src: netip.AddrPortFrom(dst4.Addr(), minNATPort), dst: netip.AddrPortFrom(app4.Addr(), lnPrt), flags: flagACK, payload: []byte("data")}),
	}
	if len(dev.written) != len(want) {
		t.Fatalf("wrote %d packets, want %d", len(dev.written), len(want))
	}
	for i, w := range want {
		hdr := 20
		if w[0]>>4 == 6 {
			hdr = 40
		}
		if !equalButChecksum(dev.written[i], w, hdr) || !checksumsOK(dev.written[i], hdr) {
			t.Errorf("written %d:\n got %x\nwant %x", i, dev.written[i], w)
		}
	}
	st := s.Stats()
	if st.PacketsToListener != 3 || st.PacketsToApp != 1 || st.PacketsPassed != 1 || st.DropNoEntry != 1 || st.NATActive != 2 {
		t.Errorf("stats %+v", st)
	}
	if _, err := s.Read(bufs, sizes, datagram.Headroom); err != os.ErrClosed {
		t.Errorf("Read at the end: %v", err)
	}
}

// TestRewritePathZeroAllocs: the Read batch of established connections'
// packets, both ways, allocates nothing.
func TestRewritePathZeroAllocs(t *testing.T) {
	dev := &fakeDev{count: true, pkts: [][]byte{
		buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagSYN}),
		buildTCP(tcpSpec{src: app6, dst: dst6, flags: flagSYN}),
	}}
	s := newTestStack(dev)
	bufs, sizes := newBufs(8)
	s.Read(bufs, sizes, datagram.Headroom)
	payload := make([]byte, 1400)
	batch := [][]byte{
		buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagACK, payload: payload}),
		buildTCP(tcpSpec{src: netip.AddrPortFrom(app4.Addr(), lnPrt), dst: netip.AddrPortFrom(dst4.Addr(), minNATPort), flags: flagACK, payload: payload}),
		buildTCP(tcpSpec{src: app6, dst: dst6, flags: flagACK, payload: payload}),
		buildTCP(tcpSpec{src: netip.AddrPortFrom(app6.Addr(), lnPrt), dst: netip.AddrPortFrom(dst6.Addr(), minNATPort+1), flags: flagACK, payload: payload}),
	}
	before := dev.n
	allocs := testing.AllocsPerRun(100, func() {
		for i, p := range batch {
			s.rsizes[i] = copy(s.rbufs[i][headroom:], p)
		}
		if k := s.process(bufs, sizes, datagram.Headroom, len(batch)); k != 0 {
			t.Fatalf("process passed %d packets", k)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per batch, want 0", allocs)
	}
	if dev.n-before < 100*len(batch) {
		t.Errorf("wrote %d packets, want %d", dev.n-before, 100*len(batch))
	}
}

// FuzzRead: Read never panics on any batch of bytes, and what it writes
// back parses as a TCP packet.
func FuzzRead(f *testing.F) {
	f.Add(buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagSYN}), buildTCP(tcpSpec{src: netip.AddrPortFrom(app4.Addr(), lnPrt), dst: netip.AddrPortFrom(dst4.Addr(), minNATPort), flags: flagACK}))
	f.Add(buildTCP(tcpSpec{src: app6, dst: dst6, flags: flagSYN, v6ext: true}), []byte{0x60})
	s := newTestStack(&fakeDev{}) // shared: its NAT table fills up over the run
	bufs, sizes := newBufs(8)
	f.Fuzz(func(t *testing.T, a, b []byte) {
		dev := &fakeDev{pkts: [][]byte{a, b, a}}
		s.dev = dev
		for {
			if _, err := s.Read(bufs, sizes, datagram.Headroom); err != nil {
				break
			}
		}
		for _, w := range dev.written {
			var p datagram.Packet
			var tp tcpPacket
			if parseTCP(w, &p, &tp) != isTCP {
				t.Fatalf("wrote %x", w)
			}
		}
	})
}

// BenchmarkProcess is the Read batch step for established connections'
// packets (half to the listener, half back), without the device: the
// Stack's own cost per packet (parse, NAT lookup, rewrite), under one lock
// per batch.
func BenchmarkProcess(b *testing.B) {
	dev := &fakeDev{count: true, pkts: [][]byte{buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagSYN})}}
	s := newTestStack(dev)
	bufs, sizes := newBufs(8)
	s.Read(bufs, sizes, datagram.Headroom)
	payload := make([]byte, 1348)
	fwd := buildTCP(tcpSpec{src: app4, dst: dst4, flags: flagACK, payload: payload})
	rev := buildTCP(tcpSpec{src: netip.AddrPortFrom(app4.Addr(), lnPrt), dst: netip.AddrPortFrom(dst4.Addr(), minNATPort), flags: flagACK})
	b.ReportAllocs()
	for b.Loop() {
		for i := range s.rbufs {
			p := fwd
			if i%2 == 1 {
				p = rev
			}
			// Only the headers change: refresh them, not the payload.
			s.rsizes[i] = len(p)
			copy(s.rbufs[i][headroom:headroom+40], p[:40])
		}
		s.process(bufs, sizes, datagram.Headroom, len(s.rbufs))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(s.rbufs)), "ns/packet")
}
