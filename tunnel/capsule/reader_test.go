package capsule

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"slices"
	"testing"
	"testing/iotest"
)

type capsule struct {
	t Type
	v []byte
}

// stream returns three capsules and their encoding.
func stream(t *testing.T) ([]capsule, []byte) {
	t.Helper()
	assign, err := (&AddressAssign{[]AssignedAddress{{1, pfx("100.96.0.2/32")}}}).Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	dgram := append([]byte{0}, bytes.Repeat([]byte{0x45, 0x11}, 300)...) // context ID 0 + "packet"
	caps := []capsule{
		{TypeAddressAssign, assign[2:]},
		{TypeDatagram, dgram},
		{Type(0x17), nil}, // unknown, empty: returned to the caller
		{Type(0x3fffffff), []byte("hello")},
	}
	var b []byte
	for _, c := range caps {
		b = AppendCapsule(b, c.t, c.v)
	}
	return caps, b
}

func readAll(t *testing.T, r *Reader) ([]capsule, error) {
	t.Helper()
	var got []capsule
	for {
		ty, v, err := r.Next()
		if err != nil {
			return got, err
		}
		got = append(got, capsule{ty, bytes.Clone(v)})
	}
}

func equalCaps(a, b []capsule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].t != b[i].t || !bytes.Equal(a[i].v, b[i].v) {
			return false
		}
	}
	return true
}

func TestReader(t *testing.T) {
	want, b := stream(t)
	tests := []struct {
		name string
		r    io.Reader
	}{
		{"one read", bytes.NewReader(b)},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(b))},
		{"half reads", iotest.HalfReader(bytes.NewReader(b))},
		{"EOF with data", iotest.DataErrReader(bytes.NewReader(b))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAll(t, NewReader(tt.r))
			if err != io.EOF {
				t.Fatalf("final error %v, want io.EOF", err)
			}
			if !equalCaps(got, want) {
				t.Fatalf("got %d capsules, want %d", len(got), len(want))
			}
		})
	}
}

// Cutting a valid stream anywhere gives io.EOF at capsule boundaries and
// io.ErrUnexpectedEOF everywhere else.
func TestReaderTruncated(t *testing.T) {
	caps, b := stream(t)
	boundaries := map[int]bool{0: true}
	off := 0
	for _, c := range caps {
		off += len(AppendCapsule(nil, c.t, c.v))
		boundaries[off] = true
	}
	for cut := 0; cut < len(b); cut++ {
		got, err := readAll(t, NewReader(iotest.OneByteReader(bytes.NewReader(b[:cut]))))
		if boundaries[cut] {
			if err != io.EOF {
				t.Fatalf("cut at %d (boundary): %v, want io.EOF", cut, err)
			}
		} else if err != io.ErrUnexpectedEOF {
			t.Fatalf("cut at %d: %v, want io.ErrUnexpectedEOF", cut, err)
		}
		if !equalCaps(got, caps[:len(got)]) {
			t.Fatalf("cut at %d: wrong capsules before the cut", cut)
		}
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestReaderSkipsLargeUnknown(t *testing.T) {
	const big = 64 << 20
	hdr := appendHeader(nil, Type(0x40), big) // reserved type 0x29*1+0x17
	tail := AppendCapsule(nil, TypeAddressAssign, nil)
	r := NewReader(io.MultiReader(bytes.NewReader(hdr), io.LimitReader(zeros{}, big), bytes.NewReader(tail)))
	ty, v, err := r.Next()
	if err != nil || ty != TypeAddressAssign || len(v) != 0 {
		t.Fatalf("Next = %v, %d bytes, %v", ty, len(v), err)
	}
	if r.Discarded() != 1 {
		t.Fatalf("Discarded = %d", r.Discarded())
	}
	if cap(r.buf) > DefaultMaxCapsuleLen {
		t.Fatalf("buffered %d bytes", cap(r.buf))
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("then %v", err)
	}
}

func TestReaderLimits(t *testing.T) {
	big := bytes.Repeat([]byte{1}, 200)
	tests := []struct {
		name      string
		in        []byte
		wantType  Type
		wantErr   error
		discarded uint64
	}{
		{"known type too large", AppendCapsule(nil, TypeRouteAdvertisement, big), 0, ErrTooLarge, 0},
		{"ADDRESS_REQUEST too large", AppendCapsule(nil, TypeAddressRequest, big), 0, ErrTooLarge, 0},
		{"DATAGRAM too large is dropped", append(AppendCapsule(nil, TypeDatagram, big), AppendCapsule(nil, TypeAddressAssign, nil)...), TypeAddressAssign, nil, 1},
		{"unknown too large is dropped", append(AppendCapsule(nil, 0x1234, big), AppendCapsule(nil, TypeDatagram, []byte{0})...), TypeDatagram, nil, 1},
		{"exactly the limit", AppendCapsule(nil, TypeRouteAdvertisement, big[:100]), TypeRouteAdvertisement, nil, 0},
		{"unknown too large, truncated", AppendCapsule(nil, 0x1234, big)[:150], 0, io.ErrUnexpectedEOF, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tt.in))
			r.MaxCapsuleLen = 100
			ty, _, err := r.Next()
			if !errors.Is(err, tt.wantErr) || (err == nil && ty != tt.wantType) {
				t.Fatalf("Next = %v, %v; want %v, %v", ty, err, tt.wantType, tt.wantErr)
			}
			if tt.wantErr == ErrTooLarge {
				var e *TooLargeError
				if !errors.As(err, &e) || e.Length != 200 || e.Max != 100 || e.HTTP3ErrorCode() != H3MessageError {
					t.Fatalf("error %#v", err)
				}
			}
			if r.Discarded() != tt.discarded {
				t.Fatalf("Discarded = %d", r.Discarded())
			}
		})
	}
}

