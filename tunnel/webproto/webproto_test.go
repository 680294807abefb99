package webproto

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestMessageRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		typ   Type
		value []byte
	}{
		{"hello", TypeHello, []byte("token-123")},
		{"empty flow ok", TypeFlowOK, nil},
		{"flow open", TypeFlowOpen, []byte("intranet.example:8080")},
		{"max size", TypeWelcome, bytes.Repeat([]byte{'x'}, MaxMessageLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, tt.typ, tt.value); err != nil {
				t.Fatal(err)
			}
			buf.WriteString("raw flow bytes")
			// One byte per Read: ReadMessage must still not read past the message.
			r := iotest.OneByteReader(&buf)
			typ, v, err := ReadMessage(r, 0)
			if err != nil || typ != tt.typ || !bytes.Equal(v, tt.value) {
				t.Fatalf("ReadMessage = %v, %d bytes, %v; want %v, %d bytes", typ, len(v), err, tt.typ, len(tt.value))
			}
			if rest, _ := io.ReadAll(r); string(rest) != "raw flow bytes" {
				t.Fatalf("after the message the stream holds %q, want the raw bytes untouched", rest)
			}
		})
	}
}

func TestReadMessageErrors(t *testing.T) {
	full := AppendMessage(nil, TypeFlowOpen, []byte("host:80"))
	tests := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"empty stream", nil, 0, io.EOF},
		{"ends in the type", full[:2], 0, io.ErrUnexpectedEOF},
		{"ends in the value", full[:len(full)-1], 0, io.ErrUnexpectedEOF},
		{"over the caller's limit", full, 3, ErrMalformed},
		{"over MaxMessageLen", AppendMessage(nil, TypeWelcome, make([]byte, MaxMessageLen+1)), 0, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ReadMessage(bytes.NewReader(tt.in), tt.max)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ReadMessage error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestJSONValues(t *testing.T) {
	w, err := ParseWelcome(MarshalJSONValue(&Welcome{Routes: []string{"10.0.0.0/8"}, MaxFlows: 3}))
	if err != nil || len(w.Routes) != 1 || w.MaxFlows != 3 {
		t.Fatalf("ParseWelcome = %+v, %v", w, err)
	}
	e, err := ParseSessionError(MarshalJSONValue(&SessionError{Code: CodeUnauthorized, Message: "no"}))
	if err != nil || e.Code != CodeUnauthorized || !strings.Contains(e.Error(), "unauthorized") {
		t.Fatalf("ParseSessionError = %+v, %v", e, err)
	}
	for _, bad := range []string{"", "{", `{"code":""}`, "[]"} {
		if _, err := ParseSessionError([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseSessionError(%q) = %v, want ErrMalformed", bad, err)
		}
	}
	if _, err := ParseWelcome([]byte("{")); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseWelcome of a broken value: %v, want ErrMalformed", err)
	}
}

// FuzzReadMessage: ReadMessage never panics, never returns a value over
// the limit, and what it parses re-encodes to the bytes it consumed.
func FuzzReadMessage(f *testing.F) {
	f.Add(AppendMessage(nil, TypeHello, []byte("tok")))
	f.Add(AppendMessage(nil, TypeFlowOK, nil))
	f.Add(append(AppendMessage(nil, TypeFlowError, []byte(`roam; error=connection_refused`)), "tail"...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x40})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		typ, v, err := ReadMessage(r, 0)
		if err != nil {
			return
		}
		if len(v) > MaxMessageLen {
			t.Fatalf("value of %d bytes over the limit", len(v))
		}
		// The value is the last len(v) bytes consumed; the header before
		// it may use longer varints than AppendMessage writes.
		consumed := in[:len(in)-r.Len()]
		got := AppendMessage(nil, typ, v)
		if !bytes.HasSuffix(consumed, v) || len(got) > len(consumed) {
			t.Fatalf("re-encoded %x, consumed %x", got, consumed)
		}
	})
}
