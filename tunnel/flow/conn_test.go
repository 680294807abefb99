package flow_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/flow/flowtest"
)

// readCloserEnd is a Pipe end with a CloseRead method that records its
// calls and stops reading the way an Abort of the read side would.
type readCloserEnd struct {
	*flowtest.End
	closeRead atomic.Int32
}

func (e *readCloserEnd) CloseRead() error { e.closeRead.Add(1); return nil }

// deadlineEnd is a Pipe end with deadline methods that record their calls.
type deadlineEnd struct {
	*flowtest.End
	mu            sync.Mutex
	read, written time.Time
}

func (e *deadlineEnd) SetReadDeadline(t time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.read = t
	return nil
}

func (e *deadlineEnd) SetWriteDeadline(t time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.written = t
	return nil
}

func TestConnBytesAndHalfClose(t *testing.T) {
	a, b := flowtest.Pipe()
	c := flow.NewConn(a, nil, flow.Addr("192.0.2.1:80"))
	if got := c.RemoteAddr().String(); got != "192.0.2.1:80" {
		t.Errorf("RemoteAddr = %q", got)
	}
	if got := c.LocalAddr().Network(); got != "flow" {
		t.Errorf("LocalAddr().Network() = %q", got)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "ping" {
		t.Fatalf("peer read %q, %v; want ping, nil", got, err)
	}
	go func() {
		b.Write([]byte("pong"))
		b.CloseWrite()
	}()
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "pong" {
		t.Fatalf("conn read %q, %v; want pong, nil", got, err)
	}
	// The peer finished: Close must not reset anything.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if a.Aborted() {
		t.Error("Close after EOF aborted the stream")
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestConnClose(t *testing.T) {
	tests := []struct {
		name          string
		closeRead     bool
		wantAbort     bool
		wantCloseRead int32
	}{
		{name: "abort without CloseRead", wantAbort: true},
		{name: "CloseRead", closeRead: true, wantCloseRead: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := flowtest.Pipe()
			var s flow.Stream = a
			rc := &readCloserEnd{End: a}
			if tt.closeRead {
				s = rc
			}
			c := flow.NewConn(s, nil, nil)
			readErr := make(chan error, 1)
			go func() {
				_, err := c.Read(make([]byte, 10))
				readErr <- err
			}()
			time.Sleep(10 * time.Millisecond) // let Read block
			c.Close()
			if a.Aborted() != tt.wantAbort {
				t.Errorf("aborted = %v, want %v", a.Aborted(), tt.wantAbort)
			}
			if got := rc.closeRead.Load(); got != tt.wantCloseRead {
				t.Errorf("CloseRead called %d times, want %d", got, tt.wantCloseRead)
			}
			if tt.closeRead {
				// The FIN reached the peer; unblock the Read as the
				// stream's CloseRead would.
				if _, err := b.Read(make([]byte, 1)); err != io.EOF {
					t.Errorf("peer Read = %v, want io.EOF (FIN)", err)
				}
				b.Abort()
			}
			select {
			case err := <-readErr:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("blocked Read returned %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Read still blocked after Close")
			}
		})
	}
}

func TestConnReset(t *testing.T) {
	a, b := flowtest.Pipe()
	c := flow.NewConn(a, nil, nil)
	b.Abort()
	if _, err := c.Read(make([]byte, 1)); !flow.IsReset(err) {
		t.Errorf("Read after the peer's reset: %v, want a reset", err)
	}
}

func TestConnDeadlines(t *testing.T) {
	a, _ := flowtest.Pipe()
	c := flow.NewConn(a, nil, nil)
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Errorf("SetDeadline(zero) = %v, want nil", err)
	}
	if err := c.SetReadDeadline(time.Now()); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("SetReadDeadline on a stream without deadlines = %v, want ErrUnsupported", err)
	}
	d := &deadlineEnd{End: a}
	c = flow.NewConn(d, nil, nil)
	when := time.Now().Add(time.Minute)
	if err := c.SetDeadline(when); err != nil {
		t.Fatal(err)
	}
	if !d.read.Equal(when) || !d.written.Equal(when) {
		t.Errorf("stream deadlines = %v, %v; want %v", d.read, d.written, when)
	}
}

// TestConnHTTP runs net/http's client and server over a Pipe, both ends
// adapted with NewConn, as the browser client runs its HTTP client over
// flows.
func TestConnHTTP(t *testing.T) {
	ln := flowtest.NewListener("server")
	body := strings.Repeat("roam ", 50000)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d\n%s", r.Method, r.URL.Path, len(req), body)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	var dials atomic.Int32
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		a, b := flowtest.Pipe()
		select {
		case ln.C <- flow.NewConn(b, flow.Addr("server"), flow.Addr("client")):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return flow.NewConn(a, nil, flow.Addr(addr)), nil
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for i := range 3 {
		resp, err := client.Post("http://example.test/x", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := "POST /x 5\n" + body; string(got) != want {
			t.Fatalf("request %d: body of %d bytes, want %d", i, len(got), len(want))
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d dials for 3 requests, want 1 (connection reuse)", n)
	}
}

// lazyFINEnd is a Pipe end whose CloseWrite, like the browser's stream,
// does not wake a Write blocked under flow control (the FIN waits behind
// the data), and whose CloseRead (STOP_SENDING) does not touch writing.
type lazyFINEnd struct {
	*flowtest.End
	finCalls atomic.Int32
}

func (e *lazyFINEnd) CloseWrite() error { e.finCalls.Add(1); return nil }

func (e *lazyFINEnd) CloseRead() error { return nil }

// TestConnCloseBlockedWrite checks that Close unblocks a Write stuck under
// flow control (the peer does not read) even on a Stream whose CloseWrite
// would not: Close resets the stream, as net.Conn's contract needs.
func TestConnCloseBlockedWrite(t *testing.T) {
	a, b := flowtest.NewPipe(16)
	s := &lazyFINEnd{End: a}
	c := flow.NewConn(s, nil, nil)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 1024)) // more than the pipe holds
		writeErr <- err
	}()
	time.Sleep(10 * time.Millisecond) // let Write block
	select {
	case err := <-writeErr:
		t.Fatalf("Write returned %v before Close; want it blocked", err)
	default:
	}
	c.Close()
	select {
	case err := <-writeErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Write returned %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write still blocked after Close")
	}
	if !a.Aborted() {
		t.Error("Close with a blocked Write did not reset the stream")
	}
	if _, err := b.Read(make([]byte, 64)); err != nil && !flow.IsReset(err) {
		t.Errorf("peer Read = %v, want data or a reset", err)
	}

	// Without a Write in progress, Close sends FIN and does not reset.
	a2, _ := flowtest.Pipe()
	s2 := &lazyFINEnd{End: a2}
	c2 := flow.NewConn(s2, nil, nil)
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if s2.finCalls.Load() != 1 {
		t.Errorf("CloseWrite called %d times by Close, want 1", s2.finCalls.Load())
	}
	if a2.Aborted() {
		t.Error("Close without a Write in progress reset the stream")
	}
}
