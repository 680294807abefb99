package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall/js"
	"time"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/web/client"
)

// Limits of the bridge.
const (
	// dataWindow is how many bytes of one response body or dial the
	// worker posts to the page before the page acknowledges them (its
	// ReadableStream consumed them): the page's memory per transfer.
	dataWindow = 2 << 20
	// readChunk is the largest chunk posted to the page.
	readChunk = 256 << 10
	// dialTimeout bounds a dial (the server has its own, shorter one).
	dialTimeout = 30 * time.Second
	// defaultConnectTimeout bounds opening the session.
	defaultConnectTimeout = 10 * time.Second
	// statusEvery is how often the status is posted.
	statusEvery = time.Second
)

// bridge serves the page's requests. onMessage runs on the JS event loop
// and never blocks: it copies what it needs out of the message and hands
// the work to goroutines.
type bridge struct {
	t        *transport
	post     js.Value // self.roamPost
	uint8Arr js.Value
	log      *slog.Logger
	level    *slog.LevelVar

	mu     sync.Mutex
	client *client.Client // guarded by mu; nil when not connected
	ops    map[int]*op    // guarded by mu; fetches and dials in progress
	// connGen counts connects and disconnects: a connect whose generation
	// is no longer current when its session is up (a later connect or a
	// disconnect came meanwhile) closes it instead of installing it.
	connGen    int                // guarded by mu
	connCancel context.CancelFunc // guarded by mu; cancels the connect in progress, if any
}

// op is one fetch or dial in progress.
type op struct {
	cancel context.CancelFunc
	win    window
	q      queue // dial only: sends and closes, in order
}

func newBridge(t *transport, log *slog.Logger, level *slog.LevelVar) *bridge {
	return &bridge{
		t:        t,
		post:     js.Global().Get("roamPost"),
		uint8Arr: js.Global().Get("Uint8Array"),
		log:      log,
		level:    level,
		ops:      make(map[int]*op),
	}
}

func str(v js.Value) string {
	if v.Type() != js.TypeString {
		return ""
	}
	return v.String()
}

func num(v js.Value) int {
	if v.Type() != js.TypeNumber {
		return 0
	}
	return v.Int()
}

func strs(v js.Value) []string {
	if !v.Truthy() {
		return nil
	}
	out := make([]string, v.Length())
	for i := range out {
		out[i] = str(v.Index(i))
	}
	return out
}

func bytesOf(v js.Value) []byte {
	if !v.Truthy() {
		return nil
	}
	b := make([]byte, v.Get("byteLength").Int())
	js.CopyBytesToGo(b, v)
	return b
}

// onMessage handles one message from the page (see roam.js).
func (b *bridge) onMessage(_ js.Value, args []js.Value) any {
	m := args[0]
	id := num(m.Get("id"))
	switch o := str(m.Get("op")); o {
	case "connect":
		req := connectReq{
			url:       str(m.Get("url")),
			hashes:    strs(m.Get("certHashes")),
			token:     str(m.Get("token")),
			timeout:   time.Duration(num(m.Get("timeoutMs"))) * time.Millisecond,
			rootCAs:   str(m.Get("rootCAs")),
			debug:     m.Get("debug").Truthy(),
			pingEvery: time.Duration(num(m.Get("pingMs"))) * time.Millisecond,
		}
		go b.connect(id, req)
	case "disconnect":
		go func() {
			b.disconnect()
			b.postJSON("result", id, struct{}{})
		}()
	case "stats":
		b.postStatus(id)
	case "fetch":
		hv := m.Get("headers")
		req := fetchReq{
			url:      str(m.Get("url")),
			method:   str(m.Get("method")),
			body:     bytesOf(m.Get("body")),
			redirect: str(m.Get("redirect")),
		}
		for i := 0; hv.Truthy() && i < hv.Length(); i++ {
			req.headers = append(req.headers, [2]string{str(hv.Index(i).Index(0)), str(hv.Index(i).Index(1))})
		}
		b.start(id, func(ctx context.Context, o *op) { b.fetch(ctx, id, o, req) })
	case "dial":
		host, port := str(m.Get("host")), num(m.Get("port"))
		b.start(id, func(ctx context.Context, o *op) { b.dial(ctx, id, o, host, port) })
	case "send":
		b.enqueue(id, item{kind: "send", data: bytesOf(m.Get("data")), seq: num(m.Get("seq"))})
	case "closeWrite", "close":
		b.enqueue(id, item{kind: o})
	case "abort":
		b.mu.Lock()
		if p := b.ops[id]; p != nil {
			p.cancel()
		}
		b.mu.Unlock()
	case "ack":
		b.mu.Lock()
		p := b.ops[id]
		b.mu.Unlock()
		if p != nil {
			p.win.add(num(m.Get("n")))
		}
	default:
		b.postError(id, fmt.Errorf("%w: unknown op %q", client.ErrBadInput, o))
	}
	return nil
}

