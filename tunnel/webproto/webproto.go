// Package webproto is the wire protocol between Roam's browser client and
// the server inside one WebTransport session. Both ends use this package:
// the server (tunnel) and the js/wasm client (web/wasm). It uses the
// standard library and quicvarint only, and builds for GOOS=js.
//
// # Session
//
// The browser opens a WebTransport session with an Extended CONNECT
// (:protocol = webtransport) to [Path] on the server's UDP port. The
// server checks the Origin against its allowlist before accepting it. The
// session then carries bidirectional streams only:
//
//   - The first stream the client opens is the control stream. The client
//     sends [TypeHello] with its token (the token is never in the URL); the
//     server answers [TypeWelcome] (the session's policy) or
//     [TypeSessionError] and closes the session. After the welcome, the
//     client may send [TypePing] at any time and the server echoes it as
//     [TypePong] (the page's RTT display).
//   - Every further client stream is one TCP flow. The client sends
//     [TypeFlowOpen] with the destination "host:port"; the server applies
//     the same policy, limits and dialer as to a native CONNECT flow and
//     answers [TypeFlowOK], after which the stream carries the TCP bytes both
//     ways (FIN = half-close, stream reset = TCP reset), or [TypeFlowError]
//     with an RFC 9209 Proxy-Status field value, after which it closes.
//     Flows opened before the welcome wait for it.
//
// # Messages
//
// Every message is a capsule-like TLV, as in RFC 9297 §3.2:
//
//	Message {
//	  Type (i),        // QUIC variable-length integer
//	  Length (i),      // length of Value in bytes
//	  Value (..),
//	}
//
// [ReadMessage] reads exactly one message and nothing beyond it, so the raw
// bytes of a flow that follow [TypeFlowOK] stay in the stream.
package webproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/quic-go/quic-go/quicvarint"
)

// Path is the URL path of the WebTransport endpoint.
const Path = "/roam/wt"

// ConfigPath is the URL path of the JSON [PageConfig] the page fetches
// before it opens the session.
const ConfigPath = "/roam/config.json"

// Type is a message type. The values are outside the IANA capsule types
// in use, though they never appear in an HTTP capsule stream.
type Type uint64

// Message types.
const (
	TypeHello        Type = 0x52a00001 // client → server, control: Value = token (UTF-8)
	TypeWelcome      Type = 0x52a00002 // server → client, control: Value = JSON Welcome
	TypeSessionError Type = 0x52a00003 // server → client, control: Value = JSON SessionError
	TypePing         Type = 0x52a00004 // client → server, control: Value = opaque, ≤ 64 bytes
	TypePong         Type = 0x52a00005 // server → client, control: Value = the ping's Value
	TypeFlowOpen     Type = 0x52a00010 // client → server, flow stream: Value = "host:port"
	TypeFlowOK       Type = 0x52a00011 // server → client, flow stream: empty Value
	TypeFlowError    Type = 0x52a00012 // server → client, flow stream: Value = Proxy-Status field value
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "HELLO"
	case TypeWelcome:
		return "WELCOME"
	case TypeSessionError:
		return "SESSION_ERROR"
	case TypePing:
		return "PING"
	case TypePong:
		return "PONG"
	case TypeFlowOpen:
		return "FLOW_OPEN"
	case TypeFlowOK:
		return "FLOW_OK"
	case TypeFlowError:
		return "FLOW_ERROR"
	}
	return fmt.Sprintf("0x%x", uint64(t))
}

// Limits on message values.
const (
	MaxTokenLen     = 4096
	MaxAuthorityLen = 255 + 1 + 5 // a DNS name, ':' and a port
	MaxPingLen      = 64
	MaxMessageLen   = 16 << 10 // any message, including Welcome
)

// ErrMalformed is wrapped by every error about a message that breaks this
// protocol.
var ErrMalformed = errors.New("webproto: malformed message")

// AppendMessage appends a message of type t carrying value to b.
func AppendMessage(b []byte, t Type, value []byte) []byte {
	b = quicvarint.Append(b, uint64(t))
	b = quicvarint.Append(b, uint64(len(value)))
	return append(b, value...)
}

