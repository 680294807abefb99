package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/quic-go/quic-go/quicvarint"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/capsule"
	"github.com/roamvpn/roam/tunnel/flow"
)

// testCertPin returns a fresh self-signed certificate and its pin.
func testCertPin(t *testing.T) (tls.Certificate, [32]byte) {
	t.Helper()
	cert, _, err := auth.LoadOrCreateCert(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := auth.ParsePin(auth.Pin(cert.Certificate[0]))
	if err != nil {
		t.Fatal(err)
	}
	return cert, pin
}

// http3Dispatchers counts the goroutines of quic-go's http3 datagram
// dispatcher in the process.
func http3Dispatchers() int {
	var b bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	return bytes.Count(b.Bytes(), []byte("http3.(*rawConn).receiveDatagrams"))
}

// ipSession is what the fake server hands the test: the QUIC connection
// and the quarter stream ID of the CONNECT-IP session.
type ipSession struct {
	conn *quic.Conn
	qsid uint64
}

// startStockCONNECTIPServer runs a minimal CONNECT-IP server on quic-go's
// http3.Server (not Roam's): it assigns 100.64.0.2/32, advertises
// everything, and hands each session to the test.
func startStockCONNECTIPServer(t *testing.T) (addr string, pin [32]byte, sessions <-chan ipSession) {
	t.Helper()
	cert, pin := testCertPin(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan ipSession, 4)
	srv := stockCONNECTIPServer(t, cert, ch)
	go srv.Serve(pc)
	t.Cleanup(func() { srv.Close(); pc.Close() })
	return pc.LocalAddr().String(), pin, ch
}

// stockConnKey is the request context key of the QUIC connection in
// stockCONNECTIPServer.
type stockConnKey struct{}

// stockCONNECTIPServer is startStockCONNECTIPServer's http3.Server, not
// started: it hands each session to ch.
func stockCONNECTIPServer(t *testing.T, cert tls.Certificate, ch chan<- ipSession) *http3.Server {
	type connKey = stockConnKey
	return &http3.Server{
		TLSConfig:       http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
		QUICConfig:      quicConfig(DefaultKeepAlive),
		EnableDatagrams: true, // and Extended CONNECT, which http3.Server always enables
		ConnContext: func(ctx context.Context, c *quic.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect || r.Proto != "connect-ip" || r.Header.Get("Authorization") != "Bearer "+testToken ||
				r.Header.Get("Capsule-Protocol") != "?1" || r.URL.Path != WellKnownPath+"*/*/" {
				t.Errorf("unexpected request: %s %q %s %v", r.Method, r.Proto, r.URL.Path, r.Header)
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			w.Header().Set("Capsule-Protocol", "?1")
			w.WriteHeader(http.StatusOK)
			assign := capsule.AddressAssign{Addresses: []capsule.AssignedAddress{{Prefix: netip.MustParsePrefix("100.64.0.2/32")}}}
			routes := capsule.RouteAdvertisement{Ranges: []capsule.IPRange{{Start: netip.MustParseAddr("0.0.0.0"), End: netip.MustParseAddr("255.255.255.255")}}}
			b, err := assign.Append(nil)
			if err == nil {
				b, err = routes.Append(b)
			}
			if err != nil {
				t.Error(err)
				return
			}
			w.(http.Flusher).Flush()
			str := w.(http3.HTTPStreamer).HTTPStream()
			if _, err := str.Write(b); err != nil {
				t.Error(err)
				return
			}
			ch <- ipSession{conn: r.Context().Value(connKey{}).(*quic.Conn), qsid: uint64(str.StreamID()) / 4}
			io.Copy(io.Discard, str) // until the client goes
		}),
	}
}

// recordingDevice passes packets written to it to a channel.
type recordingDevice struct {
	closed chan struct{}
	once   sync.Once
	pkts   chan []byte
}

func newRecordingDevice() *recordingDevice {
	return &recordingDevice{closed: make(chan struct{}), pkts: make(chan []byte, 64)}
}

func (d *recordingDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	<-d.closed
	return 0, net.ErrClosed
}

func (d *recordingDevice) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		select {
		case d.pkts <- bytes.Clone(b[offset:]):
		default:
		}
	}
	return len(bufs), nil
}

