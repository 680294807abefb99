// Package auth holds Roam's credentials: plain bearer tokens and their
// constant-time verification, Ed25519-signed tokens with per-user claims,
// revocation lists and user policy (Authenticator), and the server's TLS
// certificate (generate, load, pin).
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
// # Signed tokens
//
// A signed token (IssueToken, ParseSignedToken, VerifySignedToken,
// Authenticator) carries its holder's claims and an Ed25519 signature, so
// any server holding the public key verifies it without a shared tokens
// file:
//
//	roam1.<payload: unpadded base64url>.<signature: unpadded base64url, 86 chars>
//
//	payload (integers big-endian, sizes in bytes):
//	+---------+--------+--------+-------------+-------------+----------+----------+
//	| version | key ID | serial | issued-at   | expires     | user len | user     |
//	| (1) = 1 | (8)    | (8)    | (8) Unix s  | (8) 0=never | (1) 1-64 | (len)    |
//	+---------+--------+--------+-------------+-------------+----------+----------+
//	| route count (1) | routes ... | port count (1) | port ranges: lo (2) hi (2) ... |
//	+-----------------+------------+----------------+--------------------------------+
//	user: characters of [A-Za-z0-9._@-]
//	route: tag (1), then the first ceil(bits/8) bytes of the address;
//	       tag 0..32 is IPv4 /tag, tag 64..192 is IPv6 /(tag-64)
//	a count of 0 means "no restriction" (Claims.Routes / Ports nil)
//
// The key ID is the first 8 bytes of SHA-256 of the public key (shown as
// KeyID, "key-<16 hex>"); the serial is random and makes every token
// distinct. The signature is Ed25519ctx (RFC 8032) over the payload bytes
// with the context SignatureContext, so it cannot be confused with any
// other signature of the same key. Parsing is strict: every accepted token
// is the only encoding of its claims (canonical base64url without
// padding, masked prefixes with no spare bytes, LO <= HI, no trailing
// bytes), so TokenID(token), which is the Identity.Owner and the handle
// for revocation, names exactly one token. A token is valid from
// issued-at minus ClockSkew until expires (exclusive). With a user name of
// 64 characters, 16 routes and 16 port ranges a token is about 450
// characters, within MaxTokenLen.
//
// Key files (LoadOrCreateSigningKey, LoadSigningKey, LoadPublicKeys): the
// signing key is STATE_DIR/token.key, a PKCS#8 PEM "PRIVATE KEY" (mode
// 0600, what `openssl genpkey -algorithm ed25519` writes too); the public
// keys file, STATE_DIR/token.pub by default, holds one key per line,
//
//	# comment
//	ed25519:<standard base64 of the 32-byte key>   # trailing comment
//
// and PEM "PUBLIC KEY" blocks (`openssl pkey -pubout`) are accepted too.
// A server may list several keys (rotation, several issuers).
//
// Revocation list (LoadRevocations, AppendRevocation), STATE_DIR/revoked:
//
//	# comment
//	id tok-3ba3f5f43b92     # a token (plain or signed) by its TokenID
//	user alice              # every signed token of a user
//
// A missing file is an empty list. Users' policy (AuthenticatorConfig.Users)
// narrows a signed token's routes and ports (IntersectPrefixes,
// IntersectPorts) or disables the user.
//
// Certificate pins have the form "sha256:<64 lowercase hex digits>", the
// SHA-256 digest of the leaf certificate's DER encoding (Pin, ParsePin,
// VerifyPinned).
package auth
