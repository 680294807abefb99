// Package capsule encodes and decodes HTTP capsules (RFC 9297 §3.2) and the
// CONNECT-IP capsules of RFC 9484 §4.7.
//
// Every capsule on a Capsule Protocol data stream has the same framing:
//
//	Capsule {
//	  Type (i),
//	  Length (i),          // length of Value in bytes, may be zero
//	  Value (..),
//	}
//
// The types this package understands:
//
//	DATAGRAM (0x00), RFC 9297 §3.5: Value is one HTTP Datagram payload
//	(for CONNECT-IP: Context ID (i) followed by an IP packet).
//
//	ADDRESS_ASSIGN (0x01), RFC 9484 §4.7.1: zero or more of
//	ADDRESS_REQUEST (0x02), RFC 9484 §4.7.2: one or more of
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                      Request ID (varint) ...
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  IP Version   |   IP Address (32 bits for 4, 128 bits for 6) ...
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	| IP Prefix Len |
//	+-+-+-+-+-+-+-+-+
//
//	ROUTE_ADVERTISEMENT (0x03), RFC 9484 §4.7.3: zero or more of
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|  IP Version   |   Start IP Address (32 or 128 bits) ...
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   End IP Address (32 or 128 bits) ...     |  IP Protocol  |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Encoders are append-style ([AddressAssign.Append] etc.) and write the
// whole capsule, type and length included. Parsers ([ParseAddressAssign]
// etc.) take the capsule Value only, as returned by [Reader.Next] or
// [ParseCapsule], and never retain it.
//
// # Errors
//
// Parsers check every MUST of RFC 9484 §4.7 that a single capsule can
// violate and return an [*Error] naming the capsule, the entry and the field.
// Every such error satisfies errors.Is(err, [ErrMalformed]). RFC 9297 §3.3
// says a receiver treats a capsule error as a malformed HTTP message, which
// for HTTP/3 (RFC 9114 §4.1.2) is a stream error of type H3_MESSAGE_ERROR;
// RFC 9484 says "abort the IP proxying request stream" for an empty
// ADDRESS_REQUEST and for misordered or overlapping routes. Both come down
// to resetting the request stream, so [Error.HTTP3ErrorCode] returns
// [H3MessageError] for all of them. H3_DATAGRAM_ERROR ([H3DatagramError]) is
// for the datagram layer (RFC 9297 §2.1, §5.2) and is not used here.
package capsule