func (d *recordingDevice) BatchSize() int    { return 1 }
func (d *recordingDevice) MTU() (int, error) { return TunnelMTU, nil }
func (d *recordingDevice) Close() error      { d.once.Do(func() { close(d.closed) }); return nil }

// wait calls resend until a packet containing marker is written to d.
func (d *recordingDevice) wait(t *testing.T, marker string, resend func()) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	resend()
	for {
		select {
		case p := <-d.pkts:
			if bytes.Contains(p, []byte(marker)) {
				return
			}
		case <-tick.C:
			resend()
		case <-deadline:
			t.Fatalf("packet %q did not reach the device", marker)
		}
	}
}

// TestClientDatagramReceivePath: against a stock quic-go http3 server, the
// client reads the connection's datagrams itself (no http3 dispatcher on
// its side), delivers valid ones and drops and counts malformed ones,
// datagrams for other streams and other context IDs, without closing the
// connection (http3's dispatcher closes it on a quarter stream ID above
// 2^60).
func TestClientDatagramReceivePath(t *testing.T) {
	before := http3Dispatchers()
	addr, pin, sessions := startStockCONNECTIPServer(t)
	dev := newRecordingDevice()
	tc, err := startTestClient(t, &testServer{addr: addr, pin: pin}, func(c *ClientConfig) {
		c.NewDevice = func(DeviceConfig) (datagram.Device, error) { return dev, nil }
	})
	if err != nil {
		t.Fatal(err)
	}
	var s ipSession
	select {
	case s = <-sessions:
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}
	// The server's side runs a dispatcher; the client's must not.
	if n := http3Dispatchers() - before; n > 1 {
		t.Fatalf("%d http3 datagram dispatchers started, want 1 (the server's)", n)
	}
	me := netip.MustParseAddr("100.64.0.2")
	peer := netip.MustParseAddr("192.0.2.9")
	pkt := func(payload string) []byte { return buildUDP4(peer, me, 53, 40000, []byte(payload)) }
	send := func(b []byte) {
		if err := s.conn.SendDatagram(b); err != nil {
			t.Fatal(err)
		}
	}
	dev.wait(t, "first", func() { send(append(datagram.AppendPrefix(nil, s.qsid, 0), pkt("first")...)) })

	st := tc.client.Stats()
	malformed, stream, ctxID := st.DropMalformed.Load(), st.DropStream.Load(), st.DropContext.Load()
	send([]byte{0x40})                                                            // truncated quarter stream ID
	send(append(datagram.AppendPrefix(nil, s.qsid, 0)[:1], 0x80))                 // truncated context ID (a 4-byte varint's first byte)
	send(append(datagram.AppendPrefix(nil, s.qsid, 0), 0x45, 0x00))               // truncated IPv4 header
	send(append(datagram.AppendPrefix(nil, s.qsid+1, 0), pkt("other stream")...)) // unknown quarter stream ID
	send(append(datagram.AppendPrefix(nil, 1<<62-1, 0), pkt("huge stream")...))   // beyond any stream ID
	send(append(datagram.AppendPrefix(nil, s.qsid, 2), pkt("context 2")...))      // unknown context ID
	dev.wait(t, "after", func() { send(append(datagram.AppendPrefix(nil, s.qsid, 0), pkt("after")...)) })
	if got := st.DropMalformed.Load() - malformed; got != 3 {
		t.Errorf("DropMalformed grew by %d, want 3", got)
	}
	if got := st.DropStream.Load() - stream; got != 2 {
		t.Errorf("DropStream grew by %d, want 2", got)
	}
	if got := st.DropContext.Load() - ctxID; got != 1 {
		t.Errorf("DropContext grew by %d, want 1", got)
	}
	select {
	case p := <-dev.pkts:
		t.Fatalf("a dropped datagram reached the device: % x", p)
	default:
	}
	if err := context.Cause(s.conn.Context()); err != nil {
		t.Fatalf("the connection ended: %v", err)
	}
}

// quicPair returns the two ends of a QUIC connection on loopback with
// ALPN h3; the server's end is accepted in the background.
func quicPair(t *testing.T) (client, server *quic.Conn) {
	return quicPairWith(t, quicConfig(DefaultKeepAlive))
}

