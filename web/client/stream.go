package client

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/roamvpn/roam/tunnel/flow"
)

// countedStream counts a stream's bytes into the client's Stats and, for a
// flow, keeps Stats.Flows: the flow counts as open until both directions
// are done (EOF or error reading, CloseWrite or error writing) or it is
// aborted. It passes CloseRead and the deadline methods through.
type countedStream struct {
	flow.Stream
	c      *Client
	isFlow bool

	mu        sync.Mutex
	readDone  bool // guarded by mu
	writeDone bool // guarded by mu
	gone      bool // guarded by mu; counted out of Flows
}

func (c *Client) count(s flow.Stream, isFlow bool) *countedStream {
	if isFlow {
		c.flows.Add(1)
	}
	return &countedStream{Stream: s, c: c, isFlow: isFlow}
}

func (s *countedStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	s.c.down.Add(uint64(n))
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		s.done(true, false)
	}
	return n, err
}

func (s *countedStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	s.c.up.Add(uint64(n))
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		s.done(false, true)
	}
	return n, err
}

func (s *countedStream) CloseWrite() error {
	s.done(false, true)
	return s.Stream.CloseWrite()
}

func (s *countedStream) Abort() {
	s.done(true, true)
	s.Stream.Abort()
}

// CloseRead stops reading: the stream's own CloseRead, or Abort if it has
// none.
func (s *countedStream) CloseRead() error {
	s.done(true, false)
	if rc, ok := s.Stream.(interface{ CloseRead() error }); ok {
		return rc.CloseRead()
	}
	s.Abort()
	return nil
}

type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// SetReadDeadline is the stream's, if it has deadlines.
func (s *countedStream) SetReadDeadline(t time.Time) error {
	if d, ok := s.Stream.(deadliner); ok {
		return d.SetReadDeadline(t)
	}
	return noDeadline(s.Stream, t)
}

// SetWriteDeadline is the stream's, if it has deadlines.
func (s *countedStream) SetWriteDeadline(t time.Time) error {
	if d, ok := s.Stream.(deadliner); ok {
		return d.SetWriteDeadline(t)
	}
	return noDeadline(s.Stream, t)
}

func noDeadline(s flow.Stream, t time.Time) error {
	if t.IsZero() {
		return nil
	}
	return fmt.Errorf("client: %T has no deadlines: %w", s, errors.ErrUnsupported)
}

func (s *countedStream) done(read, write bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readDone = s.readDone || read
	s.writeDone = s.writeDone || write
	if s.isFlow && s.readDone && s.writeDone && !s.gone {
		s.gone = true
		s.c.flows.Add(-1)
	}
}

var _ io.ReadWriter = (*countedStream)(nil)
