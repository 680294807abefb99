package datagram

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
)

// DefaultQueueLen is the Writer queue length used when none is given.
const DefaultQueueLen = 1024

// queued is one packet waiting for the Writer. pkt is the packet; small or
// large is the pooled buffer behind it (returned to its pool after the
// write), or both are nil when pkt was handed over by EnqueueOwned.
type queued struct {
	pkt   []byte
	small *[BufSize]byte
	large *[LargeBufSize]byte
}

func (q *queued) release() {
	PutBuf(q.small)
	PutLargeBuf(q.large)
	*q = queued{}
}

// Writer is the single writer of a Device: producers queue packets with
// Enqueue from any goroutine, and Run writes them in batches of up to
// Device.BatchSize() per Device.Write call. The server shares one Writer
// per device among all sessions; a Pump creates its own.
//
// Memory budget: while Run runs it owns BatchSize large buffers (the
// batch handed to Device.Write: 128 x 64 KiB = 8 MiB for wireguard's Linux
// TUN, 64 KiB for a device with batch size 1); they are large so that the
// TUN can coalesce (GRO) a batch's TCP/UDP segments into one write. The
// queue holds at most queueLen packets in small (2 KiB) buffers or in the
// slices received from the peer: 1024 x 2 KiB = 2 MiB by default. Every
// packet is copied into the batch when it leaves the queue, so that a deep
// queue does not pin 64 KiB per packet; that copy costs far less than the
// write system call it feeds.
type Writer struct {
	dev     Device
	stats   *Stats
	log     *slog.Logger
	running atomic.Bool
	errLog  rateLimit

	// The queue is a ring under a mutex rather than a channel: producers
	// lock once per packet but the writer only once per batch. With a
	// channel, lock contention was half the downlink's CPU; the ring took
	// BenchmarkDownlink from 168 to 110 ns per packet.
	mu    sync.Mutex
	ring  []queued // guarded by mu; fixed length = queue capacity
	head  int      // guarded by mu; index of the oldest packet
	count int      // guarded by mu; packets queued
	// wake holds a token when packets may have been queued since the
	// writer last looked; a producer adds one when it makes the queue
	// non-empty.
	wake chan struct{}
}

// NewWriter returns a Writer for dev that counts into stats (nil: a private
// Stats) and queues up to queueLen packets (<= 0: DefaultQueueLen). It
// starts nothing; call Run.
func NewWriter(dev Device, stats *Stats, queueLen int) *Writer {
	if stats == nil {
		stats = new(Stats)
	}
	if queueLen <= 0 {
		queueLen = DefaultQueueLen
	}
	return &Writer{
		dev:   dev,
		stats: stats,
		ring:  make([]queued, queueLen),
		wake:  make(chan struct{}, 1),
		log:   slog.New(slog.DiscardHandler),
	}
}

// SetLogger sets the logger for the Writer's start/stop (debug) and
// rate-limited write errors; nil means silent (the default). Call it before
// Run.
func (w *Writer) SetLogger(l *slog.Logger) {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	w.log = l
}

// Enqueue copies pkt (a whole IP packet, 1 to 65535 bytes) into a pooled
// buffer and queues it for the device; the caller keeps pkt and may reuse
// it at once. It never blocks: if the queue is full it drops the packet,
// counts DropQueueFull and returns false. An empty or oversized pkt is
// counted in DropMalformed and refused. Packets queued while Run is not
// running wait for the next Run; those still queued when Run returns are
// discarded.
func (w *Writer) Enqueue(pkt []byte) bool {
	var q queued
	switch n := len(pkt); {
	case n == 0 || n > LargeBufSize-Headroom:
		w.stats.DropMalformed.Add(1)
		return false
	case n <= MaxPacketLen:
		q.small = GetBuf()
		q.pkt = q.small[Headroom : Headroom+copy(q.small[Headroom:], pkt)]
	default:
		q.large = GetLargeBuf()
		q.pkt = q.large[Headroom : Headroom+copy(q.large[Headroom:], pkt)]
	}
	if !w.push(q) {
		q.release()
		return false
	}
	return true
}

// EnqueueOwned is Enqueue without the copy: it takes ownership of pkt,
// which the caller must not touch again, whatever the result (the slices
// DatagramConn.ReceiveDatagram returns qualify).
func (w *Writer) EnqueueOwned(pkt []byte) bool {
	if len(pkt) == 0 || len(pkt) > LargeBufSize-Headroom {
		w.stats.DropMalformed.Add(1)
		return false
	}
	return w.push(queued{pkt: pkt})
}

