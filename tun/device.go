package tun

// Device is a packet device: a kernel TUN, the userspace NAT device or a test
// fake. Its method set is the subset of wireguard-go's tun.Device that Roam
// uses, and it equals datagram.Device.
//
// One goroutine may Read while another Writes; a Device does not promise that
// two concurrent Reads (or Writes) are useful.
type Device interface {
	// Read fills up to len(bufs) packets and blocks until at least one is
	// available. Packet i is bufs[i][offset:offset+sizes[i]]; len(sizes) must
	// be >= len(bufs) and every bufs[i] must have room for offset plus the MTU.
	// The caller owns bufs; the device does not keep them after Read returns.
	// After Close, a blocked or later Read returns an error wrapping
	// os.ErrClosed. Other errors are per call and not fatal.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)

	// Write sends packet i = bufs[i][offset:] for every i and returns the
	// number of packets written. Linux TUN needs offset >= 10 (it writes a
	// virtio-net header into bufs[i][offset-10:offset]) and may rewrite the
	// packets and the slice headers in bufs (GRO coalescing), so the caller
	// must not rely on their contents or lengths afterwards; it still owns
	// them. After Close, Write returns an error wrapping os.ErrClosed. Any
	// other error means the device rejected some packets (bad offset, or the
	// kernel refused a malformed packet); the others may have been written,
	// so count the batch as dropped and keep going.
	Write(bufs [][]byte, offset int) (int, error)

	// BatchSize is the most packets one Read or Write moves. It does not
	// change during the device's lifetime.
	BatchSize() int

	// MTU is the device's current MTU.
	MTU() (int, error)

	// Close releases the device (a kernel TUN is removed). It is idempotent
	// and makes blocked Reads and Writes return os.ErrClosed.
	Close() error
}

// MinWriteOffset is the smallest offset a Linux TUN Device accepts in Write:
// room for the 10-byte virtio-net header written in front of each packet.
const MinWriteOffset = 10
