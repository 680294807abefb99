package datagram

import "context"

// Device is a packet device: a TUN, a userspace network stack, or a test
// fake. It has the method set of Roam's tun.Device and wireguard-go's
// tun.Device, which satisfy it.
type Device interface {
	// Read reads up to len(bufs) packets, blocking until at least one is
	// available: packet i is written to bufs[i][offset:offset+sizes[i]]
	// (len(sizes) >= len(bufs)). It returns the number of packets; n may
	// be positive together with an error. After Close, a blocked or later
	// Read returns an error wrapping os.ErrClosed (or net.ErrClosed).
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write writes one packet per element, packet i being bufs[i][offset:].
	// offset must be >= 10 for wireguard's Linux TUN, which may write a
	// virtio-net header into bufs[i][offset-10:offset] and coalesce later
	// packets into bufs[i] up to cap(bufs[i]). The caller keeps ownership
	// of bufs. After Close, Write returns an error wrapping os.ErrClosed.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the preferred and maximum number of packets per Read or
	// Write call; it is fixed for the device's lifetime.
	BatchSize() int
	// MTU returns the device's MTU.
	MTU() (int, error)
	// Close closes the device; it is idempotent and unblocks Read.
	Close() error
}

// DatagramReceiver is the receiving half of a DatagramConn (an HTTP/3
// request stream's datagrams, for Pump.Recv).
type DatagramReceiver interface {
	// ReceiveDatagram blocks until a datagram arrives, ctx is done (it
	// returns ctx's error), or the connection is closed (it returns the
	// close error). The returned slice is fresh and owned by the caller.
	ReceiveDatagram(ctx context.Context) ([]byte, error)
}

// DatagramConn is the part of a QUIC connection (or HTTP/3 request stream,
// or WebTransport session) that the pump needs; quic-go's *quic.Conn
// satisfies it.
type DatagramConn interface {
	// SendDatagram sends p as one unreliable datagram. It copies p before
	// returning, so the caller may reuse p at once. It may block while the
	// send queue is full. A datagram too large for the current path fails
	// with an error (quic-go: *quic.DatagramTooLargeError) and nothing is
	// sent; any other error means the connection is unusable.
	SendDatagram(p []byte) error
	// ReceiveDatagram blocks until a datagram arrives, ctx is done (it
	// returns ctx's error), or the connection is closed (it returns the
	// close error). The returned slice is fresh and owned by the caller.
	ReceiveDatagram(ctx context.Context) ([]byte, error)
}
