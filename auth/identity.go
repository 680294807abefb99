package auth

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrUnauthorized is wrapped by every error Authenticator.Authenticate
// returns. The wrapping error's text says why (for the server's log only:
// a client is never told whether a user or token exists).
var ErrUnauthorized = errors.New("unauthorized")

// PortRange is an inclusive range of TCP/UDP destination ports.
type PortRange struct{ Lo, Hi uint16 }

// Contains reports whether p is in r.
func (r PortRange) Contains(p uint16) bool { return r.Lo <= p && p <= r.Hi }

// ParsePortRange parses "P" or "LO-HI" (1..65535, LO <= HI).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	if !isRange {
		hi = lo
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || l == 0 || h == 0 || l > h {
		return PortRange{}, fmt.Errorf("invalid port range %q: expected a port 1-65535 or LO-HI like 8000-8100", s)
	}
	return PortRange{Lo: uint16(l), Hi: uint16(h)}, nil
}

// String returns "P" or "LO-HI", the form ParsePortRange reads.
func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// UserPolicy is the server operator's policy for one user name (from the
// server's configuration). It narrows what that user's signed tokens allow;
// it never widens it.
type UserPolicy struct {
	// Routes, when non-nil, are intersected with the token's routes.
	Routes []netip.Prefix
	// Ports, when non-nil, are intersected with the token's ports.
	Ports []PortRange
	// Disabled rejects every token of the user.
	Disabled bool
}

// Identity is what a verified bearer token says about its holder. It is a
// value: the Authenticator that returned it keeps no reference to it.
type Identity struct {
	// Owner is the stable, non-secret ID that keys address leases and
	// appears in logs: the TokenID of the presented token.
	Owner string
	// User is the user name of a signed token; "" for a plain token from a
	// tokens file.
	User string
	// Expires is when the token stops being valid; zero means never.
	Expires time.Time
	// Routes, when non-nil, are the only destinations this identity may
	// reach (the server intersects them with its own routes). Nil means no
	// restriction beyond the server's.
	Routes []netip.Prefix
	// Ports, when non-nil, are the only TCP and UDP destination ports this
	// identity may reach; packets of other protocols (ICMP) are not
	// restricted by it. Nil means every port.
	Ports []PortRange
}

