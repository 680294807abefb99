package datagram

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestWriterBatches(t *testing.T) {
	checkGoroutines(t)
	dev := newChanDevice(4)
	var st Stats
	w := NewWriter(dev, &st, 16)
	var want [][]byte
	for i := range 10 {
		pkt := buildV4(v4opts{proto: 17, payload: udpPayload(i * 10)})
		want = append(want, pkt)
		if !w.Enqueue(pkt) {
			t.Fatalf("Enqueue %d failed", i)
		}
		pkt[25] ^= 0xff // Enqueue copied; changing the caller's slice must not matter
	}
	big := bytes.Repeat([]byte{0x60}, 3000) // beyond a small buffer: large-buffer path
	if !w.EnqueueOwned(append([]byte(nil), big...)) || !w.Enqueue(big) {
		t.Fatal("Enqueue of a 3000-byte packet failed")
	}
	want = append(want, big, big)
	for i := range want[:10] {
		want[i][25] ^= 0xff
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	for i, pkt := range want {
		if got := dev.recv(t); !bytes.Equal(got, pkt) {
			t.Fatalf("packet %d differs: got %d bytes, want %d", i, len(got), len(pkt))
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	dev.mu.Lock()
	defer dev.mu.Unlock()
	if got := dev.batches; len(got) != 3 || got[0] != 4 || got[1] != 4 || got[2] != 4 {
		t.Fatalf("batches %v, want [4 4 4]", got)
	}
	for _, c := range dev.caps {
		if c != LargeBufSize-Headroom {
			t.Fatalf("Write got a buffer with %d bytes of capacity after offset, want %d (room for GRO)", c, LargeBufSize-Headroom)
		}
	}
	if st.WriteBatches.Load() != 3 || st.WritePackets.Load() != 12 {
		t.Fatalf("WriteBatches %d WritePackets %d", st.WriteBatches.Load(), st.WritePackets.Load())
	}
}

func TestWriterDrops(t *testing.T) {
	dev := newChanDevice(8)
	var st Stats
	w := NewWriter(dev, &st, 2)
	pkt := buildV4(v4opts{proto: 17})
	if !w.Enqueue(pkt) || !w.EnqueueOwned(pkt) {
		t.Fatal("first two Enqueues failed")
	}
	if w.Enqueue(pkt) || w.EnqueueOwned(pkt) {
		t.Fatal("Enqueue into a full queue succeeded")
	}
	if n := st.DropQueueFull.Load(); n != 2 {
		t.Fatalf("DropQueueFull = %d, want 2", n)
	}
	if w.Enqueue(nil) || w.EnqueueOwned(nil) || w.Enqueue(make([]byte, 65536)) {
		t.Fatal("Enqueue accepted an empty or oversized packet")
	}
	if n := st.DropMalformed.Load(); n != 3 {
		t.Fatalf("DropMalformed = %d, want 3", n)
	}
}

func TestWriterErrors(t *testing.T) {
	checkGoroutines(t)
	dev := newChanDevice(8)
	var st Stats
	w := NewWriter(dev, &st, 0)
	dev.writeErr = errors.New("EIO")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()

	waitFor(t, "Run to start", w.running.Load)
	if err := w.Run(ctx); err == nil {
		t.Fatal("second concurrent Run did not fail")
	}

	pkt := buildV4(v4opts{proto: 17})
	w.Enqueue(pkt) // lost to the write error, counted
	waitFor(t, "the write error to be counted", func() bool { return st.WriteErrors.Load() == 1 })
	w.Enqueue(pkt) // the writer keeps going
	if got := dev.recv(t); !bytes.Equal(got, pkt) {
		t.Fatal("packet after a write error differs")
	}

	dev.Close()
	w.Enqueue(pkt)
	if err := <-done; err != nil {
		t.Fatalf("Run after device close = %v, want nil", err)
	}
	if st.WriteErrors.Load() != 1 {
		t.Fatalf("closure counted as a write error")
	}
}
