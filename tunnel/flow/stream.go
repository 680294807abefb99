package flow

import (
	"errors"
	"io"
)

// Stream is one flow's reliable byte stream to the peer: an HTTP/3 CONNECT
// request stream, a WebTransport bidirectional stream, or a test fake. Read
// and Write may be called concurrently with each other, and Abort with
// anything; Read is not called concurrently with Read, nor Write with Write
// or CloseWrite (quic-go's SendStream.Close must not run concurrently with
// Write: to end a blocked Write, Abort).
//
// Adapting quic-go: Read and Write are the stream's; CloseWrite is Close
// (FIN); Abort is CancelWrite(code) plus CancelRead(code); and the adapter
// wraps the *quic.StreamError (or WebTransport's stream error) that Read or
// Write return after the peer's RESET_STREAM or STOP_SENDING so that
// errors.Is(err, ErrReset) holds, e.g. fmt.Errorf("%w: %w", flow.ErrReset,
// err).
type Stream interface {
	// Read reads bytes the peer sent. It returns io.EOF (unwrapped, as
	// io.Reader requires) after the peer's FIN and all data before it, and
	// an error for which IsReset is true if the peer reset its sending
	// side. After Abort it returns an error. The caller owns p.
	io.Reader
	// Write sends p, blocking under flow control. It fails with an error
	// for which IsReset is true when the peer stopped reading (QUIC
	// STOP_SENDING), and with an error after CloseWrite or Abort. The
	// caller keeps ownership of p.
	io.Writer
	// CloseWrite half-closes the stream: the peer reads io.EOF after the
	// data already written. Reading continues.
	CloseWrite() error
	// Abort resets both directions: the peer's Read and Write fail with a
	// reset, and blocked and later calls of this Stream's Read and Write
	// return an error at once. It is idempotent and safe to call from any
	// goroutine; after it, nothing of the Stream needs closing.
	Abort()
}

// ErrReset is the sentinel that Stream adapters wrap into the errors they
// return when the peer reset the stream (RESET_STREAM, STOP_SENDING, or
// the transport's equivalent).
var ErrReset = errors.New("flow: stream reset by peer")

// IsReset reports whether err means the peer reset the stream, i.e. whether
// it wraps ErrReset.
func IsReset(err error) bool { return errors.Is(err, ErrReset) }
