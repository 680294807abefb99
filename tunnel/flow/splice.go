package flow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Copy buffer sizes (see the package doc, "Memory per flow").
const (
	// SmallBufSize is the per-direction buffer a flow holds for its life.
	SmallBufSize = 2 << 10
	// BufSize is the pooled per-direction buffer a flow borrows while a
	// read fills its small buffer, i.e. while data is moving.
	BufSize = 32 << 10
)

var bufPool = sync.Pool{New: func() any { return new([BufSize]byte) }}

// SpliceOption configures Splice.
type SpliceOption func(*spliceConfig)

type spliceConfig struct {
	toStream, fromStream *atomic.Uint64
}

// WithCounters makes Splice add the bytes it copies, as it copies them, to
// toStream (bytes read from the conn and written to the stream) and
// fromStream (read from the stream, written to the conn). Either may be nil.
// The counters may be shared by many flows (a session's or a stack's
// totals).
func WithCounters(toStream, fromStream *atomic.Uint64) SpliceOption {
	return func(c *spliceConfig) { c.toStream, c.fromStream = toStream, fromStream }
}

// Splice copies bytes between the flow's stream s and the local or
// destination connection c, both ways at once, until both directions are
// finished, and returns the bytes copied each way.
//
//   - s's FIN (Read returns io.EOF) half-closes c: CloseWrite if c has it
//     (*net.TCPConn and gVisor's gonet.TCPConn do; otherwise the FIN
//     reaches c's peer only when c is closed at the end). Likewise c's EOF
//     becomes s.CloseWrite. Each side can still send after the other
//     finished sending.
//   - Any other error on either side aborts both: s.Abort() (the peer sees
//     a reset) and c is reset: if c has SetLinger(int) error (*net.TCPConn;
//     package flowstack's conns), SetLinger(0) before Close makes the close
//     a TCP RST. This covers the peer resetting s (IsReset), c's peer
//     sending a RST, and a failed write on either side.
//   - When ctx is done, both are aborted the same way and err is
//     context.Cause(ctx), wrapped.
//
// err is nil when both directions ended with a FIN; otherwise it is the
// first failure, wrapped with which side and operation failed. Splice
// always closes c before it returns; s needs nothing more (it was either
// half-closed both ways or aborted). The caller must not use s or c
// concurrently with Splice.
func Splice(ctx context.Context, s Stream, c net.Conn, opts ...SpliceOption) (toStream, fromStream int64, err error) {
	var cfg spliceConfig
	for _, o := range opts {
		o(&cfg)
	}
	sp := &splicer{s: s, c: c}
	if ctx.Err() != nil {
		sp.fail(fmt.Errorf("flow: splice: %w", context.Cause(ctx)))
		c.Close()
		return 0, 0, sp.err
	}
	afDone := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(afDone)
		sp.fail(fmt.Errorf("flow: splice: %w", context.Cause(ctx)))
	})

	done := make(chan struct{})
	go func() {
		defer close(done)
		fromStream = sp.streamToConn(cfg.fromStream)
	}()
	toStream = sp.connToStream(cfg.toStream)
	<-done
	if !stop() {
		<-afDone // the abort ran or is running; let it finish touching s and c
	}
	c.Close()
	sp.mu.Lock()
	err = sp.err
	sp.mu.Unlock()
	return toStream, fromStream, err
}

// splicer is the state of one Splice call.
type splicer struct {
	s Stream
	c net.Conn

	mu  sync.Mutex
	err error // guarded by mu; first failure, set once by fail

	small [2][SmallBufSize]byte
}

// fail records err if it is the first failure and aborts both sides; it is
// safe to call from any goroutine, any number of times.
func (sp *splicer) fail(err error) {
	sp.mu.Lock()
	first := sp.err == nil
	if first {
		sp.err = err
	}
	sp.mu.Unlock()
	if !first {
		return
	}
	sp.s.Abort()
	resetConn(sp.c)
}

// resetConn closes c with a TCP RST if c supports SetLinger, else plainly.
func resetConn(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(sec int) error }); ok {
		_ = l.SetLinger(0)
	}
	c.Close()
}

// streamToConn copies s to c; s's EOF becomes c.CloseWrite.
func (sp *splicer) streamToConn(count *atomic.Uint64) int64 {
	n, rerr, werr := copyBuf(sp.c, sp.s, sp.small[0][:], count)
	switch {
	case werr != nil:
		sp.fail(fmt.Errorf("flow: splice: conn write: %w", werr))
	case errors.Is(rerr, io.EOF):
		if cw, ok := sp.c.(interface{ CloseWrite() error }); ok {
			if err := cw.CloseWrite(); err != nil {
				sp.fail(fmt.Errorf("flow: splice: conn close-write: %w", err))
			}
		}
	default:
		sp.fail(fmt.Errorf("flow: splice: stream read: %w", rerr))
	}
	return n
}

// connToStream copies c to s; c's EOF becomes s.CloseWrite.
func (sp *splicer) connToStream(count *atomic.Uint64) int64 {
	n, rerr, werr := copyBuf(sp.s, sp.c, sp.small[1][:], count)
	switch {
	case werr != nil:
		sp.fail(fmt.Errorf("flow: splice: stream write: %w", werr))
	case errors.Is(rerr, io.EOF):
		if err := sp.s.CloseWrite(); err != nil {
			sp.fail(fmt.Errorf("flow: splice: stream close-write: %w", err))
		}
	default:
		sp.fail(fmt.Errorf("flow: splice: conn read: %w", rerr))
	}
	return n
}

// copyBuf copies src to dst until src returns an error (io.EOF at a clean
// end) or a write fails, and returns the bytes written. It reads into small
// while reads are short, and into a pooled BufSize buffer while they fill
// the buffer, so an idle flow holds no pooled buffer.
func copyBuf(dst io.Writer, src io.Reader, small []byte, count *atomic.Uint64) (n int64, readErr, writeErr error) {
	buf := small
	var big *[BufSize]byte
	defer func() {
		if big != nil {
			bufPool.Put(big)
		}
	}()
	for {
		k, err := src.Read(buf)
		if k > 0 {
			w, werr := dst.Write(buf[:k])
			n += int64(w)
			if count != nil && w > 0 {
				count.Add(uint64(w))
			}
			if werr == nil && w < k {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return n, nil, werr
			}
		}
		if err != nil {
			return n, err, nil
		}
		switch {
		case big == nil && k == len(buf):
			big = bufPool.Get().(*[BufSize]byte)
			buf = big[:]
		case big != nil && k <= len(small):
			bufPool.Put(big)
			big, buf = nil, small
		}
	}
}
