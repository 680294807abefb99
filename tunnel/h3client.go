package tunnel

// The client's own HTTP/3 pieces for its CONNECT-IP session.
//
// quic-go's http3 starts a dispatcher goroutine (rawConn.receiveDatagrams)
// as soon as it parses a peer's SETTINGS frame with SETTINGS_H3_DATAGRAM=1,
// whatever the local Transport.EnableDatagrams says. The dispatcher takes
// every QUIC datagram of the connection and re-queues it into a 32-entry
// queue per request stream, where about 20% of them are dropped under load
// (docs/bench.md, "datagrams dropped inside quic-go"). So that the client
// can read the connection's datagrams itself (datagram.Link without Recv:
// one hop, one queue), it keeps the server's control stream away from
// http3: it makes an http3.RawClientConn, which leaves accepting the
// server's streams to the application, and reads the server's
// unidirectional streams itself (h3Control). http3 then never learns the
// server's SETTINGS and would hold an Extended CONNECT forever (RFC 8441
// §3), so the CONNECT-IP request goes on a request stream of the client's
// own (ipStream). The flow streams (plain CONNECT, which needs no SETTINGS)
// still go through http3. The client's own SETTINGS (with H3_DATAGRAM) are
// still sent by http3.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"
	"golang.org/x/net/http/httpguts"
)

// HTTP/3 frame and stream types (RFC 9114 §7.2, §6.2) and settings.
const (
	h3FrameData        = 0x0
	h3FrameHeaders     = 0x1
	h3FrameCancelPush  = 0x3
	h3FrameSettings    = 0x4
	h3FramePushPromise = 0x5
	h3FrameGoaway      = 0x7
	h3FrameMaxPushID   = 0xd

	h3StreamControl      = 0x0
	h3StreamPush         = 0x1
	h3StreamQPACKEncoder = 0x2
	h3StreamQPACKDecoder = 0x3

	h3SettingExtendedConnect = 0x8  // RFC 9220
	h3SettingDatagram        = 0x33 // RFC 9297

	// h3MaxSettingsLen bounds the server's SETTINGS frame.
	h3MaxSettingsLen = 8 << 10
	// h3MaxHeadersLen bounds a HEADERS frame of the response.
	h3MaxHeadersLen = 64 << 10
	// h3Max1xx bounds the informational responses before the final one.
	h3Max1xx = 5
)

// h3FrameHTTP2Only reports the frame types reserved for HTTP/2 frames
// that have no HTTP/3 counterpart (PRIORITY, PING, WINDOW_UPDATE,
// CONTINUATION): receiving one is H3_FRAME_UNEXPECTED (RFC 9114 §7.2.8).
func h3FrameHTTP2Only(typ uint64) bool {
	return typ == 0x2 || typ == 0x6 || typ == 0x8 || typ == 0x9
}

// h3Settings are the server's HTTP/3 settings the client cares about.
type h3Settings struct {
	datagram        bool // SETTINGS_H3_DATAGRAM = 1
	extendedConnect bool // SETTINGS_ENABLE_CONNECT_PROTOCOL = 1
}

// h3Control reads the server's unidirectional streams of one connection:
// its control stream (SETTINGS, then GOAWAY) and the QPACK streams, and
// refuses push and unknown streams. A protocol violation closes the
// connection with the HTTP/3 error code RFC 9114 names. It runs until
// the connection ends.
type h3Control struct {
	conn *quic.Conn
	log  *slog.Logger

	settingsDone chan struct{} // closed once settings (or settingsErr) is set
	settings     h3Settings
	settingsErr  error         // SETTINGS this client cannot use (the connection is failed)
	acceptDone   chan struct{} // closed when the accept loop ends, after acceptErr is set
	acceptErr    error

	control, qpackEnc, qpackDec atomic.Bool // seen one already

	goawayMu   sync.Mutex
	goaway     int64         // guarded by goawayMu: the lowest GOAWAY stream ID so far; -1 before one
	goawayDone chan struct{} // closed at the first GOAWAY
}

