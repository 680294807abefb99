package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/flow/flowtest"
	"github.com/roamvpn/roam/tunnel/webproto"
	"github.com/roamvpn/roam/web/client"
)

const goodToken = "s3cret"

// fakeServer speaks the server side of webproto over in-memory pipes. Its
// destinations: "refused.test", "blocked.test", "slow.test" (never
// answers), "gone.test" (resets), "echo.test" (echoes), and anything else
// is an HTTP server.
type fakeServer struct {
	silent  bool // never answers HELLO
	pongs   bool // answers PING
	httpLn  *flowtest.Listener
	httpSrv *http.Server
}

func newFakeServer(t *testing.T) *fakeServer {
	ln := flowtest.NewListener("fake")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hello from %s%s", r.Host, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &fakeServer{pongs: true, httpLn: ln, httpSrv: srv}
}

// session returns a new client.Session to the server.
func (fs *fakeServer) session() *fakeSession {
	return &fakeSession{srv: fs, closed: make(chan struct{})}
}

type fakeSession struct {
	srv *fakeServer

	mu      sync.Mutex
	n       int
	streams []*flowtest.End // guarded by mu
	once    sync.Once
	closed  chan struct{}
}

func (s *fakeSession) OpenStream(ctx context.Context) (flow.Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return nil, errors.New("fake: session closed")
	default:
	}
	a, b := flowtest.Pipe()
	s.streams = append(s.streams, a, b)
	first := s.n == 0
	s.n++
	if first {
		go s.control(b)
	} else {
		go s.flow(b)
	}
	return a, nil
}

func (s *fakeSession) Close() error {
	s.once.Do(func() {
		close(s.closed)
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, e := range s.streams {
			e.Abort()
		}
	})
	return nil
}

func (s *fakeSession) control(st *flowtest.End) {
	t, v, err := webproto.ReadMessage(st, webproto.MaxTokenLen)
	if err != nil || t != webproto.TypeHello {
		return
	}
	if s.srv.silent {
		return
	}
	if string(v) != goodToken {
		webproto.WriteMessage(st, webproto.TypeSessionError, webproto.MarshalJSONValue(&webproto.SessionError{Code: webproto.CodeUnauthorized, Message: "bad token"}))
		st.CloseWrite()
		return
	}
	webproto.WriteMessage(st, webproto.TypeWelcome, webproto.MarshalJSONValue(&webproto.Welcome{Routes: []string{"10.0.0.0/8"}, MaxFlows: 8, Server: "fake"}))
	for {
		t, v, err := webproto.ReadMessage(st, 0)
		if err != nil {
			return
		}
		if t == webproto.TypePing && s.srv.pongs {
			time.Sleep(time.Millisecond)
			webproto.WriteMessage(st, webproto.TypePong, v)
		}
	}
}

// shutdown sends SESSION_ERROR shutdown on the control stream, as a
// stopping server does.
func (s *fakeSession) shutdown() {
	s.mu.Lock()
	ctrl := s.streams[1]
	s.mu.Unlock()
	webproto.WriteMessage(ctrl, webproto.TypeSessionError, webproto.MarshalJSONValue(&webproto.SessionError{Code: webproto.CodeShutdown, Message: "bye"}))
}

func (s *fakeSession) flow(st *flowtest.End) {
	t, v, err := webproto.ReadMessage(st, webproto.MaxAuthorityLen)
	if err != nil || t != webproto.TypeFlowOpen {
		st.Abort()
		return
	}
	refuse := func(kind flow.ErrorKind) {
		webproto.WriteMessage(st, webproto.TypeFlowError, []byte(flow.ProxyStatusField("", kind, "flow to "+string(v)+": "+kind.String())))
		st.CloseWrite()
	}
	host, _, _ := net.SplitHostPort(string(v))
	switch host {
	case "refused.test":
		refuse(flow.Refused)
	case "blocked.test":
		refuse(flow.Prohibited)
	case "timeout.test":
		refuse(flow.Timeout)
	case "nowhere.test":
		refuse(flow.Unreachable)
	case "slow.test":
		io.Copy(io.Discard, st)
	case "gone.test":
		webproto.WriteMessage(st, webproto.TypeFlowOK, nil)
		st.Read(make([]byte, 1)) // reset after the client's first byte
		st.Abort()
	case "echo.test":
		webproto.WriteMessage(st, webproto.TypeFlowOK, nil)
		io.Copy(st, st)
		st.CloseWrite()
	default:
		webproto.WriteMessage(st, webproto.TypeFlowOK, nil)
		select {
		case s.srv.httpLn.C <- flow.NewConn(st, nil, nil):
		case <-s.srv.httpLn.Done():
		}
	}
}

