package auth

import (
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
}

// Authenticator verifies bearer tokens. It is immutable after
// NewAuthenticator and safe for concurrent use; to change what it accepts
// (a reload), build a new one and swap it in.
type Authenticator struct {
	tokens *Tokens
}

// NewAuthenticator returns an Authenticator for cfg. The Authenticator
// keeps references to cfg's values, which are immutable.
func NewAuthenticator(cfg AuthenticatorConfig) *Authenticator {
	return &Authenticator{tokens: cfg.Tokens}
}

// Authenticate verifies token (the bearer token as presented, without the
// "Bearer " scheme) at time now and returns its identity. Every error wraps
// ErrUnauthorized. A nil *Authenticator rejects every token.
func (a *Authenticator) Authenticate(token string, now time.Time) (Identity, error) {
	if a == nil {
		return Identity{}, errUnknownToken
	}
	if id, ok := a.tokens.Verify(token); ok {
		return Identity{Owner: id}, nil
	}
	return Identity{}, errUnknownToken
}

var errUnknownToken = &detailError{msg: "unknown token", kind: ErrUnauthorized}
