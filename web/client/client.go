// Package client is the browser client's tunnel logic, independent of the
// browser: it speaks the webproto protocol over a [Session] (any source of
// bidirectional streams) and offers TCP flows as net.Conn values and an
// *http.Client that uses them. The js/wasm program in web/wasm supplies a
// Session over the browser's WebTransport object; tests supply one over
// in-memory pipes, and a native program could supply webtransport-go's.
//
//	Client ──control stream── HELLO(token) → WELCOME | SESSION_ERROR, PING ⇄ PONG
//	       ──flow stream───── FLOW_OPEN(host:port) → FLOW_OK, TCP bytes | FLOW_ERROR(Proxy-Status)
//
// It uses the standard library, tunnel/webproto and tunnel/flow only, and
// builds for every GOOS including js/wasm.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/webproto"
)

// Session is one WebTransport session to a Roam server, as a transport
// adapter provides it.
type Session interface {
	// OpenStream opens a bidirectional stream. The first stream opened is
	// the control stream, every further one a flow. It fails once the
	// session has ended. A stream's Read reports the peer's reset as an
	// error wrapping flow.ErrReset, and the end of the session as some
	// other error; a stream may also have CloseRead (stop reading, QUIC
	// STOP_SENDING) and SetReadDeadline/SetWriteDeadline methods, which
	// flow.Conn uses.
	OpenStream(ctx context.Context) (flow.Stream, error)
	// Close ends the session: every stream's blocked and later calls
	// fail. It is idempotent.
	Close() error
}

// Defaults for Config's zero values.
const (
	DefaultPingInterval     = 2 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
)

// Config configures a Client.
type Config struct {
	// Token is sent in the HELLO message. It must be 1 to
	// webproto.MaxTokenLen bytes of UTF-8.
	Token string
	// PingInterval is how often the client sends PING for its RTT figure.
	// If zero, DefaultPingInterval; if negative, no pings are sent.
	PingInterval time.Duration
	// HandshakeTimeout bounds the wait for the server's WELCOME. If zero,
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// RootCAs verifies the certificates of https:// URLs fetched through
	// the tunnel. If nil, the system's roots are used; js/wasm has none, so
	// a browser client can only fetch https:// URLs if it is given roots.
	RootCAs *x509.CertPool
	// Logger receives the client's log. If nil, it is silent.
	Logger *slog.Logger
}

// Stats are a client's counters.
type Stats struct {
	// RTT is the round-trip time of the latest PING, zero before the
	// first PONG.
	RTT time.Duration
	// Up and Down count the bytes written to and read from the session's
	// streams (control stream and message headers included).
	Up, Down uint64
	// Flows is the number of flows open.
	Flows int
}

// Client is a signed-in session: flows and HTTP requests go through it. It
// is safe for concurrent use.
type Client struct {
	sess    Session
	cfg     Config
	log     *slog.Logger
	welcome *webproto.Welcome
	start   time.Time

	ctrl   flow.Stream
	ctrlMu sync.Mutex // serializes writes to ctrl

	ctx     context.Context
	cancel  context.CancelCauseFunc
	endOnce sync.Once
	done    chan struct{} // closed by end

	up, down atomic.Uint64
	rtt      atomic.Int64 // nanoseconds
	flows    atomic.Int64

	httpClient *http.Client
	transport  *http.Transport
}