// startH3Control starts reading conn's unidirectional streams.
func startH3Control(conn *quic.Conn, log *slog.Logger) *h3Control {
	c := &h3Control{conn: conn, log: log, settingsDone: make(chan struct{}), acceptDone: make(chan struct{}), goaway: -1, goawayDone: make(chan struct{})}
	go func() {
		defer close(c.acceptDone)
		for {
			str, err := conn.AcceptUniStream(context.Background())
			if err != nil {
				// The connection is gone, or the server refused the
				// 0-RTT data (quic.Err0RTTRejected: the connection
				// lives on, but its streams so far are void).
				c.acceptErr = err
				return
			}
			go c.handle(str)
		}
	}()
	return c
}

// fail closes the connection with an HTTP/3 error.
func (c *h3Control) fail(code http3.ErrCode, msg string) {
	c.log.Debug("closing the connection: HTTP/3 error from the server", "code", code, "msg", msg)
	c.conn.CloseWithError(quic.ApplicationErrorCode(code), msg)
}

func (c *h3Control) handle(str *quic.ReceiveStream) {
	str.ReleaseStreamCredit()
	typ, err := quicvarint.Read(quicvarint.NewReader(str))
	if err != nil {
		return // reset before its type was read: ignored (RFC 9114 §6.2)
	}
	first := func(seen *atomic.Bool, what string) bool {
		if !seen.CompareAndSwap(false, true) {
			c.fail(http3.ErrCodeStreamCreationError, "duplicate "+what+" stream")
			return false
		}
		return true
	}
	switch typ {
	case h3StreamControl:
		if first(&c.control, "control") {
			c.readControl(str)
		}
	case h3StreamQPACKEncoder:
		// The client allows no dynamic table (its SETTINGS leave
		// QPACK_MAX_TABLE_CAPACITY at 0): nothing here is of use.
		if first(&c.qpackEnc, "QPACK encoder") {
			c.readCritical(str, "QPACK encoder")
		}
	case h3StreamQPACKDecoder:
		if first(&c.qpackDec, "QPACK decoder") {
			c.readCritical(str, "QPACK decoder")
		}
	case h3StreamPush:
		// The client never sends MAX_PUSH_ID (RFC 9114 §4.6).
		c.fail(http3.ErrCodeIDError, "push stream without MAX_PUSH_ID")
	default:
		str.CancelRead(quic.StreamErrorCode(http3.ErrCodeStreamCreationError))
	}
}

// readCritical discards a QPACK stream's bytes until it ends. Its end is
// H3_CLOSED_CRITICAL_STREAM (RFC 9204 §4.2), unless the connection is
// ending anyway.
func (c *h3Control) readCritical(str *quic.ReceiveStream, what string) {
	io.Copy(io.Discard, str)
	if c.conn.Context().Err() == nil {
		c.fail(http3.ErrCodeClosedCriticalStream, what+" stream ended")
	}
}