// quicPairWith is quicPair with the server's QUIC configuration; the
// client's is clientQUICConfig.
func quicPairWith(t *testing.T, serverConf *quic.Config) (client, server *quic.Conn) {
	t.Helper()
	cert, pin := testCertPin(t)
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{http3.NextProtoH3}}, serverConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan *quic.Conn, 1)
	go func() {
		c, err := ln.Accept(context.Background())
		if err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := &Client{cfg: ClientConfig{Server: ln.Addr().String(), Pin: &pin}}
	client, err = quic.DialAddr(ctx, ln.Addr().String(), c.tlsConfig(), clientQUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case server = <-accepted:
	case <-ctx.Done():
		t.Fatal("no connection accepted")
	}
	t.Cleanup(func() { client.CloseWithError(0, ""); server.CloseWithError(0, "") })
	return client, server
}

// h3Frame encodes an HTTP/3 frame.
func h3Frame(typ uint64, payload []byte) []byte {
	b := quicvarint.Append(nil, typ)
	b = quicvarint.Append(b, uint64(len(payload)))
	return append(b, payload...)
}

// settingsPayload encodes a SETTINGS payload from id, value pairs.
func settingsPayload(kv ...uint64) []byte {
	var b []byte
	for _, v := range kv {
		b = quicvarint.Append(b, v)
	}
	return b
}

