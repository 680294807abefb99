package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall/js"
	"time"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/web/client"
)

// transport is the Go side of wt.js (self.roamWT): it opens WebTransport
// sessions and adapts their streams to flow.Stream. All JS calls are
// synchronous except the promises awaited through settle; JS wakes Go
// through one reused callback.
type transport struct {
	wt       js.Value // self.roamWT
	uint8Arr js.Value // Uint8Array
	wakeFn   js.Func

	mu      sync.Mutex
	nextID  int
	streams map[int]*stream         // guarded by mu
	settles map[int]chan settlement // guarded by mu
}

type settlement struct {
	ok bool
	v  js.Value
}

func newTransport() *transport {
	t := &transport{
		wt:       js.Global().Get("roamWT"),
		uint8Arr: js.Global().Get("Uint8Array"),
		streams:  make(map[int]*stream),
		settles:  make(map[int]chan settlement),
	}
	t.wakeFn = js.FuncOf(t.wake)
	t.wt.Call("init", t.wakeFn)
	return t
}

// wake is the callback JS calls: (0, id) stream readable, (1, id) stream
// writable, (2, token, ok, value) promise settled. It must not block: it
// only does non-blocking sends.
func (t *transport) wake(_ js.Value, args []js.Value) any {
	kind, id := args[0].Int(), args[1].Int()
	t.mu.Lock()
	defer t.mu.Unlock()
	switch kind {
	case 0, 1:
		s := t.streams[id]
		if s == nil {
			return nil
		}
		ch := s.readCh
		if kind == 1 {
			ch = s.writeCh
		}
		select {
		case ch <- struct{}{}:
		default:
		}
	case 2:
		if ch, ok := t.settles[id]; ok {
			delete(t.settles, id)
			ch <- settlement{ok: args[2].Bool(), v: args[3]} // buffered
		}
	}
	return nil
}

// await waits for the JS promise p. A rejection is returned as an error
// (see jsError). If ctx ends first, await returns its cause, and late (if
// not nil) gets the value should p still resolve, to release it.
func (t *transport) await(ctx context.Context, p js.Value, late func(js.Value)) (js.Value, error) {
	ch := make(chan settlement, 1)
	t.mu.Lock()
	t.nextID++
	token := t.nextID
	t.settles[token] = ch
	t.mu.Unlock()
	t.wt.Call("settle", p, token)
	select {
	case s := <-ch:
		if !s.ok {
			return js.Undefined(), jsError(t.wt, s.v)
		}
		return s.v, nil
	case <-ctx.Done():
		if late != nil {
			go func() {
				if s := <-ch; s.ok {
					late(s.v)
				}
			}()
		} else {
			t.mu.Lock()
			delete(t.settles, token)
			t.mu.Unlock()
		}
		return js.Undefined(), context.Cause(ctx)
	}
}

// TransportError is a failure to open a WebTransport session, as wt.js
// reports it.
type TransportError struct {
	// Code is "unsupported", "bad-config", "no-answer" or "handshake".
	Code    string
	Message string
}

func (e *TransportError) Error() string { return "webtransport: " + e.Code + ": " + e.Message }

// jsError converts a rejection value: an object with a string code (from
// wt.js's connect) becomes a *TransportError, anything else is described
// by wt.js's errInfo.
func jsError(wt, v js.Value) error {
	if v.Type() == js.TypeObject && v.Get("code").Type() == js.TypeString {
		return &TransportError{Code: v.Get("code").String(), Message: v.Get("message").String()}
	}
	info := wt.Call("errInfo", v)
	return infoError(info.Index(0).String(), info.Index(1).String())
}

// infoError makes an error of an errInfo [kind, message].
func infoError(kind, msg string) error {
	switch kind {
	case "reset":
		return fmt.Errorf("webtransport: %w: %s", flow.ErrReset, msg)
	case "session":
		return fmt.Errorf("webtransport: %w: %s", errSessionClosed, msg)
	case "closed":
		return net.ErrClosed
	}
	return errors.New("webtransport: " + msg)
}

// errSessionClosed is wrapped by the errors of streams whose session has
// ended; it wraps client.ErrSessionLost, so that a fetch or dial failing
// that way is reported as the session lost, not as some other error.
var errSessionClosed = fmt.Errorf("session closed: %w", client.ErrSessionLost)

// session is a WebTransport session: a client.Session.
type session struct {
	t    *transport
	h    js.Value // wt.js Session
	once sync.Once
}

var _ client.Session = (*session)(nil)

// dial opens a session to url, pinning hashes (hex SHA-256 values; none:
// the browser's normal certificate checks). It fails with a
// *TransportError if the session cannot be opened.
func (t *transport) dial(ctx context.Context, url string, hashes []string, timeout time.Duration) (*session, error) {
	hs := make([]any, len(hashes))
	for i, h := range hashes {
		hs[i] = h
	}
	v, err := t.await(ctx, t.wt.Call("connect", url, hs, timeout.Milliseconds()), func(v js.Value) { v.Call("close", "abandoned") })
	if err != nil {
		return nil, err
	}
	return &session{t: t, h: v}, nil
}

// OpenStream opens a bidirectional stream.
func (s *session) OpenStream(ctx context.Context) (flow.Stream, error) {
	s.t.mu.Lock()
	s.t.nextID++
	id := s.t.nextID
	st := &stream{t: s.t, id: id, readCh: make(chan struct{}, 1), writeCh: make(chan struct{}, 1), aborted: make(chan struct{})}
	s.t.streams[id] = st
	s.t.mu.Unlock()
	v, err := s.t.await(ctx, s.h.Call("openStream", id), func(v js.Value) { v.Call("abort") })
	if err != nil {
		s.t.remove(id)
		if ci := s.h.Get("closedInfo"); ci.Truthy() {
			err = infoError(ci.Index(0).String(), ci.Index(1).String())
		}
		return nil, fmt.Errorf("opening a stream: %w", err)
	}
	st.h = v
	return st, nil
}