// readControl reads the server's control stream: the SETTINGS frame, then
// frames until the connection ends.
func (c *h3Control) readControl(str *quic.ReceiveStream) {
	r := quicvarint.NewReader(str)
	criticalErr := func(error) {
		if c.conn.Context().Err() == nil { // not just the connection ending
			c.fail(http3.ErrCodeClosedCriticalStream, "control stream ended")
		}
	}
	typ, n, err := readH3FrameHeader(r)
	if err != nil {
		criticalErr(err)
		return
	}
	if typ != h3FrameSettings {
		c.fail(http3.ErrCodeMissingSettings, "first frame on the control stream is not SETTINGS")
		return
	}
	if n > h3MaxSettingsLen {
		c.fail(http3.ErrCodeExcessiveLoad, "SETTINGS frame too large")
		return
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		criticalErr(err)
		return
	}
	s, err := parseH3Settings(b)
	if err != nil {
		c.fail(http3.ErrCodeSettingsError, err.Error())
		return
	}
	if s.datagram && !c.conn.ConnectionState().SupportsDatagrams.Remote {
		// RFC 9297 §2.1.1: H3_DATAGRAM=1 without the QUIC DATAGRAM
		// extension (max_datagram_frame_size) is H3_SETTINGS_ERROR.
		c.settingsErr = fmt.Errorf("%w: the server's SETTINGS announce H3_DATAGRAM, but its QUIC transport parameters do not allow datagrams", ErrNoDatagrams)
		close(c.settingsDone)
		c.fail(http3.ErrCodeSettingsError, "H3_DATAGRAM without QUIC datagrams")
		return
	}
	c.settings = s
	close(c.settingsDone)
	for {
		typ, n, err := readH3FrameHeader(r)
		if err != nil {
			criticalErr(err)
			return
		}
		switch typ {
		case h3FrameGoaway:
			if !c.readGoaway(r, n) {
				return
			}
		case h3FrameData, h3FrameHeaders, h3FrameSettings, h3FramePushPromise, h3FrameMaxPushID:
			c.fail(http3.ErrCodeFrameUnexpected, fmt.Sprintf("frame type %#x on the control stream", typ))
			return
		case h3FrameCancelPush:
			c.fail(http3.ErrCodeIDError, "CANCEL_PUSH without MAX_PUSH_ID")
			return
		default:
			if h3FrameHTTP2Only(typ) {
				c.fail(http3.ErrCodeFrameUnexpected, fmt.Sprintf("HTTP/2 frame type %#x on the control stream", typ))
				return
			}
			// Unknown and reserved types are skipped (RFC 9114 §9).
			if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
				criticalErr(err)
				return
			}
		}
	}
}

// readGoaway reads a GOAWAY frame's payload of length n and checks it
// (RFC 9114 §5.2). The first one closes goingAway: the client opens no
// new request streams on the connection from then on (openFlow fails
// them), and its supervisor moves the tunnel to a new connection while
// this one still carries it (see supervisor.serve). Requests already
// open, the CONNECT-IP session among them, go on until the server ends
// them.
func (c *h3Control) readGoaway(r quicvarint.Reader, n uint64) bool {
	if n == 0 || n > 8 {
		c.fail(http3.ErrCodeFrameError, "malformed GOAWAY frame")
		return false
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		c.fail(http3.ErrCodeClosedCriticalStream, "control stream ended")
		return false
	}
	id, m, err := quicvarint.Parse(b)
	if err != nil || m != len(b) {
		c.fail(http3.ErrCodeFrameError, "malformed GOAWAY frame")
		return false
	}
	c.goawayMu.Lock()
	defer c.goawayMu.Unlock()
	if id%4 != 0 || (c.goaway >= 0 && int64(id) > c.goaway) {
		c.fail(http3.ErrCodeIDError, "invalid GOAWAY stream ID")
		return false
	}
	if c.goaway < 0 {
		close(c.goawayDone)
	}
	c.goaway = int64(id)
	c.log.Debug("the server sent GOAWAY", "stream_id", id)
	return true
}

// goingAway returns a channel closed once the server has sent GOAWAY
// (RFC 9114 §5.2): the client must open no new requests on the
// connection.
func (c *h3Control) goingAway() <-chan struct{} { return c.goawayDone }

// errGoaway is the error of a request the client does not open because
// the server sent GOAWAY.
var errGoaway = errors.New("the server is closing this connection (HTTP/3 GOAWAY); no new requests on it")

// waitSettings waits for the server's SETTINGS. SETTINGS the client
// cannot use (H3_DATAGRAM without QUIC datagrams) are an error wrapping
// ErrNoDatagrams.
func (c *h3Control) waitSettings(ctx context.Context) (h3Settings, error) {
	select {
	case <-c.settingsDone:
		return c.settings, c.settingsErr
	case <-c.acceptDone:
		select {
		case <-c.settingsDone: // came before the connection ended
			return c.settings, c.settingsErr
		default:
		}
		return h3Settings{}, fmt.Errorf("waiting for the server's HTTP/3 SETTINGS: %w", c.acceptErr)
	case <-c.conn.Context().Done():
		return h3Settings{}, fmt.Errorf("waiting for the server's HTTP/3 SETTINGS: %w", context.Cause(c.conn.Context()))
	case <-ctx.Done():
		return h3Settings{}, fmt.Errorf("waiting for the server's HTTP/3 SETTINGS: %w", context.Cause(ctx))
	}
}

