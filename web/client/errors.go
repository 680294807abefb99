package client

import (
	"context"
	"errors"
	"net"

	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/webproto"
)

// Sentinel errors.
var (
	// ErrClosed is the cause of a client's end after Close.
	ErrClosed = errors.New("client: closed")
	// ErrSessionEnded is wrapped by the errors of calls made after the
	// session ended, together with the cause.
	ErrSessionEnded = errors.New("session ended")
	// ErrSessionLost is wrapped by the cause of a session that ended
	// without the client closing it or the server saying why (the network,
	// or the server closing the connection).
	ErrSessionLost = errors.New("session lost")
	// ErrBadInput is wrapped by the errors about bad arguments (a token or
	// an address); the message names the field.
	ErrBadInput = errors.New("bad input")
)

// Code is a short, stable, machine-readable reason for a failure, as the
// browser client's JS API reports it (RoamError.code).
type Code string

// Codes.
const (
	CodeUnauthorized Code = "unauthorized" // the server did not accept the token
	CodeShutdown     Code = "shutdown"     // the server is shutting down or restarting (SESSION_ERROR shutdown)
	CodeSession      Code = "session"      // the server ended the session (another SESSION_ERROR; SessionReason says why)
	CodeClosed       Code = "closed"       // the session has ended
	CodeLost         Code = "lost"         // the session ended without a reason from the server
	CodeProhibited   Code = "prohibited"   // the server's policy refused the destination
	CodeRefused      Code = "refused"      // the destination refused the connection
	CodeTimeout      Code = "timeout"      // connecting or the request timed out
	CodeUnreachable  Code = "unreachable"  // no route to the destination, or its name does not resolve
	CodeLimit        Code = "limit"        // the session has too many flows
	CodeFlow         Code = "flow"         // the server could not open the flow for another reason
	CodeReset        Code = "reset"        // the flow was reset
	CodeCanceled     Code = "canceled"     // the caller cancelled
	CodeBadInput     Code = "bad-input"    // a bad argument
	CodeProtocol     Code = "protocol"     // the server broke the protocol
	CodeOther        Code = "other"        // anything else
)

// ErrorCode classifies err for the JS API.
func ErrorCode(err error) Code {
	var (
		se *webproto.SessionError
		fe *flow.Error
		ne net.Error
	)
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrBadInput), errors.Is(err, flow.ErrBadAuthority):
		return CodeBadInput
	case errors.Is(err, ErrSessionEnded), errors.Is(err, ErrClosed):
		return CodeClosed
	case errors.Is(err, ErrSessionLost):
		return CodeLost
	case errors.As(err, &se):
		switch se.Code {
		case webproto.CodeUnauthorized:
			return CodeUnauthorized
		case webproto.CodeShutdown:
			return CodeShutdown
		}
		return CodeSession
	case errors.As(err, &fe):
		switch fe.Kind {
		case flow.Prohibited:
			return CodeProhibited
		case flow.Refused:
			return CodeRefused
		case flow.Timeout:
			return CodeTimeout
		case flow.Unreachable:
			return CodeUnreachable
		case flow.LimitReached:
			return CodeLimit
		}
		return CodeFlow
	case errors.Is(err, webproto.ErrMalformed):
		return CodeProtocol
	case flow.IsReset(err):
		return CodeReset
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return CodeTimeout
	}
	return CodeOther
}

// SessionReason returns the server's SESSION_ERROR code (a webproto.Code*
// constant, e.g. webproto.CodeProtocol or webproto.CodeTimeout) if err
// carries one, else "". The page words CodeSession errors by it.
func SessionReason(err error) string {
	var se *webproto.SessionError
	if errors.As(err, &se) {
		return se.Code
	}
	return ""
}