// push appends q to the ring, or counts DropQueueFull.
func (w *Writer) push(q queued) bool {
	w.mu.Lock()
	if w.count == len(w.ring) {
		w.mu.Unlock()
		w.stats.DropQueueFull.Add(1)
		return false
	}
	i := w.head + w.count
	if i >= len(w.ring) {
		i -= len(w.ring)
	}
	w.ring[i] = q
	w.count++
	first := w.count == 1
	w.mu.Unlock()
	if first {
		select {
		case w.wake <- struct{}{}:
		default: // a token is already there
		}
	}
	return true
}

// Run is the device writer loop: it waits for one queued packet, takes
// whatever else is already queued up to Device.BatchSize(), writes the
// batch with one Device.Write call at offset Headroom, and repeats. A
// failed Write is counted in WriteErrors and logged (rate-limited), not
// fatal. Run returns nil when ctx is done or when the device is closed
// (Write fails with os.ErrClosed or net.ErrClosed); packets still queued
// then are discarded. Run does not close the device. Only one Run may be
// active at a time; a second concurrent call returns an error.
func (w *Writer) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("datagram: Writer.Run is already running")
	}
	defer w.running.Store(false)
	w.log.Debug("device writer started")
	defer w.log.Debug("device writer stopped")

	b := newWriteBatch(w.dev.BatchSize())
	defer b.free()
	defer w.discardQueued()
	for {
		if w.fill(b); b.n == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-w.wake:
			}
			continue
		}
		if closed := w.flush(ctx, b); closed {
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// fill moves already-queued packets into b, up to its size, without
// blocking.
func (w *Writer) fill(b *writeBatch) {
	w.mu.Lock()
	k := min(w.count, len(b.arrs)-b.n)
	for range k {
		b.taken = append(b.taken, w.ring[w.head])
		w.ring[w.head] = queued{}
		if w.head++; w.head == len(w.ring) {
			w.head = 0
		}
	}
	w.count -= k
	w.mu.Unlock()
	// Copy outside the lock.
	for i := range b.taken {
		b.add(&b.taken[i])
	}
	b.taken = b.taken[:0]
}

// flush writes the batch and resets it; it reports whether the device is
// closed (or ctx is done and the write failed).
func (w *Writer) flush(ctx context.Context, b *writeBatch) (closed bool) {
	n := b.n
	_, err := w.dev.Write(b.bufs[:n], Headroom)
	b.reset()
	w.stats.WriteBatches.Add(1)
	w.stats.WritePackets.Add(uint64(n))
	if err == nil {
		return false
	}
	if isClosed(err) || ctx.Err() != nil {
		return true
	}
	w.stats.WriteErrors.Add(1)
	if w.errLog.allow() {
		w.log.Warn("device write failed (counted; further errors suppressed for a while)", "err", err, "packets", n)
	}
	return false
}

// discardQueued empties the queue, returning pooled buffers.
func (w *Writer) discardQueued() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ; w.count > 0; w.count-- {
		w.ring[w.head].release()
		if w.head++; w.head == len(w.ring) {
			w.head = 0
		}
	}
}

// writeBatch is the Writer's loop state, allocated once per Run: large
// buffers that each packet is copied into at Headroom, and the slices
// handed to Device.Write (which the device may re-slice when coalescing).
type writeBatch struct {
	arrs  []*[LargeBufSize]byte
	bufs  [][]byte
	n     int
	taken []queued // packets moved out of the ring, not yet copied
}

func newWriteBatch(size int) *writeBatch {
	size = max(size, 1)
	b := &writeBatch{
		arrs:  make([]*[LargeBufSize]byte, size),
		bufs:  make([][]byte, size),
		taken: make([]queued, 0, size),
	}
	for i := range b.arrs {
		b.arrs[i] = GetLargeBuf()
	}
	return b
}

func (b *writeBatch) full() bool { return b.n == len(b.arrs) }

// add copies q's packet into the next slot and releases q.
func (b *writeBatch) add(q *queued) {
	a := b.arrs[b.n]
	clear(a[:Headroom]) // a stale virtio-net header must not leak into the next write
	n := copy(a[Headroom:], q.pkt)
	b.bufs[b.n] = a[:Headroom+n]
	b.n++
	q.release()
}

func (b *writeBatch) reset() {
	clear(b.bufs[:b.n])
	b.n = 0
}

func (b *writeBatch) free() {
	for i, a := range b.arrs {
		PutLargeBuf(a)
		b.arrs[i] = nil
	}
	clear(b.bufs)
}

// isClosed reports whether err means the device or connection was closed,
// which ends a loop normally.
func isClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