// headersPayload QPACK-encodes fields (name, value pairs).
func headersPayload(t *testing.T, kv ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := qpack.NewEncoder(&buf)
	for i := 0; i < len(kv); i += 2 {
		if err := enc.WriteField(qpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// TestH3Control: the server's unidirectional streams, well-formed and
// not; each violation closes the connection with RFC 9114's error code.
func TestH3Control(t *testing.T) {
	goodSettings := h3Frame(h3FrameSettings, settingsPayload(h3SettingDatagram, 1, h3SettingExtendedConnect, 1, 0x21, 7, 0x6, 1000))
	cases := []struct {
		name    string
		streams [][]byte // each a unidirectional stream's bytes
		fin     bool     // end the last stream after writing
		code    http3.ErrCode
	}{
		{"ok", [][]byte{append(append(append(quicvarint.Append(nil, h3StreamControl), goodSettings...),
			h3Frame(0x21, []byte("reserved"))...), h3Frame(h3FrameGoaway, quicvarint.Append(nil, 8))...),
			{h3StreamQPACKEncoder}, {h3StreamQPACKDecoder}, {0x54}}, false, 0},
		{"first frame not SETTINGS", [][]byte{append(quicvarint.Append(nil, h3StreamControl), h3Frame(h3FrameGoaway, []byte{0})...)}, false, http3.ErrCodeMissingSettings},
		{"duplicate setting", [][]byte{append(quicvarint.Append(nil, h3StreamControl), h3Frame(h3FrameSettings, settingsPayload(0x33, 1, 0x33, 1))...)}, false, http3.ErrCodeSettingsError},
		{"H3_DATAGRAM=2", [][]byte{append(quicvarint.Append(nil, h3StreamControl), h3Frame(h3FrameSettings, settingsPayload(0x33, 2))...)}, false, http3.ErrCodeSettingsError},
		{"HTTP/2 setting", [][]byte{append(quicvarint.Append(nil, h3StreamControl), h3Frame(h3FrameSettings, settingsPayload(0x4, 100))...)}, false, http3.ErrCodeSettingsError},
		{"truncated SETTINGS", [][]byte{append(quicvarint.Append(nil, h3StreamControl), h3Frame(h3FrameSettings, []byte{0x33})...)}, false, http3.ErrCodeSettingsError},
		{"control stream ends", [][]byte{append(quicvarint.Append(nil, h3StreamControl), goodSettings...)}, true, http3.ErrCodeClosedCriticalStream},
		{"DATA on the control stream", [][]byte{append(append(quicvarint.Append(nil, h3StreamControl), goodSettings...), h3Frame(h3FrameData, []byte("x"))...)}, false, http3.ErrCodeFrameUnexpected},
		{"GOAWAY for a server stream", [][]byte{append(append(quicvarint.Append(nil, h3StreamControl), goodSettings...), h3Frame(h3FrameGoaway, quicvarint.Append(nil, 3))...)}, false, http3.ErrCodeIDError},
		{"GOAWAY ID growing", [][]byte{append(append(append(quicvarint.Append(nil, h3StreamControl), goodSettings...),
			h3Frame(h3FrameGoaway, quicvarint.Append(nil, 4))...), h3Frame(h3FrameGoaway, quicvarint.Append(nil, 8))...)}, false, http3.ErrCodeIDError},
		{"two control streams", [][]byte{append(quicvarint.Append(nil, h3StreamControl), goodSettings...), {h3StreamControl}}, false, http3.ErrCodeStreamCreationError},
		{"push stream", [][]byte{{h3StreamPush, 0}}, false, http3.ErrCodeIDError},
		{"HTTP/2 PING on the control stream", [][]byte{append(append(quicvarint.Append(nil, h3StreamControl), goodSettings...), h3Frame(0x6, make([]byte, 8))...)}, false, http3.ErrCodeFrameUnexpected},
		{"HTTP/2 WINDOW_UPDATE on the control stream", [][]byte{append(append(quicvarint.Append(nil, h3StreamControl), goodSettings...), h3Frame(0x8, make([]byte, 4))...)}, false, http3.ErrCodeFrameUnexpected},
		{"QPACK encoder stream ends", [][]byte{append(quicvarint.Append(nil, h3StreamControl), goodSettings...), {h3StreamQPACKEncoder}}, true, http3.ErrCodeClosedCriticalStream},
		{"QPACK decoder stream ends", [][]byte{append(quicvarint.Append(nil, h3StreamControl), goodSettings...), {h3StreamQPACKDecoder}}, true, http3.ErrCodeClosedCriticalStream},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := quicPair(t)
			ctrl := startH3Control(client, testLogger(t))
			for i, b := range tc.streams {
				str, err := server.OpenUniStream()
				if err != nil {
					t.Fatal(err)
				}
				str.Write(b)
				if tc.fin && i == len(tc.streams)-1 {
					str.Close()
				}
				time.Sleep(10 * time.Millisecond) // in this order
			}
			if tc.code == 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				s, err := ctrl.waitSettings(ctx)
				if err != nil || !s.datagram || !s.extendedConnect {
					t.Fatalf("settings %+v, %v", s, err)
				}
				time.Sleep(100 * time.Millisecond)
				if err := context.Cause(client.Context()); err != nil {
					t.Fatalf("connection closed: %v", err)
				}
				select {
				case <-ctrl.goingAway():
				default:
					t.Fatal("GOAWAY did not close goingAway")
				}
				return
			}
			select {
			case <-client.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the connection stayed open")
			}
			var ae *quic.ApplicationError
			if err := context.Cause(client.Context()); !errors.As(err, &ae) || ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(tc.code) {
				t.Fatalf("closed with %v, want local application error %#x", err, uint64(tc.code))
			}
		})
	}
}

func TestParseH3Settings(t *testing.T) {
	s, err := parseH3Settings(settingsPayload(h3SettingDatagram, 0, h3SettingExtendedConnect, 1))
	if err != nil || s.datagram || !s.extendedConnect {
		t.Fatalf("got %+v, %v", s, err)
	}
	if s, err := parseH3Settings(nil); err != nil || s != (h3Settings{}) {
		t.Fatalf("empty: %+v, %v", s, err)
	}
}