// Close closes the session; its streams fail. Idempotent.
func (s *session) Close() error {
	s.once.Do(func() { s.h.Call("close", "closed by the client") })
	return nil
}

func (t *transport) remove(id int) {
	t.mu.Lock()
	delete(t.streams, id)
	t.mu.Unlock()
}

// maxWrite bounds the chunk handed to JS per call.
const maxWrite = 256 << 10

// stream is one WebTransport bidirectional stream: a flow.Stream with
// CloseRead and deadlines. Read takes everything wt.js has queued, up to
// len(p), in one call.
type stream struct {
	t       *transport
	id      int
	h       js.Value // wt.js Stream
	readCh  chan struct{}
	writeCh chan struct{}
	aborted chan struct{}
	once    sync.Once
	rdl     deadline
	wdl     deadline

	mu        sync.Mutex
	readDone  bool // guarded by mu
	writeDone bool // guarded by mu
}

var _ flow.Stream = (*stream)(nil)

// Read reads what the server sent: io.EOF after its FIN, an error wrapping
// flow.ErrReset after its reset, net.ErrClosed after Abort or CloseRead,
// os.ErrDeadlineExceeded after the read deadline.
func (s *stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		select {
		case <-s.aborted:
			return 0, net.ErrClosed
		case <-s.rdl.done():
			return 0, os.ErrDeadlineExceeded
		default:
		}
		v := s.h.Call("take", len(p))
		if v.Type() != js.TypeNumber {
			return js.CopyBytesToGo(p, v), nil
		}
		switch v.Int() {
		case 1:
			s.done(true, false)
			return 0, io.EOF
		case 2:
			s.done(true, false)
			info := s.h.Call("error", 0)
			return 0, infoError(info.Index(0).String(), info.Index(1).String())
		case 3:
			return 0, net.ErrClosed
		}
		select {
		case <-s.readCh:
		case <-s.aborted:
		case <-s.rdl.done():
		}
	}
}

// Write hands p to the browser, waiting while more than wt.js's limit is
// not yet accepted. It fails with an error wrapping flow.ErrReset after the
// server's STOP_SENDING (reported by the write after it), net.ErrClosed
// after CloseWrite or Abort, os.ErrDeadlineExceeded after the deadline.
func (s *stream) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		select {
		case <-s.aborted:
			return n, net.ErrClosed
		case <-s.wdl.done():
			return n, os.ErrDeadlineExceeded
		default:
		}
		chunk := p[n:min(len(p), n+maxWrite)]
		u8 := s.t.uint8Arr.New(len(chunk))
		js.CopyBytesToJS(u8, chunk)
		r := s.h.Call("write", u8).Int()
		if r == 0 || r == 1 {
			n += len(chunk)
		}
		for r == 1 {
			select {
			case <-s.writeCh:
			case <-s.aborted:
				return n, net.ErrClosed
			case <-s.wdl.done():
				return n, os.ErrDeadlineExceeded
			}
			r = s.h.Call("writable").Int()
		}
		if err := s.writeErr(r); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (s *stream) writeErr(r int) error {
	switch r {
	case 2:
		s.done(false, true)
		info := s.h.Call("error", 1)
		return infoError(info.Index(0).String(), info.Index(1).String())
	case 3:
		return net.ErrClosed
	}
	return nil
}

// CloseWrite sends FIN after the data written.
func (s *stream) CloseWrite() error {
	err := s.writeErr(s.h.Call("closeWrite").Int())
	s.done(false, true)
	return err
}

// CloseRead stops reading: QUIC STOP_SENDING, so the server's writes fail
// with a reset; a blocked Read returns net.ErrClosed.
func (s *stream) CloseRead() error {
	s.h.Call("cancelRead")
	s.done(true, false)
	select {
	case s.readCh <- struct{}{}:
	default:
	}
	return nil
}

// Abort resets both directions; blocked calls return net.ErrClosed.
func (s *stream) Abort() {
	s.once.Do(func() {
		close(s.aborted)
		if s.h.Truthy() {
			s.h.Call("abort")
		}
		s.done(true, true)
	})
}

// SetReadDeadline sets the read deadline (zero: none).
func (s *stream) SetReadDeadline(t time.Time) error { s.rdl.set(t); return nil }

// SetWriteDeadline sets the write deadline (zero: none).
func (s *stream) SetWriteDeadline(t time.Time) error { s.wdl.set(t); return nil }

// done records that a direction finished; once both have, the stream is
// dropped from the transport's table (JS keeps the object alive while its
// promises are pending).
func (s *stream) done(read, write bool) {
	s.mu.Lock()
	s.readDone = s.readDone || read
	s.writeDone = s.writeDone || write
	both := s.readDone && s.writeDone
	s.mu.Unlock()
	if both {
		s.t.remove(s.id)
	}
}

// deadline is a settable deadline whose done channel is closed once it has
// passed. The zero value has no deadline.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer   // guarded by mu
	ch    chan struct{} // guarded by mu; closed when the deadline passed
}

// set sets the deadline to t; the zero time removes it.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		d.ch = nil // the timer fired: its channel is closed
	}
	d.timer = nil
	if d.ch != nil {
		select {
		case <-d.ch: // passed before
			d.ch = nil
		default:
		}
	}
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	ch := d.ch
	if dur := time.Until(t); dur > 0 {
		d.timer = time.AfterFunc(dur, func() { close(ch) })
	} else {
		close(ch)
	}
}

// done returns a channel closed when the deadline has passed (nil, which
// blocks forever, if none was ever set).
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}