// parseH3Settings parses a SETTINGS frame's payload (RFC 9114 §7.2.4).
func parseH3Settings(b []byte) (h3Settings, error) {
	var s h3Settings
	seen := make(map[uint64]bool)
	for len(b) > 0 {
		id, n, err := quicvarint.Parse(b)
		if err != nil {
			return s, errors.New("SETTINGS: truncated identifier")
		}
		b = b[n:]
		val, n, err := quicvarint.Parse(b)
		if err != nil {
			return s, errors.New("SETTINGS: truncated value")
		}
		b = b[n:]
		if seen[id] {
			return s, fmt.Errorf("SETTINGS: duplicate setting %#x", id)
		}
		seen[id] = true
		switch id {
		case 0x2, 0x3, 0x4, 0x5: // HTTP/2 settings, reserved (§7.2.4.1)
			return s, fmt.Errorf("SETTINGS: HTTP/2 setting %#x", id)
		case h3SettingDatagram, h3SettingExtendedConnect:
			if val > 1 {
				return s, fmt.Errorf("SETTINGS: setting %#x must be 0 or 1, got %d", id, val)
			}
			if id == h3SettingDatagram {
				s.datagram = val == 1
			} else {
				s.extendedConnect = val == 1
			}
		}
	}
	return s, nil
}

// readH3FrameHeader reads a frame's type and length. A stream ending
// cleanly before the frame returns io.EOF; inside the header,
// io.ErrUnexpectedEOF.
func readH3FrameHeader(r quicvarint.Reader) (typ, length uint64, err error) {
	typ, err = quicvarint.Read(r)
	if err != nil {
		return 0, 0, err
	}
	length, err = quicvarint.Read(r)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return typ, length, err
}

// ipStream is the client's CONNECT-IP request stream with HTTP/3 framing
// (RFC 9114 §4.1): sendRequest writes the request's HEADERS frame,
// readResponse reads the response's, and after that Read returns the
// payload of the DATA frames (the capsules) and Write sends one DATA frame
// per call. Read and Write may run concurrently with each other, but not
// with themselves.
type ipStream struct {
	str  *quic.Stream
	conn *quic.Conn
	r    quicvarint.Reader

	left     uint64 // payload bytes left in the DATA frame being read
	onlyData bool   // after a 2xx: a HEADERS frame is an error (RFC 9114 §4.4)
	rerr     error  // sticky read error

	wbuf []byte
}

func newIPStream(conn *quic.Conn, str *quic.Stream) *ipStream {
	return &ipStream{str: str, conn: conn, r: quicvarint.NewReader(str)}
}

// StreamID returns the QUIC stream ID.
func (s *ipStream) StreamID() quic.StreamID { return s.str.StreamID() }

// CancelRead aborts reading (STOP_SENDING with code).
func (s *ipStream) CancelRead(code quic.StreamErrorCode) { s.str.CancelRead(code) }

// CancelWrite aborts writing (RESET_STREAM with code).
func (s *ipStream) CancelWrite(code quic.StreamErrorCode) { s.str.CancelWrite(code) }

// Close ends the write side (FIN).
func (s *ipStream) Close() error { return s.str.Close() }