// TestIPStream: the client's request stream against hand-written server
// frames.
func TestIPStream(t *testing.T) {
	type result struct {
		resp *http.Response
		body string
		err  error
	}
	run := func(t *testing.T, response ...[]byte) (result, *quic.Conn) {
		t.Helper()
		client, server := quicPair(t)
		qs, err := client.OpenStreamSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		s := newIPStream(client, qs)
		if err := s.sendRequest("connect-ip", "example.net:443", "/.well-known/masque/ip/*/*/", http.Header{"Authorization": {"Bearer x"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write([]byte("capsules")); err != nil {
			t.Fatal(err)
		}
		ss, err := server.AcceptStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		// The request: a HEADERS frame, then one DATA frame.
		r := quicvarint.NewReader(ss)
		typ, n, err := readH3FrameHeader(r)
		if err != nil || typ != h3FrameHeaders {
			t.Fatalf("first frame %#x, %v", typ, err)
		}
		hb := make([]byte, n)
		io.ReadFull(r, hb)
		var fields []string
		dec := qpack.NewDecoder().Decode(hb)
		for f, err := dec(); err == nil; f, err = dec() {
			fields = append(fields, f.Name+"="+f.Value)
		}
		want := ":method=CONNECT :protocol=connect-ip :scheme=https :authority=example.net:443 :path=/.well-known/masque/ip/*/*/ authorization=Bearer x"
		if got := strings.Join(fields, " "); got != want {
			t.Fatalf("request fields\n%s\nwant\n%s", got, want)
		}
		if typ, n, err := readH3FrameHeader(r); err != nil || typ != h3FrameData || n != 8 {
			t.Fatalf("second frame %#x len %d, %v", typ, n, err)
		}
		for _, b := range response {
			if b == nil {
				ss.Close()
				continue
			}
			ss.Write(b)
		}
		var res result
		if res.resp, res.err = s.readResponse(); res.err == nil {
			var body []byte
			body, res.err = io.ReadAll(res.resp.Body)
			res.body = string(body)
		}
		return res, client
	}
	ok := h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "roam-fec", "auto"))
	t.Run("ok", func(t *testing.T) {
		res, _ := run(t,
			h3Frame(0x21, []byte("grease")),
			h3Frame(h3FrameHeaders, headersPayload(t, ":status", "103", "link", "x")),
			ok,
			h3Frame(h3FrameData, []byte("ab")), h3Frame(h3FrameData, nil), h3Frame(0x40, []byte("z")),
			h3Frame(h3FrameData, []byte("cdef")), nil)
		if res.err != nil || res.resp.StatusCode != 200 || res.resp.Header.Get(FECHeader) != "auto" || res.body != "abcdef" {
			t.Fatalf("got %+v", res)
		}
	})
	t.Run("te trailers", func(t *testing.T) {
		res, _ := run(t, h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "te", "trailers")), nil)
		if res.err != nil || res.resp.StatusCode != 200 {
			t.Fatalf("got %+v", res)
		}
	})
	t.Run("refused with trailers", func(t *testing.T) {
		res, _ := run(t, h3Frame(h3FrameHeaders, headersPayload(t, ":status", "403")), h3Frame(h3FrameData, []byte("no")),
			h3Frame(h3FrameHeaders, headersPayload(t, "x-trailer", "1")))
		if res.err != nil || res.resp.StatusCode != 403 || res.resp.Status != "403 Forbidden" || res.body != "no" {
			t.Fatalf("got %+v", res)
		}
	})
	t.Run("ends inside a DATA frame", func(t *testing.T) {
		res, _ := run(t, ok, []byte{h3FrameData, 10, 'a'}, nil)
		if !errors.Is(res.err, io.ErrUnexpectedEOF) {
			t.Fatalf("got %+v", res)
		}
	})
	for _, tc := range []struct {
		name string
		resp [][]byte
		code http3.ErrCode // the connection's close code, 0 if it stays open
	}{
		{"HEADERS after 2xx", [][]byte{ok, h3Frame(h3FrameHeaders, headersPayload(t, "x", "y"))}, http3.ErrCodeFrameUnexpected},
		{"DATA before HEADERS", [][]byte{h3Frame(h3FrameData, []byte("x"))}, http3.ErrCodeFrameUnexpected},
		{"SETTINGS on the stream", [][]byte{ok, h3Frame(h3FrameSettings, nil)}, http3.ErrCodeFrameUnexpected},
		{"bad :status", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "20"))}, 0},
		{"no :status", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, "x", "y"))}, 0},
		{"pseudo-header after a field", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, "x", "y", ":status", "200"))}, 0},
		{"request pseudo-header", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", ":path", "/"))}, 0},
		{"101", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "101"))}, 0},
		{"too many 1xx", [][]byte{bytes.Repeat(h3Frame(h3FrameHeaders, headersPayload(t, ":status", "100")), 6), ok}, 0},
		{"bad QPACK", [][]byte{h3Frame(h3FrameHeaders, []byte{0, 0, 0xff})}, http3.ErrCodeQPACKDecompressionFailed},
		{"HTTP/2 PRIORITY before the response", [][]byte{h3Frame(0x2, []byte{1, 2, 3, 4, 5})}, http3.ErrCodeFrameUnexpected},
		{"HTTP/2 CONTINUATION in the body", [][]byte{ok, h3Frame(0x9, []byte{1})}, http3.ErrCodeFrameUnexpected},
		{"PUSH_PROMISE before the response", [][]byte{h3Frame(h3FramePushPromise, []byte{0})}, http3.ErrCodeIDError},
		{"PUSH_PROMISE in the body", [][]byte{ok, h3Frame(h3FramePushPromise, []byte{0})}, http3.ErrCodeIDError},
		{"uppercase field name", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "Capsule-Protocol", "?1"))}, 0},
		{"connection field", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "connection", "close"))}, 0},
		{"transfer-encoding field", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "transfer-encoding", "chunked"))}, 0},
		{"te other than trailers", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "te", "gzip"))}, 0},
		{"invalid field name", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "a b", "1"))}, 0},
		{"invalid field value", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "200", "x", "a\x00b"))}, 0},
		{"oversized trailers", [][]byte{h3Frame(h3FrameHeaders, headersPayload(t, ":status", "500")), h3Frame(h3FrameData, []byte("no")),
			quicvarint.Append(quicvarint.Append(nil, h3FrameHeaders), h3MaxHeadersLen+1), nil}, 0},
		{"oversized HEADERS", [][]byte{quicvarint.Append(quicvarint.Append(nil, h3FrameHeaders), h3MaxHeadersLen+1)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, client := run(t, tc.resp...)
			if res.err == nil {
				t.Fatalf("no error: %+v", res)
			}
			t.Logf("error: %v", res.err)
			if tc.code == 0 {
				return
			}
			select {
			case <-client.Context().Done():
			case <-time.After(5 * time.Second):
				t.Fatal("the connection stayed open")
			}
			var ae *quic.ApplicationError
			if err := context.Cause(client.Context()); !errors.As(err, &ae) || ae.ErrorCode != quic.ApplicationErrorCode(tc.code) {
				t.Fatalf("closed with %v, want %#x", err, uint64(tc.code))
			}
		})
	}
}

