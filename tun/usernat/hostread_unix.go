//go:build unix

package usernat

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// newPacketReader returns a reader that waits for the socket through Go's
// poller without holding a buffer, and borrows a pooled one only once a
// datagram is ready (so idle UDP flows cost no buffer memory).
func newPacketReader(c net.Conn) packetReader {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return plainPacketReader{c}
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return plainPacketReader{c}
	}
	r := &polledPacketReader{rc: rc}
	r.fn = r.try // one method value per flow, not per datagram
	return r
}

type polledPacketReader struct {
	rc syscall.RawConn
	fn func(fd uintptr) bool

	// Results of the last successful try.
	bp  *[]byte
	n   int
	err error
}

// try is called by RawConn.Read whenever the socket may be readable; it
// reports false (and returns the buffer) when it was not.
func (r *polledPacketReader) try(fd uintptr) bool {
	bp := bigPool.Get().(*[]byte)
	for {
		n, err := unix.Read(int(fd), *bp)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			bigPool.Put(bp)
			return false
		case nil:
			r.bp, r.n, r.err = bp, n, nil
		default:
			bigPool.Put(bp)
			r.bp, r.n, r.err = nil, 0, os.NewSyscallError("read", err)
		}
		return true
	}
}

func (r *polledPacketReader) readPacket() (*[]byte, int, error) {
	r.bp, r.n, r.err = nil, 0, nil
	if err := r.rc.Read(r.fn); err != nil {
		return nil, 0, err // deadline, closed
	}
	return r.bp, r.n, r.err
}