// sendRequest writes an Extended CONNECT request's HEADERS frame:
// protocol, authority and path, then the header fields of h (names
// lowercased).
func (s *ipStream) sendRequest(protocol, authority, path string, h http.Header) error {
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	fields := []qpack.HeaderField{
		{Name: ":method", Value: http.MethodConnect},
		{Name: ":protocol", Value: protocol},
		{Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: authority},
		{Name: ":path", Value: path},
	}
	for k, vs := range h {
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n\x00") {
				return fmt.Errorf("header %s: value contains a control character", k)
			}
			fields = append(fields, qpack.HeaderField{Name: strings.ToLower(k), Value: v})
		}
	}
	for _, f := range fields {
		if err := enc.WriteField(f); err != nil {
			return err
		}
	}
	b := quicvarint.Append(nil, h3FrameHeaders)
	b = quicvarint.Append(b, uint64(block.Len()))
	b = append(b, block.Bytes()...)
	_, err := s.str.Write(b)
	return err
}

// readResponse reads the final response's HEADERS frame, skipping
// informational responses and unknown frames. Its Body reads the
// response's content (through Read).
func (s *ipStream) readResponse() (*http.Response, error) {
	for n1xx := 0; ; {
		typ, n, err := readH3FrameHeader(s.r)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("reading the response: %w", err)
		}
		switch typ {
		case h3FrameHeaders:
		case h3FramePushPromise:
			s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeIDError), "PUSH_PROMISE without MAX_PUSH_ID")
			return nil, errors.New("reading the response: PUSH_PROMISE, but the client allows no push")
		case h3FrameData, h3FrameSettings, h3FrameGoaway, h3FrameMaxPushID, h3FrameCancelPush:
			s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected), "")
			return nil, fmt.Errorf("reading the response: unexpected frame type %#x before the response", typ)
		default:
			if h3FrameHTTP2Only(typ) {
				s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected), "")
				return nil, fmt.Errorf("reading the response: HTTP/2 frame type %#x on the request stream", typ)
			}
			if _, err := io.CopyN(io.Discard, s.r, int64(n)); err != nil {
				return nil, fmt.Errorf("reading the response: %w", err)
			}
			continue
		}
		if n > h3MaxHeadersLen {
			return nil, fmt.Errorf("reading the response: HEADERS frame of %d bytes exceeds %d", n, h3MaxHeadersLen)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(s.r, b); err != nil {
			return nil, fmt.Errorf("reading the response: %w", err)
		}
		resp, err := parseH3Response(b)
		if err != nil {
			var qe *qpackError
			if errors.As(err, &qe) {
				// RFC 9204 §2.2.3: a block that cannot be decoded fails
				// the connection.
				s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeQPACKDecompressionFailed), "")
			} else {
				// Malformed (RFC 9114 §4.1.2): a stream error.
				s.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeMessageError))
			}
			return nil, fmt.Errorf("reading the response: %w", err)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if n1xx++; resp.StatusCode == http.StatusSwitchingProtocols || n1xx > h3Max1xx {
				return nil, fmt.Errorf("reading the response: unexpected informational response %d", resp.StatusCode)
			}
			continue
		}
		s.onlyData = resp.StatusCode >= 200 && resp.StatusCode < 300
		resp.Body = io.NopCloser(s)
		return resp, nil
	}
}

// qpackError is a header block that QPACK cannot decode.
type qpackError struct{ err error }

func (e *qpackError) Error() string { return "QPACK: " + e.err.Error() }
func (e *qpackError) Unwrap() error { return e.err }

// parseH3Response decodes a response header block. A block QPACK cannot
// decode is a *qpackError; a malformed response (RFC 9114 §4.1.2, §4.2,
// §4.3.2) another error.
func parseH3Response(b []byte) (*http.Response, error) {
	resp := &http.Response{Proto: "HTTP/3.0", ProtoMajor: 3, Header: http.Header{}}
	dec := qpack.NewDecoder().Decode(b)
	regular := false
	for {
		f, err := dec()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, &qpackError{err}
		}
		if !f.IsPseudo() {
			if err := checkH3Field(f.Name, f.Value); err != nil {
				return nil, fmt.Errorf("malformed response: %w", err)
			}
			regular = true
			resp.Header.Add(f.Name, f.Value)
			continue
		}
		if f.Name != ":status" || regular || resp.StatusCode != 0 {
			return nil, fmt.Errorf("malformed response: pseudo-header %q", f.Name)
		}
		code, err := strconv.Atoi(f.Value)
		if err != nil || len(f.Value) != 3 || code < 100 {
			return nil, fmt.Errorf("malformed response: :status %q", f.Value)
		}
		resp.StatusCode = code
		resp.Status = f.Value + " " + http.StatusText(code)
	}
	if resp.StatusCode == 0 {
		return nil, errors.New("malformed response: no :status")
	}
	return resp, nil
}