// TestIPStreamBadHeaderValue: a token with a line break is refused before
// anything is sent.
func TestIPStreamBadHeaderValue(t *testing.T) {
	client, _ := quicPair(t)
	qs, err := client.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	err = newIPStream(client, qs).sendRequest("connect-ip", "a:1", "/", http.Header{"Authorization": {"Bearer a\r\nb"}})
	if err == nil || !strings.Contains(err.Error(), "Authorization") {
		t.Fatalf("got %v", err)
	}
}

// TestH3ControlEndsWithLink: the goroutines reading the server's streams
// end with the link's connection (no leak across reconnects).
func TestH3ControlEndsWithLink(t *testing.T) {
	count := func() int {
		var b bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&b, 2)
		return bytes.Count(b.Bytes(), []byte("tunnel.startH3Control")) + bytes.Count(b.Bytes(), []byte("tunnel.(*h3Control)."))
	}
	ts := startTestServer(t, nil)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := linkOn(t, pc, ts.addr, ts.pin)
	if count() == 0 {
		t.Fatal("no h3Control goroutine while the link is up")
	}
	l.close("test")
	waitForCond(t, "the h3Control goroutines to end", 5*time.Second, func() bool { return count() == 0 })
}

// TestReconnect0RTTRejected: a server with new keys refuses the 0-RTT
// data; the client notices it at once (the server's streams of the 0-RTT
// connection are void, so its SETTINGS never come on them) and dials
// again, instead of waiting out the attempt. The server restarts three
// times: an attempt can also meet a server still starting or stopping
// (CONNECTION_REFUSED) and then dial without 0-RTT.
func TestReconnect0RTTRejected(t *testing.T) {
	secret := make([]byte, 32)
	ts := startTestServerWith(t, testServerOpts{secret: secret})
	cert := ts.srv.cfg.TLS.Certificates[0]
	var logs syncBuffer
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		ts.stop()
		secret = bytes.Repeat([]byte{byte(i + 1)}, 32)
		ts = startTestServerWith(t, testServerOpts{addr: ts.addr, cert: cert, secret: secret})
		waitForCond(t, "the client to reconnect", 20*time.Second, func() bool { return tc.client.reconnects.Load() == uint64(i+1) })
	}
	out := logs.String()
	if strings.Contains(out, "SETTINGS: context deadline exceeded") {
		t.Fatalf("an attempt waited out its deadline for the SETTINGS; logs:\n%s", out)
	}
	if !strings.Contains(out, "the server refused 0-RTT; dialing again") {
		t.Fatalf("the server never refused 0-RTT; logs:\n%s", out)
	}
}

