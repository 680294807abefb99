package capsule

import (
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/quic-go/quic-go/quicvarint"
)

// Type is a capsule type (RFC 9297 §3.2, "HTTP Capsule Types" registry).
type Type uint64

// Capsule types defined by RFC 9297 §3.5 and RFC 9484 §4.7.
const (
	TypeDatagram           Type = 0x00
	TypeAddressAssign      Type = 0x01
	TypeAddressRequest     Type = 0x02
	TypeRouteAdvertisement Type = 0x03
)

// String returns the registry name of t ("ADDRESS_ASSIGN"), or its value in
// hex for types this package does not know.
func (t Type) String() string {
	switch t {
	case TypeDatagram:
		return "DATAGRAM"
	case TypeAddressAssign:
		return "ADDRESS_ASSIGN"
	case TypeAddressRequest:
		return "ADDRESS_REQUEST"
	case TypeRouteAdvertisement:
		return "ROUTE_ADVERTISEMENT"
	case TypeDNSAssign:
		return "DNS_ASSIGN"
	}
	return "capsule type 0x" + strconv.FormatUint(uint64(t), 16)
}

// Known reports whether t is one of the four types of RFC 9297 and RFC
// 9484. [Reader] treats oversized capsules of known and unknown types
// differently; DNS_ASSIGN counts as unknown there (an oversized one is
// skipped: the DNS configuration is advisory, the tunnel works without it).
func (t Type) Known() bool { return t <= TypeRouteAdvertisement }

// HTTP/3 error codes a caller may use when resetting a request stream
// because of a capsule error (see the package doc).
const (
	// H3MessageError is H3_MESSAGE_ERROR (RFC 9114 §8.1): a malformed
	// message. RFC 9297 §3.3 maps capsule errors to it.
	H3MessageError uint64 = 0x010e
	// H3DatagramError is H3_DATAGRAM_ERROR (RFC 9297 §5.2), used by the
	// datagram layer, not by this package.
	H3DatagramError uint64 = 0x33
)

// ErrMalformed is matched (errors.Is) by every [*Error].
var ErrMalformed = errors.New("malformed capsule")

// ErrTooLarge is matched (errors.Is) by every [*TooLargeError].
var ErrTooLarge = errors.New("capsule too large")

// Error describes a capsule that violates RFC 9297 or RFC 9484 §4.7, or a
// value that cannot be encoded. It matches [ErrMalformed].
type Error struct {
	Type  Type   // the capsule being parsed or encoded
	Entry int    // 0-based index of the entry (address or range); -1 for the capsule as a whole
	Field string // RFC field name, e.g. "IP Prefix Length"; empty for the capsule as a whole
	Msg   string // what is wrong
}

func (e *Error) Error() string {
	s := "capsule " + e.Type.String()
	if e.Entry >= 0 {
		s += " entry " + strconv.Itoa(e.Entry)
	}
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Msg
}

// Is makes errors.Is(err, ErrMalformed) true.
func (e *Error) Is(target error) bool { return target == ErrMalformed }

// HTTP3ErrorCode returns the code to reset the request stream with:
// [H3MessageError] (RFC 9297 §3.3, RFC 9114 §4.1.2).
func (e *Error) HTTP3ErrorCode() uint64 { return H3MessageError }

func errorf(t Type, entry int, field, format string, args ...any) *Error {
	return &Error{Type: t, Entry: entry, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// TooLargeError is returned by [Reader.Next] for a capsule of a known type
// whose Length exceeds the reader's limit. It matches [ErrTooLarge].
type TooLargeError struct {
	Type   Type
	Length uint64 // the Length field as received
	Max    int    // the reader's limit
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("capsule %s: Length %d exceeds the limit of %d bytes", e.Type, e.Length, e.Max)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// HTTP3ErrorCode returns [H3MessageError]: the peer sent a capsule this
// endpoint will not process, so the request stream is aborted.
func (e *TooLargeError) HTTP3ErrorCode() uint64 { return H3MessageError }

// AppendCapsule appends a capsule of type t carrying value to b and returns
// the extended slice. value is copied. t must be at most 2^62-1
// (quicvarint.Max); larger values panic, as in quicvarint.Append.
func AppendCapsule(b []byte, t Type, value []byte) []byte {
	b = quicvarint.Append(b, uint64(t))
	b = quicvarint.Append(b, uint64(len(value)))
	return append(b, value...)
}

// ParseCapsule parses one capsule at the start of b. It returns the type,
// the value (a subslice of b, not a copy) and the number of bytes consumed.
// If b is empty or holds only part of a capsule it returns
// io.ErrUnexpectedEOF.
func ParseCapsule(b []byte) (t Type, value []byte, n int, err error) {
	ty, n1, err := quicvarint.Parse(b)
	if err != nil {
		return 0, nil, 0, io.ErrUnexpectedEOF
	}
	l, n2, err := quicvarint.Parse(b[n1:])
	if err != nil {
		return 0, nil, 0, io.ErrUnexpectedEOF
	}
	hdr := n1 + n2
	if l > uint64(len(b)-hdr) {
		return 0, nil, 0, io.ErrUnexpectedEOF
	}
	end := hdr + int(l)
	return Type(ty), b[hdr:end:end], end, nil
}

// appendHeader appends the type and length of a capsule whose value is n
// bytes long.
func appendHeader(b []byte, t Type, n int) []byte {
	b = quicvarint.Append(b, uint64(t))
	return quicvarint.Append(b, uint64(n))
}
