package flow

import (
	"context"
	"errors"
	"net"
	"strconv"
	"syscall"
)

// ErrorKind says why a flow could not be opened, in the terms the client
// needs to choose the local outcome (see package flowstack): a TCP RST for
// Refused, Prohibited, Timeout, LimitReached and Other, an ICMP destination
// unreachable for Unreachable.
type ErrorKind uint8

// Error kinds. The zero value is Other.
const (
	// Other is any failure not listed below (RFC 9209
	// proxy_internal_error).
	Other ErrorKind = iota
	// Refused: the destination answered the connection attempt with a
	// reset (ECONNREFUSED; connection_refused).
	Refused
	// Unreachable: there is no route to the destination, or the network
	// reported it unreachable (ENETUNREACH, EHOSTUNREACH;
	// destination_ip_unroutable).
	Unreachable
	// Timeout: the destination did not answer before the dial timeout
	// (connection_timeout).
	Timeout
	// Prohibited: the server's policy does not allow the destination
	// (destination_ip_prohibited).
	Prohibited
	// LimitReached: the session has too many flows open or waiting
	// (connection_limit_reached).
	LimitReached
)

// String returns a short human-readable description of k.
func (k ErrorKind) String() string {
	switch k {
	case Other:
		return "flow failed"
	case Refused:
		return "connection refused"
	case Unreachable:
		return "destination unreachable"
	case Timeout:
		return "connection timed out"
	case Prohibited:
		return "destination prohibited by policy"
	case LimitReached:
		return "flow limit reached"
	}
	return "ErrorKind(" + strconv.Itoa(int(k)) + ")"
}

// ProxyStatus returns the RFC 9209 Proxy-Status error type (an sf-token)
// for k: connection_refused, destination_ip_unroutable,
// connection_timeout, destination_ip_prohibited, connection_limit_reached,
// and proxy_internal_error for Other and unknown kinds.
func (k ErrorKind) ProxyStatus() string {
	switch k {
	case Refused:
		return "connection_refused"
	case Unreachable:
		return "destination_ip_unroutable"
	case Timeout:
		return "connection_timeout"
	case Prohibited:
		return "destination_ip_prohibited"
	case LimitReached:
		return "connection_limit_reached"
	}
	return "proxy_internal_error"
}

// HTTPStatus returns the status code RFC 9209 recommends for k's
// Proxy-Status error type: 502 for Refused, Unreachable and Prohibited, 504
// for Timeout, 503 for LimitReached, 500 for Other.
func (k ErrorKind) HTTPStatus() int {
	switch k {
	case Refused, Unreachable, Prohibited:
		return 502 // Bad Gateway
	case Timeout:
		return 504 // Gateway Timeout
	case LimitReached:
		return 503 // Service Unavailable
	}
	return 500 // Internal Server Error
}

// KindForStatus guesses the kind of a failed flow from the HTTP status of a
// response that carries no usable Proxy-Status field: 403 → Prohibited, 429
// and 503 → LimitReached, 504 → Timeout, anything else → Other.
func KindForStatus(code int) ErrorKind {
	switch code {
	case 403: // Forbidden
		return Prohibited
	case 429, 503: // Too Many Requests, Service Unavailable
		return LimitReached
	case 504: // Gateway Timeout
		return Timeout
	}
	return Other
}

// Error is the error of a flow that could not be opened: Dialer.DialFlow
// returns it on the server, and a client's Connect func returns it to tell
// package flowstack which local outcome to produce.
type Error struct {
	// Kind classifies the failure.
	Kind ErrorKind
	// Dst is the destination as "host:port" (may be empty).
	Dst string
	// Err is the underlying error (may be nil).
	Err error
}

// Error returns "flow to <Dst>: <Kind>: <Err>", leaving out empty parts.
func (e *Error) Error() string {
	s := "flow"
	if e.Dst != "" {
		s += " to " + e.Dst
	}
	s += ": " + e.Kind.String()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns e.Err.
func (e *Error) Unwrap() error { return e.Err }

// ProxyStatus returns the RFC 9209 Proxy-Status error type for e.Kind (see
// ErrorKind.ProxyStatus). Use ProxyStatusField to build the whole field.
func (e *Error) ProxyStatus() string { return e.Kind.ProxyStatus() }

// HTTPStatus returns the status code for a response refusing the flow (see
// ErrorKind.HTTPStatus).
func (e *Error) HTTPStatus() int { return e.Kind.HTTPStatus() }

// Classify returns the kind of a flow error: the Kind of an *Error in err's
// chain; otherwise Refused for ECONNREFUSED; Unreachable for ENETUNREACH,
// EHOSTUNREACH, ENETDOWN and EHOSTDOWN; Prohibited for EACCES and EPERM (a
// local firewall or a "prohibit" route); Timeout for ETIMEDOUT,
// context.DeadlineExceeded and any net.Error whose Timeout() is true; Other
// for everything else, including context.Canceled and nil.
func Classify(err error) ErrorKind {
	if err == nil {
		return Other
	}
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ECONNREFUSED:
			return Refused
		case syscall.ENETUNREACH, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.EHOSTDOWN:
			return Unreachable
		case syscall.EACCES, syscall.EPERM:
			return Prohibited
		case syscall.ETIMEDOUT:
			return Timeout
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Timeout
	}
	if errors.Is(err, context.Canceled) {
		return Other
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return Timeout
	}
	return Other
}