// AllowsPort reports whether the identity may reach destination port p
// (over TCP or UDP).
func (id *Identity) AllowsPort(p uint16) bool {
	if id.Ports == nil {
		return true
	}
	for _, r := range id.Ports {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

// AuthenticatorConfig is what an Authenticator accepts. Every field may be
// nil or empty; an Authenticator with nothing in it rejects every token.
type AuthenticatorConfig struct {
	// Tokens are plain bearer tokens (a tokens file). Their identities
	// have no User and no restrictions.
	Tokens *Tokens
	// PublicKeys verify signed tokens (LoadPublicKeys). Nil: every signed
	// token is rejected.
	PublicKeys []ed25519.PublicKey
	// Revoked lists revoked token IDs (plain and signed tokens) and user
	// names (signed tokens). Nil revokes nothing.
	Revoked *Revocations
	// Users is the operator's policy per user name, applied to signed
	// tokens: it narrows the token's routes and ports, or disables the
	// user. A user without an entry gets what the token says.
	Users map[string]UserPolicy
}

// Authenticator verifies bearer tokens. It is immutable after
// NewAuthenticator and safe for concurrent use; to change what it accepts
// (a reload), build a new one and swap it in.
type Authenticator struct {
	tokens  *Tokens
	keys    []ed25519.PublicKey
	revoked *Revocations
	users   map[string]UserPolicy
}

// NewAuthenticator returns an Authenticator for cfg. The Authenticator
// keeps references to cfg's values (the Tokens, the key and policy
// slices, the Users map), which the caller must not modify afterwards.
func NewAuthenticator(cfg AuthenticatorConfig) *Authenticator {
	return &Authenticator{tokens: cfg.Tokens, keys: cfg.PublicKeys, revoked: cfg.Revoked, users: cfg.Users}
}

// Authenticate verifies token (the bearer token as presented, without the
// "Bearer " scheme) at time now and returns its identity. Every error wraps
// ErrUnauthorized; its text gives the reason for the server's log (a
// client must only ever learn "unauthorized"). A nil *Authenticator
// rejects every token.
//
// A token starting with SignedTokenPrefix is a signed token: its syntax is
// checked, then its Ed25519ctx signature with the public key its key ID
// names, then the times (rejected from Expires on, and while IssuedAt is
// more than ClockSkew after now), then the revocation list (by TokenID and
// by user), then the user's policy (Disabled rejects; Routes and Ports are
// intersected with the token's, and an empty intersection rejects, since
// such a session could reach nothing). Signed tokens carry no secret the
// server holds, so nothing there needs constant time; the key lookup and
// checks depend only on the presented (public) token.
//
// Any other token is looked up among the plain Tokens in constant time
// (Tokens.Verify), then checked against the revocation list by TokenID.
//
// Identity.Owner is TokenID(token) for both kinds.
func (a *Authenticator) Authenticate(token string, now time.Time) (Identity, error) {
	if a == nil {
		return Identity{}, errUnknownToken
	}
	if IsSignedToken(token) {
		return a.authenticateSigned(token, now)
	}
	id, ok := a.tokens.Verify(token)
	if !ok {
		return Identity{}, errUnknownToken
	}
	if a.revoked.RevokedID(id) {
		return Identity{}, &reasonError{reason: "token " + id + " is revoked"}
	}
	return Identity{Owner: id}, nil
}

func (a *Authenticator) authenticateSigned(token string, now time.Time) (Identity, error) {
	var r rawSigned
	if err := r.split(token); err != nil {
		return Identity{}, &reasonError{reason: err.Error()}
	}
	c, err := decodePayload(r.payload[:r.n], false)
	if err != nil {
		return Identity{}, &reasonError{reason: err.Error()}
	}
	if err := verifySig(&r, a.keys); err != nil {
		return Identity{}, err
	}
	if !c.Expires.IsZero() && !now.Before(c.Expires) {
		return Identity{}, &reasonError{reason: "signed token of user " + c.User + " expired at " + c.Expires.Format(time.RFC3339)}
	}
	if c.IssuedAt.Sub(now) > ClockSkew {
		return Identity{}, &reasonError{reason: "signed token of user " + c.User + " not valid until " + c.IssuedAt.Add(-ClockSkew).Format(time.RFC3339) + " (issued in the future; check the clocks)"}
	}
	owner := TokenID(token)
	if a.revoked.RevokedID(owner) {
		return Identity{}, &reasonError{reason: "signed token " + owner + " of user " + c.User + " is revoked"}
	}
	if a.revoked.RevokedUser(c.User) {
		return Identity{}, &reasonError{reason: "user " + c.User + " is revoked"}
	}
	id := Identity{Owner: owner, User: c.User, Expires: c.Expires, Routes: c.Routes, Ports: c.Ports}
	if pol, ok := a.users[c.User]; ok {
		if pol.Disabled {
			return Identity{}, &reasonError{reason: "user " + c.User + " is disabled"}
		}
		if pol.Routes != nil {
			if id.Routes = IntersectPrefixes(c.Routes, pol.Routes); len(id.Routes) == 0 {
				return Identity{}, &reasonError{reason: "user " + c.User + ": the user policy leaves the token no routes"}
			}
		}
		if pol.Ports != nil {
			if id.Ports = IntersectPorts(c.Ports, pol.Ports); len(id.Ports) == 0 {
				return Identity{}, &reasonError{reason: "user " + c.User + ": the user policy leaves the token no ports"}
			}
		}
	}
	return id, nil
}

var errUnknownToken = &detailError{msg: "unknown token", kind: ErrUnauthorized}

// reasonError is an authentication failure with a reason built from the
// token (which is public to whoever presents it). It wraps ErrUnauthorized.
type reasonError struct{ reason string }

func (e *reasonError) Error() string { return e.reason }
func (e *reasonError) Unwrap() error { return ErrUnauthorized }
