package flow_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/flow/flowtest"
)

// tcpPair returns both ends of a loopback TCP connection: app plays the
// application (or destination), local is the conn handed to Splice.
func tcpPair(t testing.TB) (app, local *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	app, err = net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	local = <-acc
	if local == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { app.Close(); local.Close() })
	return app, local
}

type result struct {
	to, from int64
	err      error
}

// splice runs flow.Splice on a goroutine and returns its result channel.
func splice(ctx context.Context, s flow.Stream, c net.Conn, opts ...flow.SpliceOption) <-chan result {
	ch := make(chan result, 1)
	go func() {
		to, from, err := flow.Splice(ctx, s, c, opts...)
		ch <- result{to, from, err}
	}()
	return ch
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// exchange writes out to w then half-closes it, while reading r to EOF; it
// returns what it read.
func exchange(t *testing.T, w io.Writer, closeWrite func() error, r io.Reader, out []byte) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(r)
		if err != nil {
			t.Errorf("read: %v", err)
		}
		got <- b
	}()
	go func() {
		if _, err := w.Write(out); err != nil {
			t.Errorf("write: %v", err)
		}
		if err := closeWrite(); err != nil {
			t.Errorf("close-write: %v", err)
		}
	}()
	return got
}

func TestSpliceBytes(t *testing.T) {
	const size = 1 << 20
	tests := []struct {
		name    string
		pipeBuf int
	}{
		{"default pipe buffer", flowtest.DefaultPipeBuffer},
		{"tiny pipe buffer", 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, local := tcpPair(t)
			s, peer := flowtest.NewPipe(tt.pipeBuf)
			var up, down atomic.Uint64
			res := splice(context.Background(), s, local, flow.WithCounters(&up, &down))

			upData, downData := randBytes(t, size), randBytes(t, size)
			atPeer := exchange(t, peer, peer.CloseWrite, peer, downData)
			atApp := exchange(t, app, app.CloseWrite, app, upData)
			if got := <-atPeer; !bytes.Equal(got, upData) {
				t.Errorf("peer got %d bytes, want the app's %d bytes exactly", len(got), len(upData))
			}
			if got := <-atApp; !bytes.Equal(got, downData) {
				t.Errorf("app got %d bytes, want the peer's %d bytes exactly", len(got), len(downData))
			}
			r := <-res
			if r.err != nil || r.to != size || r.from != size {
				t.Errorf("Splice = %d, %d, %v; want %d, %d, nil", r.to, r.from, r.err, size, size)
			}
			if up.Load() != size || down.Load() != size {
				t.Errorf("counters %d/%d, want %d/%d", up.Load(), down.Load(), size, size)
			}
			if s.Aborted() {
				t.Error("clean splice aborted the stream")
			}
			if _, err := local.Write([]byte{1}); !errors.Is(err, net.ErrClosed) {
				t.Errorf("conn after Splice: write err %v, want net.ErrClosed (Splice closes it)", err)
			}
		})
	}
}

func TestSpliceHalfClose(t *testing.T) {
	request, reply := []byte("GET / HTTP/1.0\r\n\r\n"), randBytes(t, 300<<10)
	tests := []struct {
		name       string
		appFirst   bool // the app shuts its write side first; else the peer does
		wantToFrom [2]int64
	}{
		{"app shuts write, reads reply", true, [2]int64{int64(len(request)), int64(len(reply))}},
		{"peer shuts write, reads reply", false, [2]int64{int64(len(reply)), int64(len(request))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, local := tcpPair(t)
			s, peer := flowtest.Pipe()
			res := splice(context.Background(), s, local)

			// The first side sends its request and FIN; the other reads
			// to EOF, only then replies and sends its FIN; the first
			// still reads the whole reply.
			type side struct {
				rw         io.ReadWriter
				closeWrite func() error
			}
			a, b := side{app, app.CloseWrite}, side{peer, peer.CloseWrite}
			if !tt.appFirst {
				a, b = b, a
			}
			if _, err := a.rw.Write(request); err != nil {
				t.Fatal(err)
			}
			if err := a.closeWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(b.rw)
			if err != nil || !bytes.Equal(got, request) {
				t.Fatalf("request side read %q, %v; want %q, EOF", got, err, request)
			}
			go func() {
				if _, err := b.rw.Write(reply); err != nil {
					t.Errorf("reply: %v", err)
				}
				if err := b.closeWrite(); err != nil {
					t.Errorf("close-write after reply: %v", err)
				}
			}()
			got, err = io.ReadAll(a.rw)
			if err != nil || !bytes.Equal(got, reply) {
				t.Fatalf("half-closed side read %d bytes, %v; want the %d-byte reply, EOF", len(got), err, len(reply))
			}
			r := <-res
			if r.err != nil || r.to != tt.wantToFrom[0] || r.from != tt.wantToFrom[1] {
				t.Errorf("Splice = %d, %d, %v; want %d, %d, nil", r.to, r.from, r.err, tt.wantToFrom[0], tt.wantToFrom[1])
			}
		})
	}
}

