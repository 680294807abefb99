package datagram

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// --- packet builders -------------------------------------------------------

type v4opts struct {
	src, dst netip.Addr
	proto    uint8
	df       bool
	mf       bool
	fragOff  int // bytes, multiple of 8
	options  []byte
	payload  []byte
}

// buildV4 builds an IPv4 packet with a correct header checksum.
func buildV4(o v4opts) []byte {
	if !o.src.IsValid() {
		o.src = netip.MustParseAddr("10.0.0.2")
	}
	if !o.dst.IsValid() {
		o.dst = netip.MustParseAddr("192.0.2.1")
	}
	ihl := 20 + len(o.options)
	b := make([]byte, ihl+len(o.payload))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], 0x1234)
	frag := uint16(o.fragOff / 8)
	if o.df {
		frag |= 0x4000
	}
	if o.mf {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = 63
	b[9] = o.proto
	s, d := o.src.As4(), o.dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], o.options)
	copy(b[ihl:], o.payload)
	binary.BigEndian.PutUint16(b[10:], refChecksum(b[:ihl]))
	return b
}

// udpPayload returns an 8-byte UDP header followed by n bytes of pattern.
func udpPayload(n int) []byte {
	b := make([]byte, 8+n)
	binary.BigEndian.PutUint16(b[0:], 40000)
	binary.BigEndian.PutUint16(b[2:], 53)
	binary.BigEndian.PutUint16(b[4:], uint16(8+n))
	for i := 8; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	return b
}

