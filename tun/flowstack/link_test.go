package flowstack

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestLinkBackpressure: a full queue makes the writer wait for room rather
// than drop the packet (a dropped tail can stall a flow for minutes behind
// gVisor's backed-off RTO); it drops only after queueWait, or at once on a
// closed link.
func TestLinkBackpressure(t *testing.T) {
	var drops atomic.Uint64
	l := newLink(1500, 1, 5*time.Second, &drops)
	l.enqueue(outItem{raw: []byte{1}})

	queued := make(chan struct{})
	go func() {
		l.enqueue(outItem{raw: []byte{2}}) // the queue is full: waits
		close(queued)
	}()
	select {
	case <-queued:
		t.Fatal("enqueue on a full queue returned before there was room")
	case <-time.After(50 * time.Millisecond):
	}
	if it := <-l.q; it.raw[0] != 1 {
		t.Fatalf("first packet out is %d, want 1", it.raw[0])
	}
	select {
	case <-queued:
	case <-time.After(5 * time.Second):
		t.Fatal("enqueue still waiting after the writer made room")
	}
	if it := <-l.q; it.raw[0] != 2 {
		t.Fatalf("second packet out is %d, want 2", it.raw[0])
	}
	if n := drops.Load(); n != 0 {
		t.Fatalf("%d drops, want 0", n)
	}

	// A writer that does not come back: the packet is dropped after the
	// wait, and counted.
	l.queueWait = 20 * time.Millisecond
	l.enqueue(outItem{raw: []byte{3}})
	start := time.Now()
	l.enqueue(outItem{raw: []byte{4}})
	if d := time.Since(start); d < l.queueWait {
		t.Fatalf("dropped after %v, want at least %v", d, l.queueWait)
	}
	if n := drops.Load(); n != 1 {
		t.Fatalf("%d drops, want 1", n)
	}

	// Close wakes a waiting writer, and later packets are dropped at once.
	l.queueWait = time.Hour
	done := make(chan struct{})
	go func() {
		l.enqueue(outItem{raw: []byte{5}})
		close(done)
	}()
	time.Sleep(20 * time.Millisecond)
	l.close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close did not wake a writer waiting for room")
	}
	l.enqueue(outItem{raw: []byte{6}})
	if len(l.q) != 1 {
		t.Fatalf("%d packets queued after close, want the 1 from before", len(l.q))
	}
}
