// Package tuntest provides ChannelDevice, a channel-backed fake of tun.Device
// for tests. It imports nothing from Roam, so any test, on any OS (js/wasm
// too), can use it.
package tuntest

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// QueueLen is the capacity of a ChannelDevice's Inbound and Outbound channels.
const QueueLen = 1024

// ChannelDevice is a tun.Device whose packets travel over channels: a test
// sends packets to Inbound for the code under test to Read, and receives what
// the code Writes from Outbound. Both channels are buffered (QueueLen) and
// are never closed, so a test may keep sending after Close.
type ChannelDevice struct {
	// Inbound holds packets the test injects; Read returns them. Read copies
	// them, so the test may reuse a slice once it is received.
	Inbound chan []byte
	// Outbound receives a copy of every packet written with Write.
	Outbound chan []byte

	// MinWriteOffset, if not zero, makes Write fail for a smaller offset, as
	// a Linux TUN does for offsets below 10. NewChannelDevice sets zero. Set
	// it before the device is used.
	MinWriteOffset int

	mtu, batch int
	mu         sync.Mutex // serializes Reads
	closeOnce  sync.Once
	closed     chan struct{}
	dropped    atomic.Uint64
}

// NewChannelDevice returns a device that reports the given MTU and batch size
// (a batch below 1 becomes 1).
func NewChannelDevice(mtu, batch int) *ChannelDevice {
	return &ChannelDevice{
		Inbound:  make(chan []byte, QueueLen),
		Outbound: make(chan []byte, QueueLen),
		mtu:      mtu,
		batch:    max(batch, 1),
		closed:   make(chan struct{}),
	}
}

// Read blocks until a packet is in Inbound or the device is closed, then
// copies as many queued packets as are available, up to len(bufs), to
// bufs[i][offset:], setting sizes[i]. A packet that does not fit its buffer
// is dropped and counted (see Dropped). After Close it returns os.ErrClosed.
func (d *ChannelDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) || offset < 0 {
		return 0, fmt.Errorf("tuntest: read: bad arguments: %d bufs, %d sizes, offset %d", len(bufs), len(sizes), offset)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for n == 0 {
		select {
		case <-d.closed: // closed wins over queued packets
			return 0, os.ErrClosed
		default:
		}
		select {
		case <-d.closed:
			return 0, os.ErrClosed
		case p := <-d.Inbound:
			if d.put(bufs, sizes, offset, n, p) {
				n++
			}
		}
	}
	for n < len(bufs) {
		select {
		case p := <-d.Inbound:
			if d.put(bufs, sizes, offset, n, p) {
				n++
			}
		default:
			return n, nil
		}
	}
	return n, nil
}

// put copies p into bufs[i] and reports whether it fit.
func (d *ChannelDevice) put(bufs [][]byte, sizes []int, offset, i int, p []byte) bool {
	if offset > len(bufs[i]) || len(p) > len(bufs[i])-offset {
		d.dropped.Add(1)
		return false
	}
	sizes[i] = copy(bufs[i][offset:], p)
	return true
}

// Write sends a copy of each bufs[i][offset:] to Outbound, blocking while
// Outbound is full. It returns how many packets it sent; after Close it
// returns os.ErrClosed. The caller keeps ownership of bufs.
func (d *ChannelDevice) Write(bufs [][]byte, offset int) (int, error) {
	if offset < 0 || offset < d.MinWriteOffset {
		return 0, fmt.Errorf("tuntest: write: offset %d below minimum %d", offset, d.MinWriteOffset)
	}
	for i, b := range bufs {
		if offset > len(b) {
			return i, fmt.Errorf("tuntest: write: packet %d: offset %d beyond its length %d", i, offset, len(b))
		}
		p := append([]byte(nil), b[offset:]...)
		select {
		case <-d.closed:
			return i, os.ErrClosed
		default:
		}
		select {
		case <-d.closed:
			return i, os.ErrClosed
		case d.Outbound <- p:
		}
	}
	return len(bufs), nil
}

// BatchSize returns the batch size given to NewChannelDevice.
func (d *ChannelDevice) BatchSize() int { return d.batch }

// MTU returns the MTU given to NewChannelDevice.
func (d *ChannelDevice) MTU() (int, error) { return d.mtu, nil }

// Close marks the device closed: blocked and later Reads and Writes return
// os.ErrClosed. It is idempotent and leaves the channels open.
func (d *ChannelDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return nil
}

// Done is closed when Close is called.
func (d *ChannelDevice) Done() <-chan struct{} { return d.closed }

// Dropped returns how many injected packets Read dropped because they did
// not fit the caller's buffer.
func (d *ChannelDevice) Dropped() uint64 { return d.dropped.Load() }