// TestClientStreamLimits: the server may open no bidirectional stream
// towards the client (RFC 9114 §6.1; nothing there would accept it) and
// only clientMaxIncomingUniStreams unidirectional ones, so streams that
// never send their type cannot pile up goroutines in h3Control.
func TestClientStreamLimits(t *testing.T) {
	client, server := quicPair(t)
	startH3Control(client, testLogger(t))
	if _, err := server.OpenStream(); err == nil {
		t.Fatal("the server opened a bidirectional stream towards the client")
	}
	for i := range clientMaxIncomingUniStreams {
		str, err := server.OpenUniStream()
		if err != nil {
			t.Fatalf("unidirectional stream %d: %v", i, err)
		}
		str.Write(nil) // opened, no type
	}
	if _, err := server.OpenUniStream(); err == nil {
		t.Fatalf("the server opened more than %d unidirectional streams that send no type", clientMaxIncomingUniStreams)
	}
}

// TestH3ControlDatagramWithoutQUIC: SETTINGS_H3_DATAGRAM=1 from a server
// whose QUIC transport parameters do not allow datagrams is
// H3_SETTINGS_ERROR as soon as the SETTINGS arrive (RFC 9297 §2.1.1), and
// waitSettings reports ErrNoDatagrams.
func TestH3ControlDatagramWithoutQUIC(t *testing.T) {
	conf := quicConfig(DefaultKeepAlive)
	conf.EnableDatagrams = false
	client, server := quicPairWith(t, conf)
	ctrl := startH3Control(client, testLogger(t))
	str, err := server.OpenUniStream()
	if err != nil {
		t.Fatal(err)
	}
	str.Write(append(quicvarint.Append(nil, h3StreamControl), h3Frame(h3FrameSettings, settingsPayload(h3SettingDatagram, 1, h3SettingExtendedConnect, 1))...))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := ctrl.waitSettings(ctx); !errors.Is(err, ErrNoDatagrams) {
		t.Fatalf("waitSettings: %v, want ErrNoDatagrams", err)
	}
	select {
	case <-client.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection stayed open")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(client.Context()); !errors.As(err, &ae) || ae.ErrorCode != quic.ApplicationErrorCode(http3.ErrCodeSettingsError) {
		t.Fatalf("closed with %v, want H3_SETTINGS_ERROR", err)
	}
}

// TestOpenFlowAfterGoaway: once the server has sent GOAWAY, openFlow opens
// no request on that connection (RFC 9114 §5.2): it fails at once with a
// flow error (a reset for the application).
func TestOpenFlowAfterGoaway(t *testing.T) {
	ctrl := &h3Control{goawayDone: make(chan struct{})}
	close(ctrl.goawayDone)
	s := &supervisor{c: &Client{}}
	s.state.Store(&clientState{routes: routesFromPrefixes(DefaultRoutes)})
	s.setCurrent(&link{ctrl: ctrl}) // no cc: opening a stream would panic
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := s.openFlow(ctx, netip.MustParseAddrPort("100.64.0.2:40000"), netip.MustParseAddrPort("192.0.2.1:80"))
	var fe *flow.Error
	if !errors.As(err, &fe) || fe.Kind != flow.Other || !errors.Is(err, errGoaway) {
		t.Fatalf("openFlow: %v, want a flow.Error of kind Other wrapping errGoaway", err)
	}
}