// New signs in on sess: it opens the control stream, sends HELLO with
// cfg.Token and waits for the server's answer. It returns the *Client
// after WELCOME; a *webproto.SessionError if the server refused (Code
// webproto.CodeUnauthorized for a wrong token); or another error, after
// which sess is closed. The Client owns sess: when the session ends (Close,
// the server, the network), Done is closed and Err says why.
func New(ctx context.Context, sess Session, cfg Config) (*Client, error) {
	if cfg.Token == "" {
		return nil, fmt.Errorf("client: %w: Config.Token is empty", ErrBadInput)
	}
	if len(cfg.Token) > webproto.MaxTokenLen {
		return nil, fmt.Errorf("client: %w: Config.Token is %d bytes, more than the limit of %d", ErrBadInput, len(cfg.Token), webproto.MaxTokenLen)
	}
	if !utf8.ValidString(cfg.Token) {
		return nil, fmt.Errorf("client: %w: Config.Token is not valid UTF-8", ErrBadInput)
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{sess: sess, cfg: cfg, log: log.With("component", "webclient"), start: time.Now(), done: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())

	w, err := c.handshake(ctx)
	if err != nil {
		sess.Close()
		return nil, err
	}
	c.welcome = w
	c.transport = &http.Transport{
		DialContext:           c.Dial,
		TLSClientConfig:       &tls.Config{RootCAs: cfg.RootCAs},
		TLSHandshakeTimeout:   10 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		ExpectContinueTimeout: time.Second,
		ReadBufferSize:        64 << 10,
		WriteBufferSize:       32 << 10,
	}
	jar, _ := cookiejar.New(nil) // never fails with nil options
	c.httpClient = &http.Client{Transport: c.transport, Jar: jar}
	go c.readControl()
	if cfg.PingInterval > 0 {
		go c.pingLoop()
	}
	return c, nil
}

// handshake opens the control stream and exchanges HELLO and WELCOME.
func (c *Client) handshake(ctx context.Context) (*webproto.Welcome, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.HandshakeTimeout,
		fmt.Errorf("client: no answer to HELLO within %v: %w", c.cfg.HandshakeTimeout, context.DeadlineExceeded))
	defer cancel()
	s, err := c.sess.OpenStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("client: opening the control stream: %w", err)
	}
	c.ctrl = c.count(s, false)
	stop := context.AfterFunc(ctx, c.ctrl.Abort)
	t, v, err := c.exchange(c.ctrl, webproto.TypeHello, []byte(c.cfg.Token))
	if !stop() {
		return nil, context.Cause(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("client: sign-in: %w", err)
	}
	switch t {
	case webproto.TypeWelcome:
		w, err := webproto.ParseWelcome(v)
		if err != nil {
			return nil, err
		}
		c.log.Info("signed in", "server", w.Server, "routes", w.Routes, "max_flows", w.MaxFlows)
		return w, nil
	case webproto.TypeSessionError:
		se, err := webproto.ParseSessionError(v)
		if err != nil {
			return nil, err
		}
		return nil, se
	}
	return nil, fmt.Errorf("%w: %v in answer to HELLO", webproto.ErrMalformed, t)
}

// exchange writes one message to s and reads the answer.
func (c *Client) exchange(s flow.Stream, t webproto.Type, v []byte) (webproto.Type, []byte, error) {
	if err := webproto.WriteMessage(s, t, v); err != nil {
		return 0, nil, fmt.Errorf("sending %v: %w", t, err)
	}
	rt, rv, err := webproto.ReadMessage(s, 0)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("stream closed before the answer to %v: %w", t, io.ErrUnexpectedEOF)
		}
		return 0, nil, err
	}
	return rt, rv, nil
}

// readControl reads PONG and SESSION_ERROR from the control stream until
// the session ends, then ends the client.
func (c *Client) readControl() {
	c.log.Debug("control reader started")
	defer c.log.Debug("control reader stopped")
	var cause error
	for {
		t, v, err := webproto.ReadMessage(c.ctrl, 0)
		if err != nil {
			if c.ctx.Err() != nil {
				cause = context.Cause(c.ctx)
			} else {
				cause = fmt.Errorf("client: %w: %w", ErrSessionLost, err)
			}
			break
		}
		switch t {
		case webproto.TypePong:
			if len(v) == 8 {
				sent := time.Duration(binary.BigEndian.Uint64(v))
				c.rtt.Store(int64(time.Since(c.start) - sent))
			}
		case webproto.TypeSessionError:
			se, err := webproto.ParseSessionError(v)
			if err != nil {
				cause = err
			} else {
				cause = se
			}
		default:
			c.log.Debug("ignoring control message", "type", t)
		}
		if cause != nil {
			break
		}
	}
	c.end(cause)
}

// end ends the client with cause (the first cause wins).
func (c *Client) end(cause error) {
	c.cancel(cause)
	c.endOnce.Do(func() {
		c.ctrl.Abort()
		c.sess.Close()
		c.log.Info("session ended", "cause", context.Cause(c.ctx))
		close(c.done)
	})
}

// pingLoop sends PING every PingInterval, the first one at once.
func (c *Client) pingLoop() {
	c.log.Debug("pinger started")
	defer c.log.Debug("pinger stopped")
	t := time.NewTicker(c.cfg.PingInterval)
	defer t.Stop()
	for {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(time.Since(c.start)))
		c.ctrlMu.Lock()
		err := webproto.WriteMessage(c.ctrl, webproto.TypePing, v[:])
		c.ctrlMu.Unlock()
		if err != nil {
			return // readControl sees the end too
		}
		select {
		case <-t.C:
		case <-c.ctx.Done():
			return
		}
	}
}

