package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/capsule"
	"github.com/roamvpn/roam/tunnel/flow"
)

// Authenticator verifies bearer tokens for the server. *auth.Authenticator
// implements it; tests inject their own. Authenticate must be safe for
// concurrent use, must not retain the token, and must return an error
// (wrapping auth.ErrUnauthorized) for every token it does not accept; the
// error's text is logged, never sent to the client.
type Authenticator interface {
	Authenticate(token string, now time.Time) (auth.Identity, error)
}

// authState is what Reload swaps as a whole: the Authenticator and the
// server's routes. Sessions remember the authState they were
// authenticated under, so a session set up during a reload is
// re-authenticated under the new one (see Server.register).
type authState struct {
	auth   Authenticator
	routes routeSet // the server's routes
}

// errTokenExpired ends a session or flow whose identity expired.
var errTokenExpired = errors.New("the token expired")

// policy is what one identity may reach through one session or flow. It
// is immutable; a reload makes a new one and swaps it in (sessions hold it
// in an atomic.Pointer and load it once per packet).
type policy struct {
	id auth.Identity
	// base is the server's routes ∩ the request's scope: a packet outside
	// it is counted in DropDst, as before per-identity policy existed.
	base routeSet
	// routes is base ∩ id.Routes (base when id.Routes is nil): what this
	// identity may reach, and what the ROUTE_ADVERTISEMENT says.
	routes routeSet
}

// newPolicy intersects the server's routes, the request's scope (nil: no
// scope, as for flows) and the identity's routes.
func newPolicy(id auth.Identity, server, scope routeSet) *policy {
	base := server
	if scope != nil {
		base = intersect(server, scope)
	}
	routes := base
	if id.Routes != nil {
		routes = intersect(base, routesFromPrefixes(id.Routes))
	}
	return &policy{id: id, base: base, routes: routes}
}

// checkPacket is the policy's verdict on a packet from the client: p was
// decoded from pkt. It does not allocate.
func (pol *policy) checkPacket(p *datagram.Packet, pkt []byte) datagram.DropReason {
	if !pol.routes.allows(p.Dst, p.Proto) {
		if pol.base.allows(p.Dst, p.Proto) {
			return datagram.DropReasonPolicy // the identity's routes refuse it
		}
		return datagram.DropReasonDst
	}
	if pol.id.Ports != nil && (p.Proto == 6 || p.Proto == 17) {
		// A non-initial fragment has no ports to check: refused too, so a
		// port restriction cannot be passed by fragmenting.
		_, dport, ok := p.Ports(pkt)
		if !ok || !pol.id.AllowsPort(dport) {
			return datagram.DropReasonPolicy
		}
	}
	return datagram.NoDrop
}

// allowFlow is the destination policy of a flow (a TCP connection the
// server dials): flow.DenySpecial, the server's routes, the identity's
// routes and ports. The error says which (it reaches the client as the
// Proxy-Status details of a destination_ip_prohibited refusal).
func (pol *policy) allowFlow(dst netip.AddrPort) error {
	if err := flow.DenySpecial(dst.Addr()); err != nil {
		return err
	}
	if !pol.base.allows(dst.Addr(), 6) {
		return fmt.Errorf("destination %v is outside the server's routes", dst.Addr())
	}
	if !pol.routes.allows(dst.Addr(), 6) {
		return fmt.Errorf("destination %v is outside the routes this token allows", dst.Addr())
	}
	if !pol.id.AllowsPort(dst.Port()) {
		return fmt.Errorf("destination port %d is not allowed for this token", dst.Port())
	}
	return nil
}

// sameRoutes reports whether two policies advertise the same routes.
func sameRoutes(a, b *policy) bool {
	return slices.EqualFunc(a.routes.ranges(), b.routes.ranges(), func(x, y capsule.IPRange) bool { return x == y })
}

// expiryTimer ends something (a session, a flow) when its identity
// expires; Reset follows a new identity's expiry after a reload.
type expiryTimer struct {
	mu      sync.Mutex
	t       *time.Timer // guarded by mu; nil while the identity never expires
	f       func()
	stopped bool // guarded by mu
}

func newExpiryTimer(f func()) *expiryTimer { return &expiryTimer{f: f} }

// set arms the timer for exp (zero: never), replacing the previous
// expiry. After stop it does nothing.
func (e *expiryTimer) set(exp time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return
	}
	if e.t != nil {
		e.t.Stop()
		e.t = nil
	}
	if exp.IsZero() {
		return
	}
	e.t = time.AfterFunc(time.Until(exp), e.f)
}

// stop disarms the timer.
func (e *expiryTimer) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopped = true
	if e.t != nil {
		e.t.Stop()
	}
}