// A Length that promises more than arrives does not allocate the promise.
func TestReaderLyingLength(t *testing.T) {
	in := []byte{0x01, 0x9f, 0xff, 0xff, 0xff, 1, 2, 3} // ADDRESS_ASSIGN, Length 2^29-1, 3 bytes of value
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := NewReader(bytes.NewReader(in))
	r.MaxCapsuleLen = 1 << 30
	if _, _, err := r.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("err = %v", err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("allocated %d bytes for a 3-byte value", n)
	}
	if r.buf != nil {
		t.Fatalf("buffer kept after error")
	}
}

func TestReaderErrors(t *testing.T) {
	boom := errors.New("stream reset")
	_, b := stream(t)
	r := NewReader(io.MultiReader(bytes.NewReader(b[:10]), iotest.ErrReader(boom)))
	var err error
	for err == nil {
		_, _, err = r.Next()
	}
	if err != boom {
		t.Fatalf("err = %v, want the stream's error unwrapped", err)
	}
	if _, _, err2 := r.Next(); err2 != boom {
		t.Fatalf("error not sticky: %v", err2)
	}
}

// The value buffer is reused: no allocation per capsule once warmed up.
func TestReaderReusesBuffer(t *testing.T) {
	one := AppendCapsule(nil, TypeDatagram, bytes.Repeat([]byte{7}, 1400))
	src := bytes.NewReader(nil)
	var in []byte
	for range 64 {
		in = append(in, one...)
	}
	src.Reset(in)
	r := NewReader(src)
	r.Next()
	allocs := testing.AllocsPerRun(50, func() {
		if _, _, err := r.Next(); err != nil {
			src.Reset(in)
		}
	})
	if allocs > 0 {
		t.Fatalf("%v allocations per capsule", allocs)
	}
}

func BenchmarkReader(b *testing.B) {
	one := AppendCapsule(nil, TypeDatagram, bytes.Repeat([]byte{7}, 1400))
	var in []byte
	for range 256 {
		in = append(in, one...)
	}
	src := bytes.NewReader(in)
	r := NewReader(src)
	b.ReportAllocs()
	b.SetBytes(int64(len(one)))
	for b.Loop() {
		if _, _, err := r.Next(); err != nil {
			src.Reset(in)
			r = NewReader(src)
		}
	}
}

func TestReaderBuffered(t *testing.T) {
	one := AppendCapsule(nil, TypeAddressAssign, nil)
	two := AppendCapsule(nil, TypeDNSAssign, []byte{0})
	pr, pw := io.Pipe()
	go func() { pw.Write(append(slices.Clone(one), two...)) }()
	r := NewReader(pr)
	if r.Buffered() != 0 {
		t.Fatal("buffered before reading")
	}
	if ty, _, err := r.Next(); err != nil || ty != TypeAddressAssign {
		t.Fatal(ty, err)
	}
	if got := r.Buffered(); got != len(two) {
		t.Fatalf("Buffered = %d, want %d", got, len(two))
	}
	if ty, _, err := r.Next(); err != nil || ty != TypeDNSAssign {
		t.Fatal(ty, err)
	}
	if r.Buffered() != 0 {
		t.Fatal("still buffered")
	}
	pw.Close()
}

// An oversized DNS_ASSIGN is skipped like an unknown capsule, not refused:
// the DNS configuration is advisory.
func TestReaderOversizedDNSAssign(t *testing.T) {
	in := append(AppendCapsule(nil, TypeDNSAssign, make([]byte, 200)), AppendCapsule(nil, TypeRouteAdvertisement, nil)...)
	r := NewReader(bytes.NewReader(in))
	r.MaxCapsuleLen = 100
	ty, _, err := r.Next()
	if err != nil || ty != TypeRouteAdvertisement || r.Discarded() != 1 {
		t.Fatalf("Next = %v, %v; discarded %d", ty, err, r.Discarded())
	}
}
