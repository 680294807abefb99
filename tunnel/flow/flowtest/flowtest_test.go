package flowtest_test

import (
	"errors"
	"io"
	"net"
	"testing"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/flow/flowtest"
)

func TestPipe(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, a, b *flowtest.End)
	}{
		{"data then FIN", func(t *testing.T, a, b *flowtest.End) {
			go func() {
				a.Write([]byte("hello world")) // larger than the 4-byte buffer: blocks until read
				a.CloseWrite()
			}()
			got, err := io.ReadAll(b)
			if err != nil || string(got) != "hello world" {
				t.Fatalf("ReadAll = %q, %v", got, err)
			}
			// The other direction still works after the FIN.
			go b.Write([]byte("ok"))
			buf := make([]byte, 2)
			if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "ok" {
				t.Fatalf("reply %q, %v", buf, err)
			}
			if _, err := a.Write([]byte("x")); !errors.Is(err, flowtest.ErrWriteAfterClose) {
				t.Fatalf("write after CloseWrite: %v", err)
			}
		}},
		{"abort resets peer both ways", func(t *testing.T, a, b *flowtest.End) {
			a.Write([]byte("lost"))
			a.Abort()
			if _, err := b.Read(make([]byte, 8)); !flow.IsReset(err) {
				t.Fatalf("peer read after abort: %v, want reset", err)
			}
			if _, err := b.Write([]byte("x")); !flow.IsReset(err) {
				t.Fatalf("peer write after abort: %v, want reset", err)
			}
			if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("own read after abort: %v, want net.ErrClosed", err)
			}
			if !a.Aborted() || b.Aborted() {
				t.Fatalf("Aborted: a %v b %v", a.Aborted(), b.Aborted())
			}
		}},
		{"abort unblocks blocked write", func(t *testing.T, a, b *flowtest.End) {
			done := make(chan error, 1)
			go func() { _, err := a.Write(make([]byte, 100)); done <- err }()
			b.Abort()
			if err := <-done; !flow.IsReset(err) {
				t.Fatalf("blocked write: %v, want reset", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := flowtest.NewPipe(4)
			tt.run(t, a, b)
		})
	}
}
