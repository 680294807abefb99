// Package auth holds Roam's credentials: bearer tokens and their constant-time
// verification, and the server's TLS certificate (generate, load, pin).
//
// Everything here is a pure value or function: the package starts no
// goroutines, keeps no global state and imports no other Roam package (see
// deps_test.go). Values returned by it are immutable after construction and
// safe for concurrent use.
//
// Tokens file format (LoadTokens, ParseTokens):
//
//	# whole-line comment
//	<token>                  # trailing comment: '#' preceded by whitespace
//	<token>
//
// A token is MinTokenLen..MaxTokenLen printable ASCII characters (0x21-0x7e)
// with no spaces; GenerateToken makes 43-character base64url tokens. A token
// is identified in logs and address leases by TokenID, a non-secret prefix of
// its SHA-256 digest.
//
// Certificate pins have the form "sha256:<64 lowercase hex digits>", the
// SHA-256 digest of the leaf certificate's DER encoding (Pin, ParsePin,
// VerifyPinned).
package auth