func signIn(t *testing.T, fs *fakeServer, cfg client.Config) (*client.Client, *fakeSession) {
	t.Helper()
	if cfg.Token == "" {
		cfg.Token = goodToken
	}
	sess := fs.session()
	c, err := client.New(context.Background(), sess, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, sess
}

func TestSignIn(t *testing.T) {
	tests := []struct {
		name     string
		token    string
		silent   bool
		wantCode client.Code
	}{
		{name: "good token", token: goodToken},
		{name: "wrong token", token: "nope", wantCode: client.CodeUnauthorized},
		{name: "empty token", token: "", wantCode: client.CodeBadInput},
		{name: "token too long", token: strings.Repeat("x", webproto.MaxTokenLen+1), wantCode: client.CodeBadInput},
		{name: "token not UTF-8", token: "\xff", wantCode: client.CodeBadInput},
		{name: "no answer", token: goodToken, silent: true, wantCode: client.CodeTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFakeServer(t)
			fs.silent = tt.silent
			c, err := client.New(context.Background(), fs.session(), client.Config{Token: tt.token, HandshakeTimeout: 100 * time.Millisecond})
			if got := client.ErrorCode(err); got != tt.wantCode {
				t.Fatalf("New: %v (code %q), want code %q", err, got, tt.wantCode)
			}
			if err != nil {
				return
			}
			defer c.Close()
			if w := c.Welcome(); w.Server != "fake" || w.MaxFlows != 8 {
				t.Errorf("Welcome = %+v", w)
			}
		})
	}
}

func TestDialErrors(t *testing.T) {
	fs := newFakeServer(t)
	c, _ := signIn(t, fs, client.Config{})
	tests := []struct {
		addr     string
		network  string
		wantCode client.Code
		wantText string
	}{
		{addr: "refused.test:80", wantCode: client.CodeRefused, wantText: "connection refused"},
		{addr: "blocked.test:22", wantCode: client.CodeProhibited, wantText: "prohibited by policy"},
		{addr: "timeout.test:80", wantCode: client.CodeTimeout},
		{addr: "nowhere.test:80", wantCode: client.CodeUnreachable},
		{addr: "no-port.test", wantCode: client.CodeBadInput, wantText: "address"},
		{addr: "bad host!:80", wantCode: client.CodeBadInput},
		{addr: "zero.test:0", wantCode: client.CodeBadInput, wantText: "port 0"},
		{addr: "udp.test:53", network: "udp", wantCode: client.CodeBadInput, wantText: "network"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			network := tt.network
			if network == "" {
				network = "tcp"
			}
			conn, err := c.Dial(context.Background(), network, tt.addr)
			if err == nil {
				conn.Close()
				t.Fatal("Dial succeeded")
			}
			if got := client.ErrorCode(err); got != tt.wantCode {
				t.Errorf("Dial: %v (code %q), want code %q", err, got, tt.wantCode)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("Dial: %v, want it to mention %q", err, tt.wantText)
			}
		})
	}
	if n := c.Stats().Flows; n != 0 {
		t.Errorf("Stats().Flows = %d after failed dials, want 0", n)
	}
}