// icmpMsg returns an ICMP(v6) message of the given type with n data bytes.
func icmpMsg(typ uint8, n int) []byte {
	b := make([]byte, 8+n)
	b[0] = typ
	for i := 8; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

type ext struct {
	typ  uint8 // 0, 43, 60, or 44 (fragment)
	len  int   // total bytes (multiple of 8); ignored for fragment
	frag int   // fragment offset in bytes (fragment only)
}

type v6opts struct {
	src, dst netip.Addr
	exts     []ext
	proto    uint8
	payload  []byte
}

// buildV6 builds an IPv6 packet with the given extension header chain.
func buildV6(o v6opts) []byte {
	if !o.src.IsValid() {
		o.src = netip.MustParseAddr("fd00::2")
	}
	if !o.dst.IsValid() {
		o.dst = netip.MustParseAddr("2001:db8::1")
	}
	b := make([]byte, 40, 40+len(o.payload)+64)
	b[0] = 0x60
	b[7] = 61
	s, d := o.src.As16(), o.dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	nhAt := 6
	for _, e := range o.exts {
		b[nhAt] = e.typ
		nhAt = len(b)
		if e.typ == protoFragment {
			h := make([]byte, 8)
			binary.BigEndian.PutUint16(h[2:], uint16(e.frag)|1)
			b = append(b, h...)
			continue
		}
		h := make([]byte, e.len)
		h[1] = byte(e.len/8 - 1)
		b = append(b, h...)
	}
	b[nhAt] = o.proto
	b = append(b, o.payload...)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

// refChecksum is an independent, deliberately naive Internet checksum.
func refChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// verifyICMP checks an ICMP reply built by AppendTooBig by recomputing its
// checksums, and returns its decoded header and the ICMP message.
func verifyICMP(t testing.TB, b []byte) (Packet, []byte) {
	t.Helper()
	var p Packet
	if err := p.Decode(b); err != nil {
		t.Fatalf("reply does not decode: %v", err)
	}
	if p.Len != len(b) {
		t.Fatalf("reply length %d, header says %d", len(b), p.Len)
	}
	msg := b[p.HdrLen:p.Len]
	switch p.Version {
	case 4:
		if refChecksum(b[:p.HdrLen]) != 0 {
			t.Fatalf("IPv4 header checksum wrong")
		}
		if p.Proto != 1 {
			t.Fatalf("IPv4 protocol %d, want 1", p.Proto)
		}
		if refChecksum(msg) != 0 {
			t.Fatalf("ICMP checksum wrong")
		}
	case 6:
		if p.Proto != 58 || p.HdrLen != 40 {
			t.Fatalf("IPv6 next header %d hdrlen %d, want 58/40", p.Proto, p.HdrLen)
		}
		pseudo := append([]byte{}, b[8:40]...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(msg)))
		pseudo = append(pseudo, 0, 0, 0, 58)
		if refChecksum(append(pseudo, msg...)) != 0 {
			t.Fatalf("ICMPv6 checksum wrong")
		}
	}
	return p, msg
}

// --- fakes ----------------------------------------------------------------

// chanDevice is a channel-backed Device: tests put packets into in (they
// come out of Read) and take written packets from out.
type chanDevice struct {
	in        chan []byte
	out       chan []byte
	batch     int
	closeOnce sync.Once
	closed    chan struct{}

	mu       sync.Mutex
	writeErr error // returned (once) by the next Write, guarded by mu
	batches  []int // sizes of Write batches, guarded by mu
	caps     []int // cap(bufs[i])-offset seen by Write, guarded by mu
}

func newChanDevice(batch int) *chanDevice {
	return &chanDevice{
		in:     make(chan []byte, 1024),
		out:    make(chan []byte, 1024),
		batch:  batch,
		closed: make(chan struct{}),
	}
}

func (d *chanDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	case p := <-d.in:
		sizes[0] = copy(bufs[0][offset:], p)
	}
	n := 1
	for n < len(bufs) {
		select {
		case p := <-d.in:
			sizes[n] = copy(bufs[n][offset:], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (d *chanDevice) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, fmt.Errorf("write tun: %w", os.ErrClosed)
	default:
	}
	d.mu.Lock()
	err := d.writeErr
	d.writeErr = nil
	d.batches = append(d.batches, len(bufs))
	for _, b := range bufs {
		d.caps = append(d.caps, cap(b)-offset)
	}
	d.mu.Unlock()
	if err != nil {
		return 0, err
	}
	for _, b := range bufs {
		d.out <- append([]byte(nil), b[offset:]...)
	}
	return len(bufs), nil
}

func (d *chanDevice) BatchSize() int    { return d.batch }
func (d *chanDevice) MTU() (int, error) { return 1400, nil }
func (d *chanDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}

// recv waits for the next written packet.
func (d *chanDevice) recv(t testing.TB) []byte {
	t.Helper()
	select {
	case p := <-d.out:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no packet written to the device")
		return nil
	}
}

// tooLargeError mimics quic-go's *DatagramTooLargeError.
type tooLargeError struct{ max int }

func (e *tooLargeError) Error() string { return fmt.Sprintf("datagram too large (max %d)", e.max) }

func tooLarge(err error) (int, bool) {
	var e *tooLargeError
	if errors.As(err, &e) {
		return e.max, true
	}
	return 0, false
}

var errConnClosed = errors.New("fake conn closed")

// chanConn is one end of a channel-backed DatagramConn pair.
type chanConn struct {
	inbox     chan []byte // datagrams for this end
	peer      *chanConn
	maxSize   int // datagrams above this fail with *tooLargeError (0: no limit)
	closeOnce sync.Once
	closed    chan struct{}
}

func newConnPair() (*chanConn, *chanConn) {
	a := &chanConn{inbox: make(chan []byte, 256), closed: make(chan struct{})}
	b := &chanConn{inbox: make(chan []byte, 256), closed: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

func (c *chanConn) SendDatagram(p []byte) error {
	if c.maxSize > 0 && len(p) > c.maxSize {
		return &tooLargeError{max: c.maxSize}
	}
	cp := append([]byte(nil), p...)
	select {
	case c.peer.inbox <- cp:
		return nil
	case <-c.closed:
		return errConnClosed
	}
}

func (c *chanConn) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	select {
	case p := <-c.inbox:
		return p, nil
	case <-c.closed:
		return nil, errConnClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *chanConn) Close() { c.closeOnce.Do(func() { close(c.closed) }) }

// waitFor polls cond until it holds (generous deadline; not a timing
// assertion).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkGoroutines fails the test if goroutines started during it are still
// running at cleanup.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
