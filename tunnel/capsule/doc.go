// Package capsule encodes and decodes HTTP capsules (RFC 9297 §3.2) and the
// CONNECT-IP capsules of RFC 9484 §4.7, plus the DNS_ASSIGN capsule of
// draft-ietf-masque-connect-ip-dns-06.
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
//	DNS_ASSIGN (0x1ACE79EC, provisional), draft-ietf-masque-connect-ip-dns-06
//	§3.4: zero or more DNS Configurations, each a Nameserver Count and
//	Nameservers {Service Priority (16), IPv4 Address Count (i), IPv4
//	Addresses, IPv6 Address Count (i), IPv6 Addresses, Authentication Domain
//	Name, Service Parameters Length (i), Service Parameters}, then Internal
//	Domain Count (i) and Domains, then Search Domain Count (i) and Domains;
//	a Domain is Domain Length (i) and Domain Name. See docs/protocol.md.
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
