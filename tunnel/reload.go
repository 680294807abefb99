package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/roamvpn/roam/tunnel/webproto"
)

// ReloadConfig is what Server.Reload swaps in while sessions keep running.
type ReloadConfig struct {
	// Auth replaces ServerConfig.Auth (usually an *auth.Authenticator).
	// Required.
	Auth Authenticator
	// Routes replaces ServerConfig.Routes (nil means DefaultRoutes).
	Routes []netip.Prefix
}

// Reload swaps in a new Authenticator and server routes without dropping
// sessions. It validates rc first (an invalid rc changes nothing). Then
// every live session (CONNECT-IP and browser) and native flow is
// re-authenticated with the token it presented, under the new
// Authenticator: one whose token is no longer accepted (revoked, removed,
// its user disabled) or whose routes became empty ends, with the reason
// logged; the others keep running under their identity's new policy, and a
// CONNECT-IP session whose routes changed is sent a fresh
// ROUTE_ADVERTISEMENT. Requests verified under the old Authenticator but
// not yet running are re-authenticated as they start. Reload logs one
// summary line. It is safe to call at any time, also concurrently (reloads
// are serialized) and before or after Serve.
func (s *Server) Reload(rc ReloadConfig) error {
	if isNilAuth(rc.Auth) {
		return errors.New("tunnel: ReloadConfig.Auth is required")
	}
	routes, err := checkRoutes(rc.Routes)
	if err != nil {
		return fmt.Errorf("tunnel: ReloadConfig.Routes: %w", err)
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	st := &authState{auth: rc.Auth, routes: routesFromPrefixes(routes)}
	now := time.Now()

	// Store under both locks: a session or flow registering after this
	// sees st and re-authenticates itself; one registered before is in
	// the snapshots taken here.
	s.mu.Lock()
	s.webMu.Lock()
	s.auth.Store(st)
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	flows := make([]*liveFlow, 0, len(s.flows))
	for lf := range s.flows {
		flows = append(flows, lf)
	}
	var webKept, webEnded int
	for ws := range s.webSessions {
		if !ws.admitted {
			continue // its HELLO is being verified; admit sees st
		}
		if err := ws.reauthLocked(st, now); err != nil {
			webEnded++
			s.stats.SessionsRevoked.Add(1)
			s.log.Info("ending browser session: token no longer accepted after a reload", "client", ws.owner, "remote", ws.remote, "reason", err)
			go ws.fail(webproto.CodeUnauthorized, "the token is no longer accepted")
			continue
		}
		webKept++
	}
	s.webMu.Unlock()
	s.mu.Unlock()

	var kept, ended, advertised int
	for _, sess := range sessions {
		s.mu.Lock()
		sess.authSt = st
		s.mu.Unlock()
		changed, err := sess.reauth(st, now)
		if err != nil {
			ended++
			s.stats.SessionsRevoked.Add(1)
			sess.end(fmt.Errorf("token no longer accepted after a reload: %w", err))
			continue
		}
		kept++
		if changed {
			advertised++
			go sess.advertiseRoutes()
		}
	}
	flowsEnded := 0
	for _, lf := range flows {
		if _, err := verify(st, lf.token, now); err != nil {
			flowsEnded++
			lf.cancel(fmt.Errorf("token no longer accepted after a reload: %w", err))
		}
	}
	s.log.Info("reloaded", "sessions_kept", kept, "sessions_ended", ended, "routes_updated", advertised,
		"browser_sessions_kept", webKept, "browser_sessions_ended", webEnded,
		"flows_kept", len(flows)-flowsEnded, "flows_ended", flowsEnded, "routes", routes)
	return nil
}
