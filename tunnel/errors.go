package tunnel

import (
	"errors"
	"fmt"
)

// ErrAuthFailed is returned by the client when the server rejects the token
// (HTTP 401 or 403).
var ErrAuthFailed = errors.New("authentication failed")

// ErrNoDatagrams is returned when the peer does not support QUIC or HTTP
// datagrams, which CONNECT-IP needs.
var ErrNoDatagrams = errors.New("peer does not support HTTP/3 datagrams (RFC 9297)")

// StatusError is a non-2xx response to the CONNECT-IP request other than an
// authentication failure.
type StatusError struct {
	StatusCode int
	Status     string
	// Reason is the start of the response body, if any.
	Reason string
}

func (e *StatusError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("server refused the tunnel: HTTP %s: %s", e.Status, e.Reason)
	}
	return fmt.Sprintf("server refused the tunnel: HTTP %s", e.Status)
}
