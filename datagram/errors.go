package datagram

import "errors"

// Sentinel errors. Every error returned by this package's parsers and
// encoders wraps exactly one of them, so callers can classify with
// errors.Is; the message adds which field was wrong and what was expected.
var (
	// ErrTooShort: the input ends before a header or the length it declares.
	ErrTooShort = errors.New("too short")
	// ErrBadVersion: the IP version nibble is neither 4 nor 6.
	ErrBadVersion = errors.New("bad IP version")
	// ErrBadLength: a length field is inconsistent with the header it is in.
	ErrBadLength = errors.New("bad length")
	// ErrBadHeader: a header field has a value the protocol forbids.
	ErrBadHeader = errors.New("bad header")
	// ErrVarintRange: a value does not fit a QUIC variable-length integer
	// (at most 2^62-1).
	ErrVarintRange = errors.New("value exceeds 2^62-1")
	// ErrNoRoom: the buffer has too little headroom for the datagram prefix.
	ErrNoRoom = errors.New("no room for the prefix")
)

// staticError is an error with a fixed message wrapping a sentinel. The
// hot-path parsers return preallocated *staticError values so that even a
// flood of malformed packets allocates nothing.
type staticError struct {
	msg string // full message, context prefix included
	err error  // the sentinel
}

func (e *staticError) Error() string { return e.msg + ": " + e.err.Error() }
func (e *staticError) Unwrap() error { return e.err }

func newStatic(msg string, sentinel error) error { return &staticError{msg: msg, err: sentinel} }

// IP header errors (Packet.Decode, AppendTooBig).
var (
	errEmpty       = newStatic("ip header: empty packet", ErrTooShort)
	errVersion     = newStatic("ip header: version nibble is not 4 or 6", ErrBadVersion)
	errV4Short     = newStatic("ip header: IPv4 packet shorter than the 20-byte minimum header", ErrTooShort)
	errV4IHL       = newStatic("ip header: IPv4 IHL below 5 (the header is at least 20 bytes)", ErrBadHeader)
	errV4HdrTrunc  = newStatic("ip header: IPv4 packet shorter than its IHL (options truncated)", ErrTooShort)
	errV4TotSmall  = newStatic("ip header: IPv4 total length smaller than the header length", ErrBadLength)
	errV4TotTrunc  = newStatic("ip header: IPv4 total length exceeds the bytes present (truncated packet)", ErrTooShort)
	errV6Short     = newStatic("ip header: IPv6 packet shorter than the 40-byte header", ErrTooShort)
	errV6PayTrunc  = newStatic("ip header: IPv6 40+payload length exceeds the bytes present (truncated packet)", ErrTooShort)
	errV6ExtTrunc  = newStatic("ip header: IPv6 extension header extends past the payload length", ErrBadLength)
	errV6HopByHop  = newStatic("ip header: IPv6 hop-by-hop options header not directly after the IPv6 header", ErrBadHeader)
	errV6ExtTooMny = newStatic("ip header: more than 8 IPv6 extension headers", ErrBadHeader)
)

// Datagram prefix errors (PutPrefix, ParsePrefix).
var (
	errQSIDTrunc  = newStatic("datagram prefix: quarter stream ID varint truncated", ErrTooShort)
	errCtxTrunc   = newStatic("datagram prefix: context ID varint truncated", ErrTooShort)
	errQSIDRange  = newStatic("datagram prefix: quarter stream ID", ErrVarintRange)
	errCtxRange   = newStatic("datagram prefix: context ID", ErrVarintRange)
	errPrefixRoom = newStatic("datagram prefix: offset smaller than the prefix length, or beyond the buffer", ErrNoRoom)
)
