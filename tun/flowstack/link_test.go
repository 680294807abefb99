package flowstack

import (
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
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

	// The writer takes a packet: drop mode ends, and a full queue makes
	// the next packet wait again.
	<-l.q
	l.progress()
	l.enqueue(outItem{raw: []byte{5}})

	// Close wakes a waiting writer, and later packets are dropped at once.
	l.queueWait = time.Hour
	done := make(chan struct{})
	go func() {
		l.enqueue(outItem{raw: []byte{6}})
		close(done)
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("enqueue on a full queue returned at once after the writer made progress: drop mode did not end")
	default:
	}
	l.close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close did not wake a writer waiting for room")
	}
	l.enqueue(outItem{raw: []byte{7}})
	if len(l.q) != 1 {
		t.Fatalf("%d packets queued after close, want the 1 from before", len(l.q))
	}
}

// TestLinkBatchDeadline: the packets of one WritePackets call share one
// wait of queueWait (a 64-segment burst toward a stuck writer must not
// hold gVisor's goroutine, and the TCP endpoint's lock, for 64 waits);
// after it runs out the rest of the batch is dropped at once, and later
// calls drop without waiting (drop mode) until the writer takes a packet.
func TestLinkBatchDeadline(t *testing.T) {
	const wait = 100 * time.Millisecond
	var drops atomic.Uint64
	l := newLink(1500, 2, wait, &drops)
	batch := func(n int) (stack.PacketBufferList, []*stack.PacketBuffer) {
		var list stack.PacketBufferList
		var all []*stack.PacketBuffer
		for i := range n {
			pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData([]byte{byte(i)})})
			list.PushBack(pkb)
			all = append(all, pkb)
		}
		return list, all
	}
	release := func(all []*stack.PacketBuffer) {
		for _, pkb := range all {
			pkb.DecRef()
		}
	}

	// 10 packets, room for 2: one wait, then 8 drops.
	list, all := batch(10)
	start := time.Now()
	if n, err := l.WritePackets(list); n != 10 || err != nil {
		t.Fatalf("WritePackets = %d, %v; want 10, nil", n, err)
	}
	d := time.Since(start)
	release(all)
	if d < wait {
		t.Fatalf("WritePackets returned after %v, before the wait of %v", d, wait)
	}
	if d > 4*wait {
		t.Fatalf("WritePackets took %v for 8 packets that found no room: want one wait of %v for the batch, not one per packet", d, wait)
	}
	if n := drops.Load(); n != 8 {
		t.Fatalf("%d drops, want 8", n)
	}
	if len(l.q) != 2 {
		t.Fatalf("%d packets queued, want 2", len(l.q))
	}

	// Drop mode: the writer has not taken anything; the next batch (and a
	// single packet, as Stack.Read's goroutine sends) is dropped at once.
	list, all = batch(5)
	start = time.Now()
	l.WritePackets(list)
	l.enqueue(outItem{raw: []byte{1}})
	d = time.Since(start)
	release(all)
	if d >= wait {
		t.Fatalf("in drop mode WritePackets and enqueue took %v: want no wait", d)
	}
	if n := drops.Load(); n != 8+5+1 {
		t.Fatalf("%d drops, want %d", n, 8+5+1)
	}

	// The writer takes a packet: backpressure again. The second packet of
	// this batch waits for room, which the writer makes.
	it := <-l.q
	it.release()
	l.progress()
	l.queueWait = time.Hour // no drop on a slow test machine
	list, all = batch(2)
	done := make(chan struct{})
	go func() {
		l.WritePackets(list)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("WritePackets returned although the queue had no room for its second packet")
	case <-time.After(50 * time.Millisecond):
	}
	it = <-l.q
	it.release()
	<-done
	release(all)
	if n := drops.Load(); n != 8+5+1 {
		t.Fatalf("%d drops after the writer made room, want still %d", n, 8+5+1)
	}
	if len(l.q) != 2 {
		t.Fatalf("%d packets queued, want 2", len(l.q))
	}
	l.close()
	l.drain()
}
