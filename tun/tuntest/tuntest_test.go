package tuntest_test

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/roamvpn/roam/tun"
	"github.com/roamvpn/roam/tun/tuntest"
)

var _ tun.Device = (*tuntest.ChannelDevice)(nil)

func makeBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

func TestRead(t *testing.T) {
	tests := []struct {
		name     string
		inject   [][]byte
		nbufs    int
		bufSize  int
		offset   int
		want     [][]byte
		wantDrop uint64
	}{
		{name: "one", inject: [][]byte{{1, 2, 3}}, nbufs: 4, bufSize: 32, offset: 16, want: [][]byte{{1, 2, 3}}},
		{name: "batch of queued", inject: [][]byte{{1}, {2, 2}, {3, 3, 3}}, nbufs: 4, bufSize: 32, offset: 16,
			want: [][]byte{{1}, {2, 2}, {3, 3, 3}}},
		{name: "limited by bufs", inject: [][]byte{{1}, {2}, {3}}, nbufs: 2, bufSize: 32, offset: 0,
			want: [][]byte{{1}, {2}}},
		{name: "oversized dropped", inject: [][]byte{bytes.Repeat([]byte{9}, 20), {5}}, nbufs: 4, bufSize: 20, offset: 16,
			want: [][]byte{{5}}, wantDrop: 1},
		{name: "exact fit", inject: [][]byte{{1, 2, 3, 4}}, nbufs: 1, bufSize: 20, offset: 16, want: [][]byte{{1, 2, 3, 4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tuntest.NewChannelDevice(1400, 8)
			defer d.Close()
			for _, p := range tt.inject {
				d.Inbound <- p
			}
			bufs, sizes := makeBufs(tt.nbufs, tt.bufSize)
			n, err := d.Read(bufs, sizes, tt.offset)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if n != len(tt.want) {
				t.Fatalf("Read n = %d, want %d", n, len(tt.want))
			}
			for i := range n {
				if got := bufs[i][tt.offset : tt.offset+sizes[i]]; !bytes.Equal(got, tt.want[i]) {
					t.Errorf("packet %d = %v, want %v", i, got, tt.want[i])
				}
			}
			if got := d.Dropped(); got != tt.wantDrop {
				t.Errorf("Dropped = %d, want %d", got, tt.wantDrop)
			}
		})
	}
}

func TestReadCopies(t *testing.T) {
	d := tuntest.NewChannelDevice(1400, 1)
	p := []byte{1, 2, 3}
	d.Inbound <- p
	bufs, sizes := makeBufs(1, 8)
	if _, err := d.Read(bufs, sizes, 0); err != nil {
		t.Fatal(err)
	}
	p[0] = 99
	if bufs[0][0] != 1 {
		t.Fatal("Read aliases the injected slice")
	}
}

func TestWrite(t *testing.T) {
	d := tuntest.NewChannelDevice(1400, 8)
	bufs := [][]byte{append(make([]byte, 16), 1, 2), append(make([]byte, 16), 3)}
	n, err := d.Write(bufs, 16)
	if err != nil || n != 2 {
		t.Fatalf("Write = %d, %v; want 2, nil", n, err)
	}
	bufs[0][16] = 77 // the device must have copied
	for _, want := range [][]byte{{1, 2}, {3}} {
		if got := <-d.Outbound; !bytes.Equal(got, want) {
			t.Errorf("Outbound = %v, want %v", got, want)
		}
	}
}

func TestWriteBadOffset(t *testing.T) {
	tests := []struct {
		name   string
		min    int
		offset int
		bufs   [][]byte
		wantN  int
	}{
		{name: "negative", offset: -1, bufs: [][]byte{{1}}},
		{name: "below minimum", min: 10, offset: 4, bufs: [][]byte{make([]byte, 20)}},
		{name: "beyond packet", offset: 8, bufs: [][]byte{make([]byte, 10), make([]byte, 4)}, wantN: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tuntest.NewChannelDevice(1400, 8)
			d.MinWriteOffset = tt.min
			n, err := d.Write(tt.bufs, tt.offset)
			if err == nil || n != tt.wantN {
				t.Fatalf("Write = %d, %v; want %d and an error", n, err, tt.wantN)
			}
		})
	}
}

func TestCloseUnblocks(t *testing.T) {
	d := tuntest.NewChannelDevice(1400, 4)
	bufs, sizes := makeBufs(4, 64)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, err := d.Read(bufs, sizes, 0)
		errs <- err
	}()
	go func() {
		defer wg.Done()
		// Fill Outbound so the last Write blocks.
		for i := 0; ; i++ {
			if _, err := d.Write([][]byte{{byte(i)}}, 0); err != nil {
				errs <- err
				return
			}
		}
	}()
	for len(d.Outbound) < cap(d.Outbound) {
		runtime.Gosched() // until the writer has filled the queue and blocks
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("got %v, want os.ErrClosed", err)
		}
	}
	// Closed wins over queued packets.
	d.Inbound <- []byte{1}
	if _, err := d.Read(bufs, sizes, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close = %v, want os.ErrClosed", err)
	}
	if _, err := d.Write([][]byte{{1}}, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close = %v, want os.ErrClosed", err)
	}
}

func TestDefaults(t *testing.T) {
	d := tuntest.NewChannelDevice(1280, 0)
	if d.BatchSize() != 1 {
		t.Errorf("BatchSize = %d, want 1", d.BatchSize())
	}
	if mtu, err := d.MTU(); mtu != 1280 || err != nil {
		t.Errorf("MTU = %d, %v", mtu, err)
	}
}

func BenchmarkReadWrite(b *testing.B) {
	b.ReportAllocs()
	d := tuntest.NewChannelDevice(1400, 32)
	bufs, sizes := makeBufs(32, 1500)
	pkt := append(make([]byte, 16), make([]byte, 1280)...)
	for b.Loop() {
		if _, err := d.Write([][]byte{pkt}, 16); err != nil {
			b.Fatal(err)
		}
		d.Inbound <- <-d.Outbound
		if _, err := d.Read(bufs, sizes, 16); err != nil {
			b.Fatal(err)
		}
	}
}