// TestConnectBoundedOnRefusal: a server that answers the CONNECT-IP
// request with 503 and leaves the stream open cannot hold the attempt past
// its context (the body is read under it).
func TestConnectBoundedOnRefusal(t *testing.T) {
	cert, pin := testCertPin(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http3.Server{
		TLSConfig:       http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
		QUICConfig:      quicConfig(DefaultKeepAlive),
		EnableDatagrams: true,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("busy"))
			w.(http.Flusher).Flush()
			<-r.Context().Done() // no FIN until the client goes
		}),
	}
	go srv.Serve(pc)
	t.Cleanup(func() { srv.Close(); pc.Close() })
	c, err := NewClient(ClientConfig{
		Server: pc.LocalAddr().String(), Token: testToken, Pin: &pin, Logger: testLogger(t),
		ListenPacket: func(netip.Addr) (net.PacketConn, error) { return net.ListenPacket("udp", "127.0.0.1:0") },
		NewDevice:    func(DeviceConfig) (datagram.Device, error) { return nil, errors.New("unused") },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		l, err := c.connect(ctx, nil)
		if l != nil {
			l.close("test")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("connect succeeded")
		}
		t.Logf("connect: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("connect still running 9 s past its deadline")
	}
}

// TestGoawayHandoff: a server that sends GOAWAY (quic-go's http3.Server
// shutting down gracefully) keeps the CONNECT-IP session on the old
// connection while the client dials a new one (served here by a second
// http3.Server on the same listener); the client then moves the tunnel to
// the new connection and closes the old one (make-before-break).
func TestGoawayHandoff(t *testing.T) {
	cert, pin := testCertPin(t)
	ln, err := quic.ListenAddr("127.0.0.1:0", http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}), quicConfig(DefaultKeepAlive))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	sessions := make(chan ipSession, 4)
	srv1 := stockCONNECTIPServer(t, cert, sessions)
	served1 := make(chan struct{})
	go func() { srv1.ServeListener(ln); close(served1) }()
	t.Cleanup(func() { srv1.Close() })
	dev := newRecordingDevice()
	tc, err := startTestClient(t, &testServer{addr: ln.Addr().String(), pin: pin}, func(c *ClientConfig) {
		c.NewDevice = func(DeviceConfig) (datagram.Device, error) { return dev, nil }
	})
	if err != nil {
		t.Fatal(err)
	}
	var s1 ipSession
	select {
	case s1 = <-sessions:
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go srv1.Shutdown(shutdownCtx) // GOAWAY on s1's connection
	select {
	case <-served1:
	case <-time.After(5 * time.Second):
		t.Fatal("the first server kept accepting")
	}
	srv2 := stockCONNECTIPServer(t, cert, sessions)
	go srv2.ServeListener(ln)
	t.Cleanup(func() { srv2.Close() })

	var s2 ipSession
	select {
	case s2 = <-sessions:
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not open a new session after GOAWAY")
	}
	waitForCond(t, "the client to move to the new connection", 5*time.Second, func() bool { return tc.client.reconnects.Load() == 1 })
	select {
	case <-s1.conn.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the client kept the old connection open")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(s1.conn.Context()); !errors.As(err, &ae) || !ae.Remote || !strings.Contains(ae.ErrorMessage, "GOAWAY") {
		t.Fatalf("old connection ended with %v, want the client's close after GOAWAY", err)
	}
	// The tunnel runs on the new connection.
	me := netip.MustParseAddr("100.64.0.2")
	pkt := buildUDP4(netip.MustParseAddr("192.0.2.9"), me, 53, 40000, []byte("after goaway"))
	dev.wait(t, "after goaway", func() {
		if err := s2.conn.SendDatagram(append(datagram.AppendPrefix(nil, s2.qsid, 0), pkt...)); err != nil {
			t.Fatal(err)
		}
	})
	if sup := tc.client.sup.Load(); sup == nil || sup.cur.Load() == nil || sup.cur.Load().conn.Context().Err() != nil {
		t.Fatal("no current link after the handoff")
	}
}
