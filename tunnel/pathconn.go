package tunnel

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
)

// isPathDown reports whether a send error means "this path cannot carry
// packets right now" (no route, interface down, address gone, a firewall
// rejecting, buffers full) rather than a broken socket. quic-go closes the
// connection on any send error other than EMSGSIZE, so the client's sockets
// turn these into loss: the connection lives on, and migration or the
// network's return brings it back.
func isPathDown(err error) bool {
	for _, e := range []syscall.Errno{
		syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EHOSTDOWN,
		syscall.EADDRNOTAVAIL, syscall.EPERM, syscall.EACCES, syscall.ENOBUFS,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// lossyUDPConn is a *net.UDPConn whose sends report isPathDown errors as
// success (counted in dropped). It embeds the *net.UDPConn so quic-go still
// finds SyscallConn, ReadMsgUDP and WriteMsgUDP and keeps GSO, ECN and
// batched reads.
type lossyUDPConn struct {
	*net.UDPConn
	dropped *atomic.Uint64
}

func (c *lossyUDPConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	n, oobn, err = c.UDPConn.WriteMsgUDP(b, oob, addr)
	if err != nil && isPathDown(err) {
		c.dropped.Add(1)
		return len(b), len(oob), nil
	}
	return n, oobn, err
}

func (c *lossyUDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := c.UDPConn.WriteTo(b, addr)
	if err != nil && isPathDown(err) {
		c.dropped.Add(1)
		return len(b), nil
	}
	return n, err
}

// lossyPacketConn is the same for any other net.PacketConn (tests, relays).
type lossyPacketConn struct {
	net.PacketConn
	dropped *atomic.Uint64
}

func (c *lossyPacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := c.PacketConn.WriteTo(b, addr)
	if err != nil && isPathDown(err) {
		c.dropped.Add(1)
		return len(b), nil
	}
	return n, err
}

// lossy wraps pc so that path-down send errors are loss (see isPathDown).
func lossy(pc net.PacketConn, dropped *atomic.Uint64) net.PacketConn {
	if u, ok := pc.(*net.UDPConn); ok {
		return &lossyUDPConn{UDPConn: u, dropped: dropped}
	}
	return &lossyPacketConn{PacketConn: pc, dropped: dropped}
}