func TestDialCancel(t *testing.T) {
	fs := newFakeServer(t)
	c, _ := signIn(t, fs, client.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Dial(ctx, "tcp", "slow.test:80")
	if got := client.ErrorCode(err); got != client.CodeTimeout {
		t.Errorf("Dial: %v (code %q), want code timeout", err, got)
	}
	if n := c.Stats().Flows; n != 0 {
		t.Errorf("Stats().Flows = %d after a cancelled dial, want 0", n)
	}
}

func TestEchoAndReset(t *testing.T) {
	fs := newFakeServer(t)
	c, _ := signIn(t, fs, client.Config{})
	conn, err := c.Dial(context.Background(), "tcp", "echo.test:7")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().Flows; got != 1 {
		t.Errorf("Stats().Flows = %d with one flow open", got)
	}
	if _, err := conn.Write([]byte("line\n")); err != nil {
		t.Fatal(err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "line\n" {
		t.Errorf("echo read %q, %v", got, err)
	}
	conn.Close()
	if got := c.Stats().Flows; got != 0 {
		t.Errorf("Stats().Flows = %d after Close", got)
	}

	conn, err = c.Dial(context.Background(), "tcp", "gone.test:7")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("x"))
	_, err = conn.Read(make([]byte, 10))
	if got := client.ErrorCode(err); got != client.CodeReset {
		t.Errorf("Read of a reset flow: %v (code %q), want reset", err, got)
	}
}

func TestHTTP(t *testing.T) {
	fs := newFakeServer(t)
	c, _ := signIn(t, fs, client.Config{})
	for _, path := range []string{"/a", "/b"} {
		resp, err := c.HTTPClient().Get("http://intranet.test:8080" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := "hello from intranet.test:8080" + path; string(body) != want {
			t.Errorf("body %q, want %q", body, want)
		}
	}
	st := c.Stats()
	if st.Up == 0 || st.Down == 0 {
		t.Errorf("Stats = %+v, want bytes both ways", st)
	}
	if st.Flows != 1 {
		t.Errorf("Stats().Flows = %d, want 1 (the kept-alive connection)", st.Flows)
	}
	_, err := c.HTTPClient().Get("http://refused.test/")
	if got := client.ErrorCode(err); got != client.CodeRefused {
		t.Errorf("Get of a refused destination: %v (code %q), want refused", err, got)
	}
}

func TestPingAndEnd(t *testing.T) {
	fs := newFakeServer(t)
	c, sess := signIn(t, fs, client.Config{PingInterval: 5 * time.Millisecond})
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().RTT == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no RTT after 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if rtt := c.Stats().RTT; rtt < time.Millisecond || rtt > 5*time.Second {
		t.Errorf("RTT = %v, want about 1 ms", rtt)
	}
	if err := c.Err(); err != nil {
		t.Errorf("Err() = %v while running", err)
	}
	sess.shutdown()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after SESSION_ERROR")
	}
	var se *webproto.SessionError
	if err := c.Err(); !errors.As(err, &se) || se.Code != webproto.CodeShutdown {
		t.Errorf("Err() = %v, want the SESSION_ERROR", err)
	}
	if got := client.ErrorCode(c.Err()); got != client.CodeShutdown {
		t.Errorf("ErrorCode(Err()) = %q, want shutdown", got)
	}
	_, err := c.Dial(context.Background(), "tcp", "echo.test:7")
	if got := client.ErrorCode(err); got != client.CodeClosed {
		t.Errorf("Dial after the end: %v (code %q), want closed", err, got)
	}
}

func TestClose(t *testing.T) {
	fs := newFakeServer(t)
	c, _ := signIn(t, fs, client.Config{})
	conn, err := c.Dial(context.Background(), "tcp", "echo.test:7")
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		readErr <- err
	}()
	c.Close()
	c.Close()
	if !errors.Is(c.Err(), client.ErrClosed) {
		t.Errorf("Err() = %v after Close, want ErrClosed", c.Err())
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("Read on a flow of a closed client returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
}

func TestSessionLost(t *testing.T) {
	fs := newFakeServer(t)
	c, sess := signIn(t, fs, client.Config{})
	sess.Close() // the network, or the server closing the connection
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the session was lost")
	}
	if got := client.ErrorCode(c.Err()); got != client.CodeLost || !errors.Is(c.Err(), client.ErrSessionLost) {
		t.Errorf("Err() = %v (code %q), want ErrSessionLost (code lost)", c.Err(), got)
	}
}

// TestSessionErrorCodes checks that every SESSION_ERROR code the server
// sends reaches the page as its own code (or reason), so that the page
// can say what happened: a wrong token, a server going down, a protocol
// mismatch, a sign-in that took too long.
func TestSessionErrorCodes(t *testing.T) {
	tests := []struct {
		code       string
		wantCode   client.Code
		wantReason string
	}{
		{webproto.CodeUnauthorized, client.CodeUnauthorized, webproto.CodeUnauthorized},
		{webproto.CodeShutdown, client.CodeShutdown, webproto.CodeShutdown},
		{webproto.CodeProtocol, client.CodeSession, webproto.CodeProtocol},
		{webproto.CodeTimeout, client.CodeSession, webproto.CodeTimeout},
		{"something-new", client.CodeSession, "something-new"},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			err := fmt.Errorf("client: sign-in: %w", &webproto.SessionError{Code: tt.code, Message: "m"})
			if got := client.ErrorCode(err); got != tt.wantCode {
				t.Errorf("ErrorCode = %q, want %q", got, tt.wantCode)
			}
			if got := client.SessionReason(err); got != tt.wantReason {
				t.Errorf("SessionReason = %q, want %q", got, tt.wantReason)
			}
		})
	}
	if got := client.SessionReason(client.ErrClosed); got != "" {
		t.Errorf("SessionReason(ErrClosed) = %q, want none", got)
	}
}
