package datagram

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestPrefixEncodeParse(t *testing.T) {
	tests := []struct {
		name     string
		qsid, id uint64
		want     []byte
	}{
		{"zero", 0, 0, []byte{0x00, 0x00}},
		{"1-byte max", 63, 63, []byte{0x3f, 0x3f}},
		{"2-byte min", 64, 0, []byte{0x40, 0x40, 0x00}},
		{"2-byte max", 16383, 1, []byte{0x7f, 0xff, 0x01}},
		{"4-byte min", 16384, 0, []byte{0x80, 0x00, 0x40, 0x00, 0x00}},
		{"4-byte max", 1<<30 - 1, 2, []byte{0xbf, 0xff, 0xff, 0xff, 0x02}},
		{"8-byte min", 1 << 30, 0, []byte{0xc0, 0, 0, 0, 0x40, 0, 0, 0, 0x00}},
		{"8-byte max", 1<<62 - 1, 0, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00}},
		{"context 2-byte", 4, 300, []byte{0x04, 0x41, 0x2c}},
		{"both 8-byte", 1<<62 - 1, 1<<62 - 1, append(bytes.Repeat([]byte{0xff}, 8), bytes.Repeat([]byte{0xff}, 8)...)},
		{"RFC 9000 example 151288809941952652", 151288809941952652, 494878333,
			[]byte{0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c, 0x9d, 0x7f, 0x3e, 0x7d}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := PrefixLen(tt.qsid, tt.id); n != len(tt.want) {
				t.Fatalf("PrefixLen = %d, want %d", n, len(tt.want))
			}
			got := AppendPrefix([]byte{0xaa}, tt.qsid, tt.id)
			if !bytes.Equal(got[1:], tt.want) || got[0] != 0xaa {
				t.Fatalf("AppendPrefix = %x, want aa%x", got, tt.want)
			}

			buf := bytes.Repeat([]byte{0xee}, MaxPrefixLen+4)
			start, err := PutPrefix(buf, MaxPrefixLen, tt.qsid, tt.id)
			if err != nil {
				t.Fatalf("PutPrefix: %v", err)
			}
			if start != MaxPrefixLen-len(tt.want) || !bytes.Equal(buf[start:MaxPrefixLen], tt.want) {
				t.Fatalf("PutPrefix start %d bytes %x, want %d %x", start, buf[start:MaxPrefixLen], MaxPrefixLen-len(tt.want), tt.want)
			}
			if !bytes.Equal(buf[:start], bytes.Repeat([]byte{0xee}, start)) || !bytes.Equal(buf[MaxPrefixLen:], []byte{0xee, 0xee, 0xee, 0xee}) {
				t.Fatalf("PutPrefix wrote outside b[off-n:off]: %x", buf)
			}

			payload := []byte{0x45, 1, 2}
			q, c, n, err := ParsePrefix(append(tt.want, payload...))
			if err != nil || q != tt.qsid || c != tt.id || n != len(tt.want) {
				t.Fatalf("ParsePrefix = %d %d %d %v, want %d %d %d nil", q, c, n, err, tt.qsid, tt.id, len(tt.want))
			}
		})
	}
}

func TestParsePrefixNonMinimal(t *testing.T) {
	// RFC 9000 §16 allows non-minimal encodings: 0 as 2 bytes, 1 as 8 bytes.
	b := []byte{0x40, 0x00, 0xc0, 0, 0, 0, 0, 0, 0, 0x01, 0x45}
	q, c, n, err := ParsePrefix(b)
	if err != nil || q != 0 || c != 1 || n != 10 {
		t.Fatalf("ParsePrefix = %d %d %d %v, want 0 1 10 nil", q, c, n, err)
	}
}

func TestParsePrefixErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		msg  string
	}{
		{"empty", nil, "quarter stream ID"},
		{"qsid 2-byte truncated", []byte{0x40}, "quarter stream ID"},
		{"qsid 4-byte truncated", []byte{0x80, 0, 0}, "quarter stream ID"},
		{"qsid 8-byte truncated", []byte{0xc0, 0, 0, 0, 0, 0, 0}, "quarter stream ID"},
		{"context missing", []byte{0x05}, "context ID"},
		{"context 2-byte truncated", []byte{0x05, 0x40}, "context ID"},
		{"context 8-byte truncated", []byte{0x05, 0xc0, 1, 2}, "context ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := ParsePrefix(tt.in)
			if !errors.Is(err, ErrTooShort) {
				t.Fatalf("err = %v, want ErrTooShort", err)
			}
			if !strings.HasPrefix(err.Error(), "datagram prefix: ") || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err %q should start with \"datagram prefix: \" and name %q", err, tt.msg)
			}
		})
	}
	// A datagram that is only a prefix parses; its payload is empty.
	if _, _, n, err := ParsePrefix([]byte{0x01, 0x00}); err != nil || n != 2 {
		t.Fatalf("prefix-only datagram: n=%d err=%v", n, err)
	}
}

func TestPutPrefixErrors(t *testing.T) {
	tests := []struct {
		name     string
		size     int
		off      int
		qsid, id uint64
		want     error
	}{
		{"no headroom", 16, 0, 0, 0, ErrNoRoom},
		{"headroom 1 for 2 bytes", 16, 1, 0, 0, ErrNoRoom},
		{"headroom 2 for 3 bytes", 16, 2, 64, 0, ErrNoRoom},
		{"offset beyond buffer", 16, 17, 0, 0, ErrNoRoom},
		{"negative offset", 16, -1, 0, 0, ErrNoRoom},
		{"qsid too large", 32, 16, 1 << 62, 0, ErrVarintRange},
		{"context too large", 32, 16, 0, ^uint64(0), ErrVarintRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := PutPrefix(make([]byte, tt.size), tt.off, tt.qsid, tt.id)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// Exactly enough room, at the end of the buffer.
	b := make([]byte, 2)
	if start, err := PutPrefix(b, 2, 1, 0); err != nil || start != 0 || !bytes.Equal(b, []byte{1, 0}) {
		t.Fatalf("exact fit: start %d err %v b %x", start, err, b)
	}
}

func TestPrefixLenPanics(t *testing.T) {
	for _, f := range []func(){
		func() { PrefixLen(1<<62, 0) },
		func() { AppendPrefix(nil, 0, 1<<63) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("no panic for a value above 2^62-1")
				}
			}()
			f()
		}()
	}
}

func FuzzParsePrefix(f *testing.F) {
	for _, v := range [][2]uint64{{0, 0}, {63, 64}, {16383, 16384}, {1<<30 - 1, 1 << 30}, {1<<62 - 1, 7}} {
		f.Add(v[0], v[1], AppendPrefix(nil, v[0], v[1]))
		f.Add(v[0], v[1], append(AppendPrefix(nil, v[0], v[1]), 0x45, 0, 0, 20))
	}
	f.Add(uint64(0), uint64(0), []byte{0x40})
	f.Fuzz(func(t *testing.T, qsid, id uint64, data []byte) {
		// Arbitrary input: no panic, sane results.
		q, c, n, err := ParsePrefix(data)
		if err == nil {
			if n < 2 || n > len(data) || n > MaxPrefixLen || q > maxVarint || c > maxVarint {
				t.Fatalf("ParsePrefix(%x) = %d %d %d", data, q, c, n)
			}
			if PrefixLen(q, c) > n {
				t.Fatalf("minimal encoding of %d,%d longer than the %d bytes parsed", q, c, n)
			}
		} else if !errors.Is(err, ErrTooShort) {
			t.Fatalf("unexpected error class: %v", err)
		}

		// Round trip through both encoders.
		qsid &= maxVarint
		id &= maxVarint
		enc := AppendPrefix(nil, qsid, id)
		buf := make([]byte, MaxPrefixLen+len(data))
		copy(buf[MaxPrefixLen:], data)
		start, err := PutPrefix(buf, MaxPrefixLen, qsid, id)
		if err != nil || !bytes.Equal(buf[start:MaxPrefixLen], enc) {
			t.Fatalf("PutPrefix = %d %v %x, AppendPrefix %x", start, err, buf[start:MaxPrefixLen], enc)
		}
		q, c, n, err = ParsePrefix(buf[start:])
		if err != nil || q != qsid || c != id || n != len(enc) || !bytes.Equal(buf[start+n:], data) {
			t.Fatalf("round trip of %d,%d: %d %d %d %v", qsid, id, q, c, n, err)
		}
	})
}
