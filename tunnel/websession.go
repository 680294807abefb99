package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/webtransport-go"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/webproto"
)

// Browser sessions: WebTransport at webproto.Path, carrying the protocol of
// package webproto. Per session:
//
//	handleWebTransport   origin check, handshake, Upgrade; then runs the session inline
//	  acceptLoop         (inline) accepts the client's bidirectional streams
//	  one goroutine per stream: reads its first message
//	    HELLO      → the control stream: verify the token, WELCOME, then PING/PONG
//	    FLOW_OPEN  → a flow: wait for the WELCOME, then serveFlow (as native CONNECT)
//	  helloTimer         SESSION_ERROR timeout if no valid HELLO within webHelloTimeout
//
// The control stream is the stream whose first message is HELLO rather
// than the first one accepted: webtransport-go may hand streams over in a
// different order than the client opened them, and a stream's first
// message says what it is. A second HELLO is a protocol error. Every
// goroutine ends with the session; handleWebTransport returns only when
// all have. A stopping server ends every live session with SESSION_ERROR
// shutdown (closeWebSessions) before it closes the QUIC connections.
// WebTransport datagrams are not used: http3 queues them per session and
// drops them once its queue is full.

// Timeouts of a browser session.
const (
	// webHelloTimeout bounds the wait for a valid HELLO after the session
	// is established, and for the first message of any stream.
	webHelloTimeout = 10 * time.Second
	// webErrorLinger is how long the server waits, after SESSION_ERROR,
	// for the client to close the session before it closes it itself
	// (closing at once could reset the stream before the message is out).
	webErrorLinger = 2 * time.Second
	// webWriteTimeout bounds a write on the control stream.
	webWriteTimeout = 5 * time.Second
	// webShutdownWait bounds how long a stopping server spends ending its
	// browser sessions (SESSION_ERROR shutdown, then the session close)
	// before it closes the QUIC connections; webShutdownLinger is the
	// webErrorLinger of those sessions, shorter so that their close comes
	// within webShutdownWait.
	webShutdownWait   = time.Second
	webShutdownLinger = 500 * time.Millisecond
)

// Session close codes (WebTransport CLOSE_WEBTRANSPORT_SESSION error codes;
// the browser sees them as WebTransportCloseInfo.closeCode, with reason
// "<webproto code>: <message>"). The SESSION_ERROR message on the control
// stream, when there is one, says the same.
const (
	webCloseNormal       webtransport.SessionErrorCode = 0
	webCloseUnauthorized webtransport.SessionErrorCode = 1
	webCloseProtocol     webtransport.SessionErrorCode = 2
	webCloseTimeout      webtransport.SessionErrorCode = 3
	webCloseShutdown     webtransport.SessionErrorCode = 4
)

func webCloseCode(code string) webtransport.SessionErrorCode {
	switch code {
	case webproto.CodeUnauthorized:
		return webCloseUnauthorized
	case webproto.CodeProtocol:
		return webCloseProtocol
	case webproto.CodeTimeout:
		return webCloseTimeout
	case webproto.CodeShutdown:
		return webCloseShutdown
	}
	return webCloseProtocol
}

// errWebSessionEnded is the cause of a session's context when the session
// has ended (closed by either end) without fail.
var errWebSessionEnded = errors.New("the browser session ended")

// wtFlowResetCode is the WebTransport stream error code a flow stream is
// reset with when either end of the flow failed.
const wtFlowResetCode webtransport.StreamErrorCode = 0

