package capsule

import (
	"bufio"
	"errors"
	"io"
)

// DefaultMaxCapsuleLen is the largest capsule Value a [Reader] buffers
// unless Reader.MaxCapsuleLen says otherwise.
const DefaultMaxCapsuleLen = 64 << 10

// readChunk bounds how much the Reader allocates ahead of data actually
// received, so a lying Length field cannot make it allocate the limit.
const readChunk = 16 << 10

// Reader reads capsules from a Capsule Protocol data stream (RFC 9297 §3.2),
// such as the body of an HTTP/3 CONNECT-IP request stream.
//
// A Reader buffers: it may read from the underlying reader beyond the
// capsule it returns, so once a Reader exists, read the stream only through
// it. It is not safe for concurrent use. It has no Close: to unblock a
// pending [Reader.Next], close or cancel the underlying stream; Next then
// returns that stream's error.
type Reader struct {
	// MaxCapsuleLen is the largest Value Next buffers and returns. Zero
	// means [DefaultMaxCapsuleLen]. Set it before the first call to Next.
	MaxCapsuleLen int

	br        *bufio.Reader
	buf       []byte
	err       error  // sticky
	discarded uint64 // capsules skipped for size
}

// NewReader returns a Reader reading capsules from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 512)}
}

// Next reads the next capsule and returns its type and value. The value is
// owned by the Reader and valid only until the next call to Next; copy it to
// keep it.
//
// Capsules of every type are returned, including types the caller does not
// know: the caller must ignore those (RFC 9297 §3.2: "silently drop that
// Capsule and skip over it").
//
// A capsule whose Length exceeds MaxCapsuleLen is handled by type, without
// buffering it:
//   - ADDRESS_ASSIGN, ADDRESS_REQUEST, ROUTE_ADVERTISEMENT: Next returns a
//     [*TooLargeError] (the caller aborts the stream);
//   - DATAGRAM, DNS_ASSIGN (advisory) and unknown types: the value is read
//     and discarded, counted by [Reader.Discarded], and Next continues
//     with the next capsule. For
//     DATAGRAM this is what RFC 9297 §3.5 recommends for datagrams too
//     large to be usable.
//
// Next returns io.EOF only when the stream ends cleanly between capsules,
// and io.ErrUnexpectedEOF when it ends inside a capsule (RFC 9297 §3.3: a
// truncated last capsule is a malformed message). Errors from the
// underlying reader are returned unwrapped. After any error, Next keeps
// returning the same error.
func (r *Reader) Next() (Type, []byte, error) {
	if r.err != nil {
		return 0, nil, r.err
	}
	t, v, err := r.next()
	if err != nil {
		r.err = err
		r.buf = nil
	}
	return t, v, err
}

// Buffered returns how many bytes the Reader has already received beyond
// the capsule Next returned last. A caller that has what it waited for can
// use it to take the capsules that arrived together with it (a peer that
// writes several capsules at once) without blocking for more.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Discarded returns how many oversized DATAGRAM or unknown-type capsules
// Next has skipped.
func (r *Reader) Discarded() uint64 { return r.discarded }

func (r *Reader) limit() int {
	if r.MaxCapsuleLen <= 0 {
		return DefaultMaxCapsuleLen
	}
	return r.MaxCapsuleLen
}

func (r *Reader) next() (Type, []byte, error) {
	limit := r.limit()
	for {
		t, err := r.readVarint(true)
		if err != nil {
			return 0, nil, err
		}
		l, err := r.readVarint(false)
		if err != nil {
			return 0, nil, err
		}
		ty := Type(t)
		if l > uint64(limit) {
			if ty.Known() && ty != TypeDatagram {
				return 0, nil, &TooLargeError{Type: ty, Length: l, Max: limit}
			}
			if err := r.discard(l); err != nil {
				return 0, nil, err
			}
			r.discarded++
			continue
		}
		v, err := r.readValue(int(l))
		if err != nil {
			return 0, nil, err
		}
		return ty, v, nil
	}
}

// readVarint reads a QUIC varint. A clean EOF before its first byte is
// io.EOF if first is set (a capsule boundary), io.ErrUnexpectedEOF
// otherwise; an EOF after the first byte is always io.ErrUnexpectedEOF.
func (r *Reader) readVarint(first bool) (uint64, error) {
	b0, err := r.br.ReadByte()
	if err != nil {
		if err == io.EOF && !first {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	n := 1 << (b0 >> 6)
	v := uint64(b0 & 0x3f)
	for i := 1; i < n; i++ {
		b, err := r.br.ReadByte()
		if err != nil {
			return 0, unexpected(err)
		}
		v = v<<8 | uint64(b)
	}
	return v, nil
}

// readValue reads n bytes into the reused buffer, growing it in steps of at
// most readChunk beyond what has arrived.
func (r *Reader) readValue(n int) ([]byte, error) {
	if n <= cap(r.buf) {
		r.buf = r.buf[:n]
		if _, err := io.ReadFull(r.br, r.buf); err != nil {
			return nil, unexpected(err)
		}
		return r.buf, nil
	}
	b := r.buf[:0]
	for len(b) < n {
		step := min(n-len(b), max(len(b), readChunk))
		if cap(b)-len(b) < step {
			nb := make([]byte, len(b), len(b)+step)
			copy(nb, b)
			b = nb
		}
		m, err := io.ReadFull(r.br, b[len(b):len(b)+step])
		b = b[:len(b)+m]
		if err != nil {
			r.buf = b[:0]
			return nil, unexpected(err)
		}
	}
	r.buf = b
	return b, nil
}

func (r *Reader) discard(n uint64) error {
	for n > 0 {
		step := min(n, 1<<30)
		m, err := r.br.Discard(int(step))
		n -= uint64(m)
		if err != nil {
			return unexpected(err)
		}
	}
	return nil
}

// unexpected turns an EOF inside a capsule into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
