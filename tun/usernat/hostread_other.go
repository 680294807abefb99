//go:build !unix

package usernat

import "net"

// newPacketReader returns a reader that holds a pooled buffer while it waits
// (64 KiB per idle UDP flow on these systems).
func newPacketReader(c net.Conn) packetReader { return plainPacketReader{c} }