// handleWebTransport serves a browser's WebTransport session request.
func (s *Server) handleWebTransport(w http.ResponseWriter, r *http.Request) {
	if s.cfg.DisableWeb {
		http.Error(w, "this server has no browser client", http.StatusNotFound)
		return
	}
	if r.URL.Path != webproto.Path {
		s.rejectWeb(r, "wrong path: the WebTransport endpoint is "+webproto.Path)
		http.NotFound(w, r)
		return
	}
	if err := s.checkOrigin(r); err != nil {
		s.rejectWeb(r, err.Error())
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	if s.limiter.blocked(r.RemoteAddr) {
		// Its source failed to authenticate too often: no session, so no
		// HELLO to verify.
		s.stats.AuthRateLimited.Add(1)
		w.Header().Set("Retry-After", strconv.Itoa(int(authLimitWindow/time.Second)))
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	cs := s.afterHandshake(w, r)
	if cs == nil {
		return
	}
	sess, err := s.wt.Upgrade(w, r)
	if err != nil {
		s.rejectWeb(r, "WebTransport handshake: "+err.Error())
		w.WriteHeader(http.StatusBadRequest) // a no-op if Upgrade answered already
		return
	}
	ws := &webSession{
		srv:    s,
		cs:     cs,
		sess:   sess,
		remote: r.RemoteAddr,
		origin: r.Header.Get("Origin"),
		authed: make(chan struct{}),
		failed: make(chan struct{}),
	}
	ws.run()
}

// addWebSession registers a live browser session so that a stopping
// server can end it with SESSION_ERROR shutdown; false means the server is
// stopping already.
func (s *Server) addWebSession(ws *webSession) bool {
	s.webMu.Lock()
	defer s.webMu.Unlock()
	if s.webClosing {
		return false
	}
	if s.webSessions == nil {
		s.webSessions = make(map[*webSession]struct{})
	}
	s.webSessions[ws] = struct{}{}
	return true
}

func (s *Server) removeWebSession(ws *webSession) {
	s.webMu.Lock()
	delete(s.webSessions, ws)
	s.webMu.Unlock()
}

// closeWebSessions ends every live browser session as a server shutdown
// (SESSION_ERROR shutdown on the control stream, then the session close
// with webCloseShutdown) and refuses new ones. It returns when all have
// closed or after wait, whichever is first; Serve closes the QUIC
// connections after it, which ends any session still lingering.
func (s *Server) closeWebSessions(wait time.Duration) {
	s.webMu.Lock()
	s.webClosing = true
	live := make([]*webSession, 0, len(s.webSessions))
	for ws := range s.webSessions {
		live = append(live, ws)
	}
	s.webMu.Unlock()
	if len(live) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, ws := range live {
		wg.Go(func() { ws.fail(webproto.CodeShutdown, "the server is shutting down") })
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// webSession is one browser session.
type webSession struct {
	srv    *Server
	cs     *connState
	sess   *webtransport.Session
	remote string
	origin string
	ctx    context.Context         // the session's: ends with it, or when fail starts
	cancel context.CancelCauseFunc // ends ctx

	authed chan struct{} // closed once the HELLO is verified
	owner  string        // the token's ID; written (by admit) before authed is closed
	token  string        // the HELLO's token; written (by admit) before authed is closed

	// pol is the session's identity and what its flows may reach, set
	// when the HELLO is verified and replaced by Reload. authSt (the
	// authState pol was made under), admitted (pol is set: Reload
	// re-authenticates the session) and since are guarded by srv.webMu.
	pol      atomic.Pointer[policy]
	authSt   *authState
	admitted bool
	since    time.Time
	expiry   *expiryTimer

	failed   chan struct{} // closed when fail starts ending the session
	failOnce sync.Once

	mu   sync.Mutex
	ctrl *webtransport.Stream // the control stream once its HELLO was read; guarded by mu
	wmu  sync.Mutex           // serializes writes on ctrl
}

// run serves the session until it ends and all its goroutines are done.
func (ws *webSession) run() {
	s := ws.srv
	// Not derived from the session's context, whose cause is always
	// context.Canceled: flows log why they ended.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stop := context.AfterFunc(ws.sess.Context(), func() { cancel(errWebSessionEnded) })
	defer stop()
	ws.ctx, ws.cancel = ctx, cancel
	ws.expiry = newExpiryTimer(func() {
		s.stats.SessionsExpired.Add(1)
		s.log.Info("browser session expired", "client", ws.owner, "remote", ws.remote)
		ws.fail(webproto.CodeUnauthorized, "the token expired")
	})
	defer ws.expiry.stop()
	if !s.addWebSession(ws) {
		ws.sess.CloseWithError(webCloseShutdown, webproto.CodeShutdown+": the server is shutting down")
		return
	}
	defer s.removeWebSession(ws)
	s.log.Debug("browser session opened", "remote", ws.remote, "origin", ws.origin)
	helloTimer := time.AfterFunc(s.helloTimeout, func() {
		select {
		case <-ws.authed:
		default:
			ws.fail(webproto.CodeTimeout, fmt.Sprintf("no valid HELLO within %v", s.helloTimeout))
		}
	})
	defer helloTimer.Stop()

	var wg sync.WaitGroup
	var err error
	for {
		var str *webtransport.Stream
		// Not ctx: fail cancels it before it has told the client why.
		if str, err = ws.sess.AcceptStream(ws.sess.Context()); err != nil {
			break
		}
		wg.Go(func() { ws.handleStream(str) })
	}
	// The session is over (closed by either end, or the server stops):
	// make sure it is closed, then wait for the streams' goroutines.
	ws.sess.CloseWithError(webCloseNormal, "")
	cancel(errWebSessionEnded)
	helloTimer.Stop()
	wg.Wait()
	s.log.Info("browser session ended", "client", ws.ownerIfAuthed(), "remote", ws.remote, "cause", wtSessionErr(err))
}

func (ws *webSession) ownerIfAuthed() string {
	select {
	case <-ws.authed:
		return ws.owner
	default:
		return ""
	}
}

// handleStream reads a client stream's first message and serves it as
// the control stream or a flow.
func (ws *webSession) handleStream(str *webtransport.Stream) {
	str.SetReadDeadline(time.Now().Add(ws.srv.helloTimeout))
	typ, v, err := webproto.ReadMessage(str, webproto.MaxTokenLen)
	str.SetReadDeadline(time.Time{})
	if err != nil {
		abortWT(str)
		if errors.Is(err, webproto.ErrMalformed) {
			ws.fail(webproto.CodeProtocol, err.Error())
		}
		return
	}
	switch typ {
	case webproto.TypeHello:
		ws.control(str, v)
	case webproto.TypeFlowOpen:
		ws.flow(str, v)
	default:
		abortWT(str)
		ws.fail(webproto.CodeProtocol, fmt.Sprintf("a stream starts with %v; want HELLO or FLOW_OPEN", typ))
	}
}

// control serves the control stream: it verifies the HELLO's token,
// answers WELCOME, then echoes PINGs until the stream or session ends.
func (ws *webSession) control(str *webtransport.Stream, token []byte) {
	s := ws.srv
	ws.mu.Lock()
	first := ws.ctrl == nil
	if first {
		ws.ctrl = str
	}
	ws.mu.Unlock()
	if !first {
		abortWT(str)
		ws.fail(webproto.CodeProtocol, "a second HELLO")
		return
	}
	st := s.auth.Load()
	id, err := verify(st, string(token), time.Now())
	if ws.ctx.Err() != nil {
		return // the session is ending (fail, HELLO timeout): no WELCOME
	}
	if err == nil {
		err = ws.admit(string(token), id, st)
	}
	if err != nil {
		s.stats.WebRejected.Add(1)
		s.authFailed(ws.remote, err, "origin", ws.origin, "protocol", "webtransport")
		ws.fail(webproto.CodeUnauthorized, "the token is not valid")
		return
	}
	pol := ws.pol.Load()
	welcome := webproto.Welcome{MaxFlows: s.cfg.MaxFlows, Server: s.cfg.Version}
	for _, p := range pol.routes.prefixes() {
		welcome.Routes = append(welcome.Routes, p.String())
	}
	if err := ws.writeCtrl(webproto.TypeWelcome, webproto.MarshalJSONValue(&welcome)); err != nil {
		return // the session is going away
	}
	close(ws.authed)
	s.stats.WebSessions.Add(1)
	s.log.Info("browser session", "client", ws.owner, "user", pol.id.User, "remote", ws.remote, "origin", ws.origin)

	for {
		typ, v, err := webproto.ReadMessage(str, webproto.MaxPingLen)
		if err != nil {
			select {
			case <-ws.failed:
				return // fail closes the session with its own code
			default:
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			// The client closed its control stream: it is done.
			ws.sess.CloseWithError(webCloseNormal, "")
			return
		case errors.Is(err, webproto.ErrMalformed):
			ws.fail(webproto.CodeProtocol, err.Error())
			return
		case err != nil:
			// The session ended or is ending (a client closing its session
			// may reset the stream before its close arrives): nothing to add.
			return
		case typ == webproto.TypePing:
			if ws.writeCtrl(webproto.TypePong, v) != nil {
				return
			}
		default:
			ws.fail(webproto.CodeProtocol, fmt.Sprintf("unexpected %v on the control stream", typ))
			return
		}
	}
}

// admit installs the verified HELLO's identity and makes the session
// visible to Reload; if a reload swapped the Authenticator since st, the
// token is verified again under the new one (Reload did not see this
// session yet). An error means the token is not accepted.
func (ws *webSession) admit(token string, id auth.Identity, st *authState) error {
	s := ws.srv
	s.webMu.Lock()
	defer s.webMu.Unlock()
	if cur := s.auth.Load(); cur != st {
		var err error
		if id, err = verify(cur, token, time.Now()); err != nil {
			return err
		}
		st = cur
	}
	pol := newPolicy(id, st.routes, nil)
	if len(pol.routes) == 0 {
		return errors.New("the token allows none of the server's routes")
	}
	ws.pol.Store(pol)
	ws.owner, ws.token = id.Owner, token
	ws.authSt = st
	ws.admitted = true
	ws.since = time.Now()
	ws.expiry.set(id.Expires)
	return nil
}

// reauth verifies the session's token again under st (a reload, with
// srv.webMu held) and installs its new policy, or says why the session
// must end.
func (ws *webSession) reauthLocked(st *authState, now time.Time) error {
	id, err := verify(st, ws.token, now)
	if err != nil {
		return err
	}
	pol := newPolicy(id, st.routes, nil)
	if len(pol.routes) == 0 {
		return errors.New("the token allows none of the server's routes any more")
	}
	ws.pol.Store(pol)
	ws.authSt = st
	ws.expiry.set(id.Expires)
	return nil
}

// writeCtrl writes one message on the control stream.
func (ws *webSession) writeCtrl(t webproto.Type, v []byte) error {
	ws.mu.Lock()
	str := ws.ctrl
	ws.mu.Unlock()
	if str == nil {
		return errors.New("no control stream")
	}
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	str.SetWriteDeadline(time.Now().Add(webWriteTimeout))
	defer str.SetWriteDeadline(time.Time{})
	return webproto.WriteMessage(str, t, v)
}

// fail ends the session for a reason the client should know: SESSION_ERROR
// on the control stream (if there is one yet), then, once the client has
// closed the session or webErrorLinger (webShutdownLinger for a shutdown)
// has passed, a session close with the matching code. It cancels ws.ctx at
// once: flows waiting for the WELCOME are reset, dials and open flows
// end. Only the first call counts; every call returns when the session is
// closed.
func (ws *webSession) fail(code, msg string) {
	ws.failOnce.Do(func() {
		close(ws.failed)
		ws.cancel(fmt.Errorf("browser session: %s: %s", code, msg))
		ws.srv.log.Debug("ending browser session", "remote", ws.remote, "code", code, "msg", msg)
		if ws.writeCtrl(webproto.TypeSessionError, webproto.MarshalJSONValue(&webproto.SessionError{Code: code, Message: msg})) == nil {
			ws.mu.Lock()
			ws.ctrl.Close()
			ws.mu.Unlock()
			linger := webErrorLinger
			if code == webproto.CodeShutdown {
				linger = webShutdownLinger
			}
			t := time.NewTimer(linger)
			select {
			case <-ws.sess.Context().Done():
			case <-t.C:
			}
			t.Stop()
		}
		ws.sess.CloseWithError(webCloseCode(code), code+": "+msg)
	})
}

// flow serves a flow stream whose FLOW_OPEN carried authority.
func (ws *webSession) flow(str *webtransport.Stream, authority []byte) {
	s := ws.srv
	// Nothing is answered before the WELCOME. fail cancels ws.ctx, so the
	// flows of a failed session end here (or, if the WELCOME came too, at
	// once in serveFlow: nothing is dialed with a done ctx).
	select {
	case <-ws.authed:
	case <-ws.ctx.Done():
		abortWT(str)
		return
	}
	rep := wtFlowReply{str: str}
	if len(authority) > webproto.MaxAuthorityLen {
		s.refuseFlow(rep, ws.owner, "webtransport", "", &flow.Error{Kind: flow.Other,
			Err: fmt.Errorf("%w: FLOW_OPEN authority of %d bytes (at most %d)", flow.ErrBadAuthority, len(authority), webproto.MaxAuthorityLen)}, true)
		return
	}
	s.serveFlow(ws.ctx, ws.ctx, ws.cs.flowLimiter(s.cfg.MaxFlows), ws.pol.Load(), "webtransport", string(authority), rep)
}

// wtFlowReply answers a browser flow: FLOW_OK, or FLOW_ERROR with a
// Proxy-Status field value and the end of the stream.
type wtFlowReply struct{ str *webtransport.Stream }

func (w wtFlowReply) refuse(fe *flow.Error, _ bool) {
	w.str.SetWriteDeadline(time.Now().Add(webWriteTimeout))
	if webproto.WriteMessage(w.str, webproto.TypeFlowError, []byte(fe.ProxyStatusField(flow.ProxyStatusName))) != nil {
		abortWT(w.str)
		return
	}
	w.str.Close()                     // FIN after FLOW_ERROR
	w.str.CancelRead(wtFlowResetCode) // nothing more is read from it
}

func (w wtFlowReply) accept() (flow.Stream, error) {
	if err := webproto.WriteMessage(w.str, webproto.TypeFlowOK, nil); err != nil {
		abortWT(w.str)
		return nil, err
	}
	return &wtStream{s: w.str}, nil
}

// abortWT resets both directions of a stream.
func abortWT(str *webtransport.Stream) {
	str.CancelWrite(wtFlowResetCode)
	str.CancelRead(wtFlowResetCode)
}

// wtStream adapts a WebTransport stream to flow.Stream: Close is the FIN,
// the two cancels are the reset, and a reset from the peer is reported as
// flow.ErrReset.
type wtStream struct {
	s    *webtransport.Stream
	once sync.Once
}

func (w *wtStream) Read(p []byte) (int, error) {
	n, err := w.s.Read(p)
	return n, wtResetErr(err)
}

func (w *wtStream) Write(p []byte) (int, error) {
	n, err := w.s.Write(p)
	return n, wtResetErr(err)
}

func (w *wtStream) CloseWrite() error { return w.s.Close() }

func (w *wtStream) Abort() { w.once.Do(func() { abortWT(w.s) }) }

// wtResetErr marks the peer's RESET_STREAM / STOP_SENDING as flow.ErrReset
// (whether its code is in the WebTransport range or not) and names a
// session close (see wtSessionErr).
func wtResetErr(err error) error {
	var se *webtransport.StreamError
	var qe *quic.StreamError
	if errors.As(err, &se) && se.Remote || errors.As(err, &qe) && qe.Remote {
		return fmt.Errorf("%w: %w", flow.ErrReset, err)
	}
	return wtSessionErr(err)
}

// wtSessionErr gives a *webtransport.SessionError (what a stream of a
// closed session returns) a message of its own: its Error is the close
// reason alone, empty when the browser closes without one.
func wtSessionErr(err error) error {
	var se *webtransport.SessionError
	if err == nil || !errors.As(err, &se) {
		return err
	}
	return wtSessionClosedError{se}
}

type wtSessionClosedError struct{ err *webtransport.SessionError }

func (e wtSessionClosedError) Error() string {
	by := "by the server"
	if e.err.Remote {
		by = "by the client"
	}
	msg := fmt.Sprintf("WebTransport session closed %s (code %d)", by, e.err.ErrorCode)
	if e.err.Message != "" {
		msg += ": " + e.err.Message
	}
	return msg
}

func (e wtSessionClosedError) Unwrap() error { return e.err }