// start registers op id and runs fn in a goroutine; the op ends when fn
// returns.
func (b *bridge) start(id int, fn func(context.Context, *op)) {
	ctx, cancel := context.WithCancel(context.Background())
	o := &op{cancel: cancel}
	o.win.avail = dataWindow
	o.win.ch = make(chan struct{}, 1)
	o.q.ch = make(chan struct{}, 1)
	b.mu.Lock()
	b.ops[id] = o
	b.mu.Unlock()
	go func() {
		defer func() {
			cancel()
			b.mu.Lock()
			delete(b.ops, id)
			b.mu.Unlock()
		}()
		fn(ctx, o)
	}()
}

func (b *bridge) enqueue(id int, it item) {
	b.mu.Lock()
	o := b.ops[id]
	b.mu.Unlock()
	if o != nil {
		o.q.push(it)
	}
}

func (b *bridge) current() *client.Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.client
}

// post helpers.

func (b *bridge) postJSON(op string, id int, v any) {
	j, err := json.Marshal(v)
	if err != nil {
		panic(err) // only fixed types are posted
	}
	b.post.Invoke(op, id, string(j))
}

func (b *bridge) postData(id int, p []byte) {
	u8 := b.uint8Arr.New(len(p))
	js.CopyBytesToJS(u8, p)
	b.post.Invoke("data", id, u8)
}

// errorInfo is an error as the page receives it.
type errorInfo struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Dst     string `json:"dst,omitempty"`
	// Reason is the server's SESSION_ERROR code (webproto.Code*), for
	// code "session".
	Reason string `json:"reason,omitempty"`
}

func describe(err error) errorInfo {
	info := errorInfo{Message: err.Error()}
	var te *TransportError
	var fe *flow.Error
	if errors.As(err, &te) {
		info.Code = te.Code
	} else {
		info.Code = string(client.ErrorCode(err))
	}
	if errors.As(err, &fe) {
		info.Dst = fe.Dst
	}
	info.Reason = client.SessionReason(err)
	return info
}

func (b *bridge) postError(id int, err error) {
	b.postJSON("error", id, describe(err))
}

// connect.

type connectReq struct {
	url, token, rootCAs string
	hashes              []string
	timeout, pingEvery  time.Duration
	debug               bool
}

func (r *connectReq) check() error {
	u, err := url.Parse(r.url)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%w: url %q is not an https:// URL", client.ErrBadInput, r.url)
	}
	for i, h := range r.hashes {
		if b, err := hex.DecodeString(h); err != nil || len(b) != 32 {
			return fmt.Errorf("%w: certHashes[%d] %q is not a hex SHA-256 hash", client.ErrBadInput, i, h)
		}
	}
	if r.token == "" {
		return fmt.Errorf("%w: token is empty", client.ErrBadInput)
	}
	return nil
}

func (b *bridge) connect(id int, req connectReq) {
	ctx, gen := b.newConnect()
	if req.debug {
		b.level.Set(slog.LevelDebug)
	}
	if err := req.check(); err != nil {
		b.postError(id, err)
		return
	}
	var roots *x509.CertPool
	if req.rootCAs != "" {
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM([]byte(req.rootCAs)) {
			b.postError(id, fmt.Errorf("%w: rootCAs holds no PEM certificate", client.ErrBadInput))
			return
		}
	}
	if req.timeout <= 0 {
		req.timeout = defaultConnectTimeout
	}
	sess, err := b.t.dial(ctx, req.url, req.hashes, req.timeout)
	if err != nil {
		b.log.Info("session failed", "url", req.url, "err", err)
		b.postError(id, err)
		return
	}
	c, err := client.New(ctx, sess, client.Config{Token: req.token, RootCAs: roots, PingInterval: req.pingEvery, Logger: b.log})
	if err != nil {
		b.postError(id, err)
		return
	}
	b.mu.Lock()
	current := b.connGen == gen
	if current {
		b.client = c
		b.connCancel = nil
	}
	b.mu.Unlock()
	if !current {
		// Signed out, or signed in again, while this sign-in ran.
		c.Close()
		b.postError(id, fmt.Errorf("sign-in abandoned: %w", context.Canceled))
		return
	}
	w := c.Welcome()
	b.postJSON("result", id, struct {
		Server   string   `json:"server"`
		Routes   []string `json:"routes"`
		MaxFlows int      `json:"max_flows"`
	}{w.Server, w.Routes, w.MaxFlows})
	go b.watch(c)
}

