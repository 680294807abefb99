package flow

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Conn adapts a Stream to net.Conn, so that code written for TCP
// connections (net/http's Transport, crypto/tls, an SSH client) can run
// over a flow: the browser client's HTTP client and raw dial use it. Read
// and Write are the Stream's; CloseWrite is the half-close (FIN).
//
// Deadlines are passed to the Stream if it has SetReadDeadline and
// SetWriteDeadline methods (quic-go's and webtransport-go's streams do, and
// so does the browser client's); otherwise setting a non-zero deadline
// returns an error wrapping errors.ErrUnsupported, which net/http and
// crypto/tls tolerate.
type Conn struct {
	s             Stream
	local, remote net.Addr

	closeOnce sync.Once
	closed    atomic.Bool  // Close was called
	readEOF   atomic.Bool  // Read returned io.EOF: the peer's side is done
	writing   atomic.Int32 // Writes in progress
}

var _ net.Conn = (*Conn)(nil)

// NewConn returns a Conn over s. local and remote are what LocalAddr and
// RemoteAddr return; nil means an Addr with network "flow" and an empty
// string. The Conn owns s: Close releases it.
func NewConn(s Stream, local, remote net.Addr) *Conn {
	if local == nil {
		local = Addr("")
	}
	if remote == nil {
		remote = Addr("")
	}
	return &Conn{s: s, local: local, remote: remote}
}

// Addr is the net.Addr of one end of a flow: its String is what the client
// asked for ("host:port") or a description of the local end, and its
// Network is "flow".
type Addr string

// Network returns "flow".
func (Addr) Network() string { return "flow" }

// String returns a as a string.
func (a Addr) String() string { return string(a) }

// Stream returns the underlying Stream.
func (c *Conn) Stream() Stream { return c.s }

// Read reads from the stream: io.EOF after the peer's FIN, an error for
// which IsReset is true after the peer's reset, net.ErrClosed after Close.
// The caller owns p.
func (c *Conn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.s.Read(p)
	if err != nil {
		if c.closed.Load() {
			return n, net.ErrClosed
		}
		if err == io.EOF {
			c.readEOF.Store(true)
		}
	}
	return n, err
}

// Write writes p to the stream; it fails with net.ErrClosed after Close.
// The caller keeps ownership of p.
func (c *Conn) Write(p []byte) (int, error) {
	c.writing.Add(1) // before the check: Close sees it, or Write sees Close
	defer c.writing.Add(-1)
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.s.Write(p)
	if err != nil && c.closed.Load() {
		return n, net.ErrClosed
	}
	return n, err
}

// CloseWrite half-closes the flow: the destination reads EOF after the data
// written so far. Reading continues.
func (c *Conn) CloseWrite() error { return c.s.CloseWrite() }

// Close ends the flow as closing a TCP socket does. It sends FIN after the
// data written so far. If the peer has not finished sending (Read has not
// returned io.EOF), it also stops reading: with the Stream's CloseRead
// method if it has one (QUIC STOP_SENDING, so the destination sees a reset
// if it sends more, as a TCP peer would), otherwise by Abort, which may
// also discard written data not yet delivered. If a Write is in progress
// (blocked under flow control, say), Close resets the stream instead (Abort):
// a FIN cannot follow data that was never handed over, and a Stream need
// not unblock a Write on CloseWrite. Blocked Reads and Writes return
// net.ErrClosed. Close is idempotent and always returns nil or the
// CloseWrite error of the first call.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		if c.writing.Load() > 0 {
			c.s.Abort()
			return
		}
		err = c.s.CloseWrite()
		if c.readEOF.Load() {
			return
		}
		if rc, ok := c.s.(interface{ CloseRead() error }); ok {
			_ = rc.CloseRead()
			return
		}
		c.s.Abort()
		err = nil
	})
	return err
}

// LocalAddr returns the local address given to NewConn.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote address given to NewConn.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// SetDeadline sets both deadlines (see Conn for streams without them).
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline on the Stream, if it has one.
func (c *Conn) SetReadDeadline(t time.Time) error {
	if d, ok := c.s.(deadliner); ok {
		return d.SetReadDeadline(t)
	}
	return c.noDeadline(t)
}

// SetWriteDeadline sets the write deadline on the Stream, if it has one.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	if d, ok := c.s.(deadliner); ok {
		return d.SetWriteDeadline(t)
	}
	return c.noDeadline(t)
}

func (c *Conn) noDeadline(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	return fmt.Errorf("flow: %T has no deadlines: %w", c.s, errors.ErrUnsupported)
}
