// Package flowtest provides fakes of flow.Stream for tests: Pipe, an
// in-memory pair of connected streams with FIN and reset semantics like a
// QUIC bidirectional stream's, and ConnStream, which adapts a TCP
// connection (for tests that let a loopback connection stand in for the
// tunnel). It uses the standard library only, so tests on any OS (js/wasm
// too) can use it.
package flowtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/roamvpn/roam/tunnel/flow"
)

// DefaultPipeBuffer is the per-direction buffer of Pipe.
const DefaultPipeBuffer = 64 << 10

// ErrWriteAfterClose is returned by End.Write after End.CloseWrite.
var ErrWriteAfterClose = errors.New("flowtest: write after CloseWrite")

// Pipe returns two connected in-memory streams with DefaultPipeBuffer
// bytes of buffer per direction; see NewPipe.
func Pipe() (a, b *End) { return NewPipe(DefaultPipeBuffer) }

// NewPipe returns two connected in-memory streams: what one writes, the
// other reads. Each direction buffers up to bufSize bytes (at least 1);
// Write blocks while the buffer is full, like QUIC flow control.
func NewPipe(bufSize int) (a, b *End) {
	ab, ba := newHalf(bufSize), newHalf(bufSize)
	return &End{r: ba, w: ab}, &End{r: ab, w: ba}
}

// half is one direction of a Pipe.
type half struct {
	mu          sync.Mutex
	cond        sync.Cond
	buf         []byte // guarded by mu; written, not yet read
	max         int
	fin         bool // guarded by mu; the writer called CloseWrite
	writerReset bool // guarded by mu; the writer aborted: reads fail with ErrReset
	readerReset bool // guarded by mu; the reader aborted: writes fail with ErrReset
}

func newHalf(size int) *half {
	h := &half{max: max(size, 1)}
	h.cond.L = &h.mu
	return h
}

// End is one end of a Pipe; it implements flow.Stream. Read and Write may
// be called concurrently with each other and with CloseWrite and Abort.
type End struct {
	r, w *half
}

var _ flow.Stream = (*End)(nil)

// Read reads what the other end wrote. It blocks until data, the other
// end's CloseWrite (io.EOF once the data is read), the other end's Abort (an
// error wrapping flow.ErrReset; unread data is discarded) or this end's
// Abort (net.ErrClosed).
func (e *End) Read(p []byte) (int, error) {
	h := e.r
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		switch {
		case h.readerReset:
			return 0, net.ErrClosed
		case h.writerReset:
			h.buf = nil
			return 0, fmt.Errorf("flowtest: read: %w", flow.ErrReset)
		case len(h.buf) > 0:
			n := copy(p, h.buf)
			h.buf = h.buf[n:]
			if len(h.buf) == 0 {
				h.buf = nil
			}
			h.cond.Broadcast()
			return n, nil
		case h.fin:
			return 0, io.EOF
		case len(p) == 0:
			return 0, nil
		}
		h.cond.Wait()
	}
}

// Write copies p into the buffer toward the other end, blocking while it is
// full. It fails with an error wrapping flow.ErrReset once the other end
// aborted, net.ErrClosed once this end aborted, and ErrWriteAfterClose
// after CloseWrite.
func (e *End) Write(p []byte) (int, error) {
	h := e.w
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for {
		switch {
		case h.writerReset:
			return n, net.ErrClosed
		case h.readerReset:
			return n, fmt.Errorf("flowtest: write: %w", flow.ErrReset)
		case h.fin:
			return n, ErrWriteAfterClose
		case n == len(p):
			return n, nil
		}
		if room := h.max - len(h.buf); room > 0 {
			k := min(room, len(p)-n)
			h.buf = append(h.buf, p[n:n+k]...)
			n += k
			h.cond.Broadcast()
			continue
		}
		h.cond.Wait()
	}
}

// CloseWrite sends FIN: the other end reads io.EOF after the buffered
// data. It is idempotent; after Abort it returns net.ErrClosed.
func (e *End) CloseWrite() error {
	h := e.w
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.writerReset {
		return net.ErrClosed
	}
	h.fin = true
	h.cond.Broadcast()
	return nil
}

// Abort resets both directions (see flow.Stream.Abort); blocked calls on
// both ends return. It is idempotent.
func (e *End) Abort() {
	for _, x := range []struct {
		h      *half
		reader bool
	}{{e.r, true}, {e.w, false}} {
		x.h.mu.Lock()
		if x.reader {
			x.h.readerReset = true
		} else {
			x.h.writerReset = true
		}
		x.h.cond.Broadcast()
		x.h.mu.Unlock()
	}
}

// Aborted reports whether this end called Abort.
func (e *End) Aborted() bool {
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	return e.w.writerReset
}

// ConnStream adapts a TCP-like net.Conn to flow.Stream: CloseWrite is the
// conn's CloseWrite, Abort closes it with a RST (SetLinger(0)), and a read
// or write failing with ECONNRESET or EPIPE (the peer's RST) is reported
// wrapping flow.ErrReset.
type ConnStream struct {
	C net.Conn

	once sync.Once
}

var _ flow.Stream = (*ConnStream)(nil)

// NewConnStream returns a ConnStream for c; the ConnStream owns c.
func NewConnStream(c net.Conn) *ConnStream { return &ConnStream{C: c} }

// Read reads from the conn.
func (s *ConnStream) Read(p []byte) (int, error) {
	n, err := s.C.Read(p)
	return n, mapReset(err)
}

// Write writes to the conn.
func (s *ConnStream) Write(p []byte) (int, error) {
	n, err := s.C.Write(p)
	return n, mapReset(err)
}

// CloseWrite half-closes the conn; it fails if the conn cannot.
func (s *ConnStream) CloseWrite() error {
	if cw, ok := s.C.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("flowtest: %T cannot half-close", s.C)
}

// Abort closes the conn with a RST if it supports SetLinger. Idempotent.
func (s *ConnStream) Abort() {
	s.once.Do(func() {
		if l, ok := s.C.(interface{ SetLinger(int) error }); ok {
			_ = l.SetLinger(0)
		}
		s.C.Close()
	})
}

// Close closes the conn (for a test's cleanup of a stream Splice never
// got).
func (s *ConnStream) Close() error { s.Abort(); return nil }

func mapReset(err error) error {
	if err != nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return fmt.Errorf("%w: %w", flow.ErrReset, err)
	}
	return err
}

// Listener is a net.Listener whose Accept returns the conns sent on C, for
// serving net/http over flows (flow.NewConn of a Pipe end) in tests. Close
// makes Accept return net.ErrClosed and closes Done; conns still in C are
// not closed.
type Listener struct {
	C    chan net.Conn
	name string
	done chan struct{}
	once sync.Once
}

// NewListener returns a Listener whose Addr is flow.Addr(name).
func NewListener(name string) *Listener {
	return &Listener{C: make(chan net.Conn), name: name, done: make(chan struct{})}
}

// Accept returns the next conn sent on C, or net.ErrClosed after Close.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.C:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close ends Accept; it is idempotent.
func (l *Listener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

// Done is closed by Close: a sender on C selects on it too.
func (l *Listener) Done() <-chan struct{} { return l.done }

// Addr returns flow.Addr(name).
func (l *Listener) Addr() net.Addr { return flow.Addr(l.name) }
