package flow_test

import (
	"context"
	"io"
	"testing"

	"github.com/roamvpn/roam/tunnel/flow/flowtest"
)

// BenchmarkSplice copies from an in-memory stream to a loopback TCP
// connection (the server's download direction). The allocations are the
// flowtest.Pipe's buffer; Splice allocates only its state per call.
func BenchmarkSplice(b *testing.B) {
	const chunk = 256 << 10
	app, local := tcpPair(b)
	s, peer := flowtest.Pipe()
	res := splice(context.Background(), s, local)
	done := make(chan int64)
	go func() {
		n, _ := io.Copy(io.Discard, app)
		done <- n
	}()
	buf := make([]byte, chunk)
	b.ReportAllocs()
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := peer.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	peer.CloseWrite()
	if n := <-done; n != int64(b.N)*chunk {
		b.Fatalf("app got %d bytes, want %d", n, int64(b.N)*chunk)
	}
	b.StopTimer()
	app.Close()
	if r := <-res; r.from != int64(b.N)*chunk {
		b.Fatalf("Splice copied %d bytes, want %d", r.from, int64(b.N)*chunk)
	}
}