// WriteMessage writes one message to w in a single Write call.
func WriteMessage(w io.Writer, t Type, value []byte) error {
	_, err := w.Write(AppendMessage(nil, t, value))
	return err
}

// ReadMessage reads exactly one message from r: it never reads beyond the
// message's last byte. A Value longer than max (or MaxMessageLen if max is
// 0) is an error wrapping ErrMalformed; a stream that ends inside a message
// is io.ErrUnexpectedEOF, one that ends before it io.EOF. The returned
// value is a new slice the caller owns.
func ReadMessage(r io.Reader, max int) (Type, []byte, error) {
	if max <= 0 || max > MaxMessageLen {
		max = MaxMessageLen
	}
	br := byteReader{r: r}
	t, err := quicvarint.Read(&br)
	if err != nil {
		if br.n == 0 && errors.Is(err, io.EOF) {
			return 0, nil, io.EOF
		}
		return 0, nil, unexpected(err)
	}
	l, err := quicvarint.Read(&br)
	if err != nil {
		return 0, nil, unexpected(err)
	}
	if l > uint64(max) {
		return 0, nil, fmt.Errorf("%w: %v Length %d exceeds the limit of %d bytes", ErrMalformed, Type(t), l, max)
	}
	v := make([]byte, l)
	if _, err := io.ReadFull(r, v); err != nil {
		return 0, nil, unexpected(err)
	}
	return Type(t), v, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// byteReader reads one byte at a time so that the varints of a header
// never consume the bytes after it.
type byteReader struct {
	r   io.Reader
	buf [1]byte
	n   int
}

func (b *byteReader) ReadByte() (byte, error) {
	for {
		n, err := b.r.Read(b.buf[:])
		if n == 1 {
			b.n++
			return b.buf[0], nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// Welcome is the server's answer to a good Hello: what the session may do.
type Welcome struct {
	// Routes are the prefixes flows may reach, as netip.Prefix strings.
	Routes []string `json:"routes"`
	// MaxFlows is how many flows may be open at once.
	MaxFlows int `json:"max_flows"`
	// Server is the server's version string, for the page's status line.
	Server string `json:"server,omitempty"`
}

// SessionError is why the server ends a session.
type SessionError struct {
	// Code is machine-readable: one of the Code* constants.
	Code string `json:"code"`
	// Message is for the user.
	Message string `json:"message"`
}

// Session error codes.
const (
	CodeUnauthorized = "unauthorized" // no token, or not a valid one
	CodeProtocol     = "protocol"     // the client broke this protocol
	CodeTimeout      = "timeout"      // no Hello in time
	CodeShutdown     = "shutdown"     // the server is stopping
)

func (e *SessionError) Error() string {
	return fmt.Sprintf("roam server: %s: %s", e.Code, e.Message)
}

// MarshalJSONValue encodes v (a Welcome or SessionError) as a message value.
func MarshalJSONValue(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only fixed struct types are passed
	}
	return b
}

// ParseWelcome decodes a TypeWelcome value.
func ParseWelcome(v []byte) (*Welcome, error) {
	var w Welcome
	if err := json.Unmarshal(v, &w); err != nil {
		return nil, fmt.Errorf("%w: WELCOME: %v", ErrMalformed, err)
	}
	return &w, nil
}

// ParseSessionError decodes a TypeSessionError value.
func ParseSessionError(v []byte) (*SessionError, error) {
	var e SessionError
	if err := json.Unmarshal(v, &e); err != nil || e.Code == "" {
		return nil, fmt.Errorf("%w: SESSION_ERROR: %v", ErrMalformed, err)
	}
	return &e, nil
}

// PageConfig is what ConfigPath serves to the page: where to open the
// session and which certificate hashes to pin.
type PageConfig struct {
	// URL is the WebTransport URL ("https://host:port/roam/wt"); empty means
	// the page's own origin with Path.
	URL string `json:"url,omitempty"`
	// CertHashes are the SHA-256 hashes (lowercase hex) of the current and
	// the next self-signed certificate, for serverCertificateHashes; empty
	// when the server has a publicly trusted certificate.
	CertHashes []string `json:"cert_hashes,omitempty"`
	// Server is the server's version string.
	Server string `json:"server,omitempty"`
}
