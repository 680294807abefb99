package datagram

import (
	"encoding/binary"

	"github.com/quic-go/quic-go/quicvarint"
)

// MaxPrefixLen is the longest HTTP datagram prefix: two 8-byte varints.
// It equals Headroom, so a prefix always fits in front of a pooled packet.
const MaxPrefixLen = 16

// maxVarint is the largest value a QUIC varint holds (2^62-1).
const maxVarint = quicvarint.Max

// varintLen is the minimal encoded length of v, or 0 if v is out of range.
func varintLen(v uint64) int {
	switch {
	case v <= 63:
		return 1
	case v <= 16383:
		return 2
	case v <= 1073741823:
		return 4
	case v <= maxVarint:
		return 8
	}
	return 0
}

// putVarint writes v into b[:n] using exactly n bytes (n = varintLen(v)).
func putVarint(b []byte, v uint64, n int) {
	switch n {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.BigEndian.PutUint16(b, uint16(v)|0x4000)
	case 4:
		binary.BigEndian.PutUint32(b, uint32(v)|0x8000_0000)
	case 8:
		binary.BigEndian.PutUint64(b, v|0xc000_0000_0000_0000)
	}
}

// PrefixLen returns the encoded length of the prefix for quarterStreamID and
// contextID (2 to 16 bytes). It panics if either exceeds 2^62-1, which is a
// programming error: stream IDs are below 2^62 and context IDs are chosen
// locally.
func PrefixLen(quarterStreamID, contextID uint64) int {
	a, b := varintLen(quarterStreamID), varintLen(contextID)
	if a == 0 || b == 0 {
		panic("datagram: PrefixLen: value exceeds 2^62-1")
	}
	return a + b
}

// PutPrefix writes the prefix for quarterStreamID and contextID immediately
// in front of b[off:], into b[off-n:off] where n = PrefixLen, and returns the
// start index off-n: the datagram is then b[start:]. Only b[off-n:off] is
// written. It fails if a value exceeds 2^62-1 or if off < n or off > len(b).
// Reading packets at offset Headroom leaves room for any prefix.
func PutPrefix(b []byte, off int, quarterStreamID, contextID uint64) (start int, err error) {
	qn, cn := varintLen(quarterStreamID), varintLen(contextID)
	switch {
	case qn == 0:
		return 0, errQSIDRange
	case cn == 0:
		return 0, errCtxRange
	}
	start = off - qn - cn
	if start < 0 || off > len(b) {
		return 0, errPrefixRoom
	}
	putVarint(b[start:], quarterStreamID, qn)
	putVarint(b[start+qn:], contextID, cn)
	return start, nil
}

// AppendPrefix appends the prefix for quarterStreamID and contextID to b
// and returns the extended slice (append semantics: b's array is reused if
// it has room). It panics if a value exceeds 2^62-1 (see PrefixLen); use
// PutPrefix for values that come from the network.
func AppendPrefix(b []byte, quarterStreamID, contextID uint64) []byte {
	n := PrefixLen(quarterStreamID, contextID)
	l := len(b)
	b = grow(b, n)
	qn := varintLen(quarterStreamID)
	putVarint(b[l:], quarterStreamID, qn)
	putVarint(b[l+qn:], contextID, n-qn)
	return b
}

// ParsePrefix parses the prefix at the start of the HTTP datagram payload b.
// n is the number of bytes consumed; the IP packet (for context ID 0) is
// b[n:], aliasing b. Non-minimal varint encodings are accepted, as RFC 9000
// allows. It fails (wrapping ErrTooShort) if b ends inside either varint;
// a datagram that is exactly a prefix (empty payload) parses fine.
func ParsePrefix(b []byte) (quarterStreamID, contextID uint64, n int, err error) {
	q, qn, err := quicvarint.Parse(b)
	if err != nil {
		return 0, 0, 0, errQSIDTrunc
	}
	c, cn, err := quicvarint.Parse(b[qn:])
	if err != nil {
		return 0, 0, 0, errCtxTrunc
	}
	return q, c, qn + cn, nil
}
