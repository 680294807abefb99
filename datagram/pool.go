package datagram

import "sync"

const (
	// Headroom is the number of bytes reserved in front of every packet in a
	// pooled buffer: the packet starts at buf[Headroom]. It holds the HTTP
	// datagram prefix written in place on the way out (at most 16 bytes:
	// two 8-byte varints) and the 10-byte virtio-net header that wireguard's
	// Linux TUN writes in front of packets on the way in.
	Headroom = 16

	// BufSize is the size of a small pooled buffer: Headroom plus packets of
	// up to BufSize-Headroom = 2032 bytes. Device reads and everything that
	// crosses a QUIC datagram fit; a device MTU above 2032 does not.
	BufSize = 2048

	// LargeBufSize is the size of a large pooled buffer: Headroom plus the
	// largest IP packet. The Writer hands these to Device.Write because
	// wireguard's Linux TUN coalesces (GRO) later packets of a batch into
	// bufs[i] when cap(bufs[i]) allows.
	LargeBufSize = Headroom + 65535
)

// MaxPacketLen is the largest packet a small buffer holds behind Headroom.
const MaxPacketLen = BufSize - Headroom

var (
	smallPool = sync.Pool{New: func() any { return new([BufSize]byte) }}
	largePool = sync.Pool{New: func() any { return new([LargeBufSize]byte) }}
)

// GetBuf returns a small buffer from the pool. The caller owns it until it
// passes it to PutBuf; its contents are arbitrary.
func GetBuf() *[BufSize]byte { return smallPool.Get().(*[BufSize]byte) }

// PutBuf returns b to the pool; the caller must not use b afterwards (and
// must not Put it twice). PutBuf(nil) does nothing.
func PutBuf(b *[BufSize]byte) {
	if b != nil {
		smallPool.Put(b)
	}
}

// GetLargeBuf returns a large buffer from the pool. The caller owns it until
// it passes it to PutLargeBuf; its contents are arbitrary.
func GetLargeBuf() *[LargeBufSize]byte { return largePool.Get().(*[LargeBufSize]byte) }

// PutLargeBuf returns b to the pool; the caller must not use b afterwards.
// PutLargeBuf(nil) does nothing.
func PutLargeBuf(b *[LargeBufSize]byte) {
	if b != nil {
		largePool.Put(b)
	}
}