// watch posts the status of c every statusEvery, and "closed" when its
// session ends.
func (b *bridge) watch(c *client.Client) {
	b.log.Debug("status poster started")
	defer b.log.Debug("status poster stopped")
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	first := time.NewTimer(100 * time.Millisecond) // the first PONG is quick
	defer first.Stop()
	for {
		select {
		case <-c.Done():
			b.mu.Lock()
			if b.client == c {
				b.client = nil
			}
			b.mu.Unlock()
			b.postJSON("closed", 0, describe(c.Err()))
			return
		case <-first.C:
		case <-t.C:
		}
		b.postStatus(0)
	}
}

func (b *bridge) postStatus(id int) {
	type status struct {
		State string  `json:"state"`
		RTT   float64 `json:"rtt_ms"`
		Up    uint64  `json:"up"`
		Down  uint64  `json:"down"`
		Flows int     `json:"flows"`
	}
	c := b.current()
	if c == nil {
		b.postJSON("status", id, status{State: "disconnected"})
		return
	}
	st := c.Stats()
	b.postJSON("status", id, status{"connected", float64(st.RTT.Microseconds()) / 1000, st.Up, st.Down, st.Flows})
}

// disconnect closes the session, if any, and abandons a connect in
// progress.
func (b *bridge) disconnect() {
	b.mu.Lock()
	b.connGen++
	if b.connCancel != nil {
		b.connCancel()
		b.connCancel = nil
	}
	c := b.client
	b.client = nil
	b.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// newConnect disconnects (see disconnect) and starts a connect: it returns
// the context that a later connect or disconnect cancels, and the
// connect's generation.
func (b *bridge) newConnect() (context.Context, int) {
	b.disconnect()
	ctx, cancel := context.WithCancel(context.Background())
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.connCancel != nil { // another connect started between the two locks
		b.connCancel()
	}
	b.connGen++
	b.connCancel = cancel
	return ctx, b.connGen
}

// fetch.

type fetchReq struct {
	url, method, redirect string
	headers               [][2]string
	body                  []byte
}

func (b *bridge) fetch(ctx context.Context, id int, o *op, req fetchReq) {
	c := b.current()
	if c == nil {
		b.postError(id, fmt.Errorf("%w: not connected", client.ErrSessionEnded))
		return
	}
	u, err := url.Parse(req.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		b.postError(id, fmt.Errorf("%w: url %q is not an http:// or https:// URL", client.ErrBadInput, req.url))
		return
	}
	if req.method == "" {
		req.method = http.MethodGet
	}
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hreq, err := http.NewRequestWithContext(ctx, req.method, req.url, body)
	if err != nil {
		b.postError(id, fmt.Errorf("%w: %v", client.ErrBadInput, err))
		return
	}
	for _, h := range req.headers {
		if strings.EqualFold(h[0], "host") {
			hreq.Host = h[1]
			continue
		}
		hreq.Header.Add(h[0], h[1])
	}
	hc := *c.HTTPClient()
	switch req.redirect {
	case "manual":
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	case "error":
		hc.CheckRedirect = func(r *http.Request, _ []*http.Request) error {
			return fmt.Errorf("%w: redirected to %s, and redirect is \"error\"", client.ErrBadInput, r.URL)
		}
	}
	resp, err := hc.Do(hreq)
	if err != nil {
		b.postError(id, ended(c, err))
		return
	}
	defer resp.Body.Close()
	type head struct {
		Status     int         `json:"status"`
		StatusText string      `json:"statusText"`
		Headers    [][2]string `json:"headers"`
		URL        string      `json:"url"`
		Redirected bool        `json:"redirected"`
	}
	h := head{
		Status:     resp.StatusCode,
		StatusText: strings.TrimSpace(strings.TrimPrefix(resp.Status, strconv.Itoa(resp.StatusCode))),
		URL:        resp.Request.URL.String(),
		Redirected: resp.Request.URL.String() != u.String(),
		Headers:    [][2]string{},
	}
	for k, vs := range resp.Header {
		for _, v := range vs {
			h.Headers = append(h.Headers, [2]string{k, v})
		}
	}
	b.postJSON("head", id, h)
	b.pump(ctx, id, o, c, resp.Body)
}

// ended returns err, or, if c's session has ended, an error that wraps
// why it ended (and has err only as text), so that the page words it as
// the session's end (shutdown, signed out, lost), as its status line does.
func ended(c *client.Client, err error) error {
	if cause := c.Err(); cause != nil {
		return fmt.Errorf("session ended: %w; %v", cause, err)
	}
	return err
}

// pump posts what r yields to the page, within the op's window, then "end"
// or "error" (returning the error). It returns quietly once ctx is
// cancelled.
func (b *bridge) pump(ctx context.Context, id int, o *op, c *client.Client, r io.Reader) error {
	buf := make([]byte, readChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if o.win.take(ctx, n) != nil {
				return nil
			}
			b.postData(id, buf[:n])
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == io.EOF {
			b.post.Invoke("end", id, "")
			return nil
		}
		if err != nil {
			b.postError(id, ended(c, err))
			return err
		}
	}
}

// dial.

func (b *bridge) dial(ctx context.Context, id int, o *op, host string, port int) {
	c := b.current()
	if c == nil {
		b.postError(id, fmt.Errorf("%w: not connected", client.ErrSessionEnded))
		return
	}
	if port < 1 || port > 65535 {
		b.postError(id, fmt.Errorf("%w: port %d is not 1-65535", client.ErrBadInput, port))
		return
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	conn, err := c.Dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		b.postError(id, ended(c, err))
		return
	}
	defer conn.Close()
	b.postJSON("result", id, struct {
		Remote string `json:"remote"`
	}{addr})
	go b.writeLoop(ctx, id, o, c, conn)
	if b.pump(ctx, id, o, c, conn) != nil {
		return
	}
	<-ctx.Done() // the page's close (or a write error) ends the op
}

// writeLoop writes what the page sends to conn, in order; "close" ends the
// op.
func (b *bridge) writeLoop(ctx context.Context, id int, o *op, c *client.Client, conn net.Conn) {
	for {
		it, ok := o.q.pop(ctx)
		if !ok {
			return
		}
		switch it.kind {
		case "send":
			if _, err := conn.Write(it.data); err != nil {
				b.postError(id, ended(c, err))
				o.cancel()
				return
			}
			b.postJSON("sent", id, struct {
				Seq int `json:"seq"`
			}{it.seq})
		case "closeWrite":
			if cw, ok := conn.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		case "close":
			conn.Close()
			o.cancel()
			return
		}
	}
}

// window is the credit for data toward the page.
type window struct {
	mu    sync.Mutex
	avail int           // guarded by mu
	ch    chan struct{} // signalled by add
}

func (w *window) add(n int) {
	w.mu.Lock()
	w.avail += n
	w.mu.Unlock()
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// take waits for credit and takes n (the credit may go negative).
func (w *window) take(ctx context.Context, n int) error {
	for {
		w.mu.Lock()
		if w.avail > 0 {
			w.avail -= n
			w.mu.Unlock()
			return nil
		}
		w.mu.Unlock()
		select {
		case <-w.ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// item is one thing the page asked a dial to do.
type item struct {
	kind string // "send", "closeWrite", "close"
	data []byte
	seq  int
}

// queue is an unbounded FIFO of items (the page awaits each send's "sent").
type queue struct {
	mu    sync.Mutex
	items []item // guarded by mu
	ch    chan struct{}
}

func (q *queue) push(it item) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	select {
	case q.ch <- struct{}{}:
	default:
	}
}

func (q *queue) pop(ctx context.Context) (item, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			it := q.items[0]
			q.items = q.items[1:]
			q.mu.Unlock()
			return it, true
		}
		q.mu.Unlock()
		select {
		case <-q.ch:
		case <-ctx.Done():
			return item{}, false
		}
	}
}