// Welcome returns the server's WELCOME.
func (c *Client) Welcome() *webproto.Welcome { return c.welcome }

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		RTT:   time.Duration(c.rtt.Load()),
		Up:    c.up.Load(),
		Down:  c.down.Load(),
		Flows: int(c.flows.Load()),
	}
}

// Done is closed when the session has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the session ended (nil while it runs): ErrClosed after
// Close, a *webproto.SessionError if the server said why, or an error
// wrapping ErrSessionLost and the transport's error.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return context.Cause(c.ctx)
	default:
		return nil
	}
}

// Close ends the session; open flows fail. It is idempotent.
func (c *Client) Close() error {
	c.transport.CloseIdleConnections()
	c.end(ErrClosed)
	return nil
}

// HTTPClient returns the client's HTTP client: every connection it makes is
// a flow (HTTP/1.1, and TLS for https:// with Config.RootCAs), and it keeps
// cookies for the session's life. Its Transport sets DialContext, which
// on js/wasm makes net/http use its own transport instead of the browser's
// Fetch API.
func (c *Client) HTTPClient() *http.Client { return c.httpClient }

// Dial opens a TCP flow to address ("host:port"; a host name is resolved
// by the server). network must be "tcp", "tcp4" or "tcp6". It returns a
// *flow.Conn once the server has connected; if the server could not, a
// *flow.Error whose Kind says why (Prohibited by policy, Refused,
// Timeout, Unreachable, LimitReached, Other). Cancelling ctx before then
// abandons the flow. The caller owns the returned conn and must Close it.
func (c *Client) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("client: dial %s %q: %w: network must be tcp", network, address, ErrBadInput)
	}
	if len(address) > webproto.MaxAuthorityLen {
		return nil, fmt.Errorf("client: dial: %w: address is %d bytes, more than the limit of %d", ErrBadInput, len(address), webproto.MaxAuthorityLen)
	}
	if _, port, err := flow.ParseHostPort(address); err != nil {
		return nil, fmt.Errorf("client: dial: address: %w", err)
	} else if port == 0 {
		return nil, fmt.Errorf("client: dial: %w: address %q: port 0", ErrBadInput, address)
	}
	if err := c.ctx.Err(); err != nil {
		return nil, fmt.Errorf("client: dial %s: %w: %w", address, ErrSessionEnded, context.Cause(c.ctx))
	}
	s, err := c.sess.OpenStream(ctx)
	if err != nil {
		if c.ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ErrSessionEnded, context.Cause(c.ctx))
		}
		return nil, fmt.Errorf("client: dial %s: %w", address, err)
	}
	cs := c.count(s, true)
	stop := context.AfterFunc(ctx, cs.Abort)
	t, v, err := c.exchange(cs, webproto.TypeFlowOpen, []byte(address))
	if !stop() {
		return nil, fmt.Errorf("client: dial %s: %w", address, context.Cause(ctx))
	}
	if err != nil {
		cs.Abort()
		if c.ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ErrSessionEnded, context.Cause(c.ctx))
		}
		return nil, fmt.Errorf("client: dial %s: %w", address, err)
	}
	switch t {
	case webproto.TypeFlowOK:
		return flow.NewConn(cs, flow.Addr("browser"), flow.Addr(address)), nil
	case webproto.TypeFlowError:
		cs.Abort()
		kind, ok := flow.ParseProxyStatus(string(v))
		if !ok {
			kind = flow.Other
		}
		var detail error
		if d := proxyStatusDetails(string(v)); d != "" {
			detail = errors.New("server: " + d)
		}
		return nil, &flow.Error{Kind: kind, Dst: address, Err: detail}
	}
	cs.Abort()
	return nil, fmt.Errorf("client: dial %s: %w: %v in answer to FLOW_OPEN", address, webproto.ErrMalformed, t)
}

// proxyStatusDetails returns the unescaped value of the first details
// parameter in a Proxy-Status field value, or "". It is for messages only;
// flow.ParseProxyStatus validates the field.
func proxyStatusDetails(v string) string {
	const key = `details="`
	for i := 0; i+len(key) <= len(v); i++ {
		if v[i:i+len(key)] != key || (i > 0 && v[i-1] != ';' && v[i-1] != ' ') {
			continue
		}
		var b []byte
		for j := i + len(key); j < len(v); j++ {
			switch v[j] {
			case '\\':
				if j+1 < len(v) {
					j++
					b = append(b, v[j])
				}
			case '"':
				return string(b)
			default:
				b = append(b, v[j])
			}
		}
		return ""
	}
	return ""
}
