package auth

import (
	"errors"
	"strconv"
)

// Sentinel errors. Errors returned by this package wrap one of them where it
// applies, so callers can test with errors.Is; the message text carries the
// details (file, line, expected form).
var (
	// ErrNoTokens: a tokens file holds no tokens (only blanks and comments).
	ErrNoTokens = errors.New("no tokens")
	// ErrInvalidToken: a line of a tokens file is not a valid token.
	ErrInvalidToken = errors.New("invalid token")
	// ErrDuplicateToken: the same token (or token ID) appears twice in a tokens file.
	ErrDuplicateToken = errors.New("duplicate token")
	// ErrInvalidPin: a string is not of the form sha256:<64 hex digits>.
	ErrInvalidPin = errors.New("invalid certificate pin")
	// ErrCorruptCert: a certificate or key file exists but cannot be used.
	ErrCorruptCert = errors.New("unusable certificate or key")
	// ErrInvalidRevocation: a line of a revocation list is malformed.
	ErrInvalidRevocation = errors.New("invalid revocation")
	// ErrInvalidKey: a token signing key or public keys file is malformed.
	ErrInvalidKey = errors.New("invalid token key")
)

// TokensFileError reports a problem with one line of a tokens file (Line > 0)
// or with the file as a whole (Line == 0). Err wraps ErrInvalidToken,
// ErrDuplicateToken, ErrNoTokens or an I/O error.
type TokensFileError struct {
	Name string // file name as given to LoadTokens / ParseTokens
	Line int    // 1-based line number; 0 when the error concerns the whole file
	Err  error
}

func (e *TokensFileError) Error() string {
	if e.Line == 0 {
		return "tokens file " + e.Name + ": " + e.Err.Error()
	}
	return "tokens file " + e.Name + ": line " + strconv.Itoa(e.Line) + ": " + e.Err.Error()
}

func (e *TokensFileError) Unwrap() error { return e.Err }

// PinMismatchError is returned (through the TLS handshake) by the function
// VerifyPinned makes when the server's certificate does not hash to the
// expected pin. Want and Got are in the form "sha256:<hex>"; Got is empty when
// the server presented no certificate.
type PinMismatchError struct{ Want, Got string }

func (e *PinMismatchError) Error() string {
	if e.Got == "" {
		return "certificate pin mismatch: server presented no certificate, expected " + e.Want
	}
	return "certificate pin mismatch: server presented " + e.Got + ", expected " + e.Want
}

// detailError is an error whose message is msg and which matches kind with
// errors.Is; it lets messages read naturally ("token contains whitespace")
// while still wrapping a sentinel.
type detailError struct {
	msg  string
	kind error
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.kind }
