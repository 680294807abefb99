// Package datagram is Roam's packet path: HTTP datagram framing (RFC 9297)
// for CONNECT-IP (RFC 9484), IP header parsing and validation, ICMP
// "too big" generation, pooled packet buffers, a batching device Writer and
// the client Pump that moves packets between a packet device (TUN) and a
// QUIC connection's datagrams.
//
// It imports only the standard library and quic-go's quicvarint; the pump
// works on the small Device and DatagramConn interfaces, so tests and the
// browser transport can stand in for a TUN and a *quic.Conn.
//
// # Wire format
//
// Every IP packet travels in one QUIC DATAGRAM frame (RFC 9221) whose
// payload is an HTTP datagram (RFC 9297 §2.1) carrying a CONNECT-IP payload
// (RFC 9484 §6):
//
//	+-------------------------------+---------------------------------+
//	| Quarter Stream ID (varint)    | request stream ID / 4, 1-8 bytes|
//	+-------------------------------+---------------------------------+
//	| Context ID (varint)           | 0 = an IP packet follows;       |
//	|                               | other IDs are dropped silently  |
//	+-------------------------------+---------------------------------+
//	| IP Packet (rest of datagram)  | IPv4 or IPv6, from its header   |
//	+-------------------------------+---------------------------------+
//
// Varints are QUIC variable-length integers (RFC 9000 §16): the two high
// bits of the first byte give the length, the remaining bits the value,
// big-endian:
//
//	00xxxxxx                                      1 byte,  0..63
//	01xxxxxx xxxxxxxx                             2 bytes, 0..16383
//	10xxxxxx xxxxxxxx xxxxxxxx xxxxxxxx           4 bytes, 0..2^30-1
//	11xxxxxx xxxxxxxx ... (8 bytes in all)        8 bytes, 0..2^62-1
//
// A typical packet on request stream 0 (quarter stream ID 0) therefore
// costs 2 bytes of prefix: 0x00 0x00, then the packet.
//
// # Buffers and headroom
//
// Packets live in pooled fixed-size arrays (GetBuf, GetLargeBuf) with
// Headroom bytes in front. The device reads the packet at buf[Headroom:],
// PutPrefix writes the prefix immediately before it, and the datagram is
// sent straight from the same buffer without a copy:
//
//	0                start          Headroom (16)           Headroom+len
//	|    unused      | QSID | CtxID | IP packet ...............|
//	                 ^-- PutPrefix returns start; SendDatagram(buf[start:Headroom+len])
//
// On the way to the device the same 16 bytes hold the 10-byte virtio-net
// header wireguard's Linux TUN prepends. Each buffer has exactly one owner
// at a time; whoever holds it returns it with PutBuf / PutLargeBuf.
//
// # Hot path rules
//
// The steady-state packet path allocates nothing in this package: loop
// state is allocated once per Run, a Packet is reused for every packet,
// errors on the hot path are preallocated values, and counters are atomics
// in Stats (added once per batch where possible). Nothing logs per packet.
package datagram
