//go:build !linux

package fec

import "net"

// Supported reports whether Conn frames packets on this platform: only
// Linux's does (it needs UDP_SEGMENT and recvmmsg handling).
const Supported = false

// Conn is, off Linux, the wrapped socket unchanged: Enable does nothing
// and Stats are zero.
type Conn struct {
	PacketConn
}

// NewConn wraps pc.
func NewConn(pc PacketConn, cfg Config) *Conn { return &Conn{PacketConn: pc} }

// Enable does nothing off Linux.
func (c *Conn) Enable(addr *net.UDPAddr, p Policy) {}

// Bind does nothing off Linux.
func (c *Conn) Bind(r Remote) {}

// Stats returns zero counters.
func (c *Conn) Stats() Stats { return Stats{} }