// isConnReset reports whether err is the app seeing a TCP RST.
func isConnReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

func TestSpliceReset(t *testing.T) {
	tests := []struct {
		name     string
		trigger  func(app *net.TCPConn, peer *flowtest.End, cancel context.CancelFunc)
		wantErr  func(error) bool
		errMatch string
		appRST   bool // the app reset the connection itself
	}{
		{
			name:     "peer resets stream -> conn RST",
			trigger:  func(_ *net.TCPConn, peer *flowtest.End, _ context.CancelFunc) { peer.Abort() },
			wantErr:  flow.IsReset,
			errMatch: "IsReset",
		},
		{
			name: "conn RST -> stream reset",
			trigger: func(app *net.TCPConn, _ *flowtest.End, _ context.CancelFunc) {
				app.SetLinger(0)
				app.Close()
			},
			wantErr:  isConnReset,
			errMatch: "ECONNRESET",
			appRST:   true,
		},
		{
			name:     "ctx cancel -> both reset",
			trigger:  func(_ *net.TCPConn, _ *flowtest.End, cancel context.CancelFunc) { cancel() },
			wantErr:  func(err error) bool { return errors.Is(err, context.Canceled) },
			errMatch: "context.Canceled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, local := tcpPair(t)
			s, peer := flowtest.Pipe()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			res := splice(ctx, s, local)

			// Some traffic first, so the flow is established both ways.
			if _, err := app.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(peer, buf); err != nil {
				t.Fatal(err)
			}
			if _, err := peer.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(app, buf); err != nil {
				t.Fatal(err)
			}

			tt.trigger(app, peer, cancel)
			r := <-res
			if !tt.wantErr(r.err) {
				t.Errorf("Splice err = %v, want one matching %s", r.err, tt.errMatch)
			}
			if !s.Aborted() {
				t.Error("stream not aborted")
			}
			if _, err := peer.Read(buf); !flow.IsReset(err) && !errors.Is(err, net.ErrClosed) {
				t.Errorf("peer read after reset: %v, want a reset", err)
			}
			if !tt.appRST {
				// The app did not reset the connection: it sees our RST.
				if _, err := app.Read(buf); !isConnReset(err) {
					t.Errorf("app read after reset: %v, want ECONNRESET (RST)", err)
				}
			}
		})
	}
}

func TestSpliceCancelledBeforeStart(t *testing.T) {
	app, local := tcpPair(t)
	s, _ := flowtest.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := flow.Splice(ctx, s, local)
	if !errors.Is(err, context.Canceled) || !s.Aborted() {
		t.Fatalf("Splice with done ctx = %v (aborted %v), want context.Canceled and an aborted stream", err, s.Aborted())
	}
	if _, err := app.Read(make([]byte, 1)); !isConnReset(err) {
		t.Errorf("app read: %v, want ECONNRESET", err)
	}
}

// TestSpliceConnWithoutCloseWrite: with a conn that cannot half-close
// (net.Pipe), the stream's FIN reaches the conn's peer when Splice closes
// the conn at the end.
func TestSpliceConnWithoutCloseWrite(t *testing.T) {
	appEnd, local := net.Pipe()
	s, peer := flowtest.Pipe()
	res := splice(context.Background(), s, local)
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	peer.CloseWrite()
	// The stream's data reaches the app before anything else happens.
	got := make([]byte, 5)
	if _, err := io.ReadFull(appEnd, got); err != nil || string(got) != "hello" {
		t.Fatalf("app read %q, %v; want hello", got, err)
	}
	if _, err := appEnd.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 3)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "bye" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	// net.Pipe has no half-close: the app's "FIN" is its Close, which
	// Splice sees as the conn's end; the stream's FIN reached the conn only
	// as Splice's final Close.
	appEnd.Close()
	<-res
	if _, err := peer.Read(got); err != io.EOF {
		t.Errorf("peer read after the app's close: %v, want io.EOF", err)
	}
}