// checkH3Field checks a regular response field (RFC 9114 §4.2): a valid
// lowercase name, a valid value, and no connection-specific field.
func checkH3Field(name, value string) error {
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("invalid field name %q", name)
	}
	if strings.ToLower(name) != name {
		return fmt.Errorf("field name %q has uppercase characters", name)
	}
	if !httpguts.ValidHeaderFieldValue(value) {
		return fmt.Errorf("field %s: invalid value", name)
	}
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return fmt.Errorf("connection-specific field %q", name)
	case "te":
		if value != "trailers" {
			return fmt.Errorf("field te: %q (only \"trailers\" is allowed)", value)
		}
	}
	return nil
}

// Read reads the payload of the DATA frames, skipping unknown frames.
// It returns io.EOF when the stream ends between frames (or after
// trailers), io.ErrUnexpectedEOF inside a frame.
func (s *ipStream) Read(p []byte) (int, error) {
	for s.left == 0 {
		if s.rerr != nil {
			return 0, s.rerr
		}
		typ, n, err := readH3FrameHeader(s.r)
		if err != nil {
			s.rerr = err
			return 0, err
		}
		switch typ {
		case h3FrameData:
			s.left = n
		case h3FrameHeaders:
			if s.onlyData {
				s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected), "")
				s.rerr = errors.New("HEADERS frame on a CONNECT stream")
				return 0, s.rerr
			}
			// Trailers of a refusal: the end of the body. They are not
			// read; too large ones end the stream (STOP_SENDING).
			if n > h3MaxHeadersLen {
				s.str.CancelRead(quic.StreamErrorCode(http3.ErrCodeExcessiveLoad))
				s.rerr = fmt.Errorf("trailers of %d bytes exceed %d", n, h3MaxHeadersLen)
				return 0, s.rerr
			}
			if _, err := io.CopyN(io.Discard, s.r, int64(n)); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				s.rerr = err
				return 0, err
			}
			s.rerr = io.EOF
		case h3FramePushPromise:
			s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeIDError), "PUSH_PROMISE without MAX_PUSH_ID")
			s.rerr = errors.New("PUSH_PROMISE on the request stream, but the client allows no push")
			return 0, s.rerr
		case h3FrameSettings, h3FrameGoaway, h3FrameMaxPushID, h3FrameCancelPush:
			s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected), "")
			s.rerr = fmt.Errorf("unexpected frame type %#x on the request stream", typ)
			return 0, s.rerr
		default:
			if h3FrameHTTP2Only(typ) {
				s.conn.CloseWithError(quic.ApplicationErrorCode(http3.ErrCodeFrameUnexpected), "")
				s.rerr = fmt.Errorf("HTTP/2 frame type %#x on the request stream", typ)
				return 0, s.rerr
			}
			if _, err := io.CopyN(io.Discard, s.r, int64(n)); err != nil {
				s.rerr = err
				return 0, err
			}
		}
	}
	if uint64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= uint64(n)
	if err == io.EOF && s.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		err = nil // the next Read reports it between frames
	}
	if err != nil {
		s.rerr = err
	}
	return n, err
}

// Write sends b as one DATA frame.
func (s *ipStream) Write(b []byte) (int, error) {
	s.wbuf = quicvarint.Append(s.wbuf[:0], h3FrameData)
	s.wbuf = quicvarint.Append(s.wbuf, uint64(len(b)))
	s.wbuf = append(s.wbuf, b...)
	if _, err := s.str.Write(s.wbuf); err != nil {
		return 0, err
	}
	return len(b), nil
}
