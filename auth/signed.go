package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"
)

// SignedTokenPrefix starts every signed token; the digit is the format
// version. Plain tokens (GenerateToken, tokens files) never contain '.'.
const SignedTokenPrefix = "roam1."

// SignatureContext is the Ed25519ctx context string (RFC 8032 §5.1) of
// signed tokens: it separates their signatures from anything else the same
// key might ever sign.
const SignatureContext = "roam signed token v1"

// ClockSkew is how far in the future a signed token's issued-at time may
// lie (the issuing host's clock being ahead of the server's) before the
// token is rejected as not yet valid.
const ClockSkew = 5 * time.Minute

// Limits of a signed token's claims.
const (
	MaxUserLen    = 64  // user name length in bytes
	maxClaimItems = 255 // routes or port ranges (one count byte each)
)

// Payload layout (see the package doc for the diagram).
const (
	payloadVersion = 1
	keyIDLen       = 8 // first bytes of SHA-256 of the public key
	jtiLen         = 8 // random token serial
	fixedLen       = 1 + keyIDLen + jtiLen + 8 + 8
	sigB64Len      = 86      // base64url of a 64-byte signature
	routeTag6      = 64      // route tag: 0..32 IPv4 /tag, 64..192 IPv6 /(tag-64)
	maxUnix        = 1 << 40 // bound on Unix times: far past any real date, exact in time.Unix
	// maxPayloadLen is the longest payload that fits MaxTokenLen:
	// prefix + payload + "." + signature.
	maxPayloadLen = (MaxTokenLen - len(SignedTokenPrefix) - 1 - sigB64Len) * 6 / 8
	// minPayloadLen: fixed part, a 1-byte user, two zero counts.
	minPayloadLen = fixedLen + 1 + 1 + 2
)

var b64 = base64.RawURLEncoding.Strict()

// Claims are what a signed token says. IssueToken signs them;
// ParseSignedToken decodes them. Times have a resolution of one second.
type Claims struct {
	// User is the user name: 1..64 characters of [A-Za-z0-9._@-].
	User string
	// ID is a random serial (16 lowercase hex digits) that makes every
	// issued token distinct; IssueToken fills it in when empty. Revocation
	// uses the token's TokenID (which differs for every token), not ID.
	ID string
	// IssuedAt is when the token was issued; the token is rejected while
	// it lies more than ClockSkew in the future. IssueToken uses the
	// current time when it is zero.
	IssuedAt time.Time
	// Expires is when the token stops being valid; zero means never.
	Expires time.Time
	// Routes, when non-nil, are the only destinations the token allows
	// (masked prefixes). Nil means no restriction; IssueToken rejects a
	// non-nil empty slice.
	Routes []netip.Prefix
	// Ports, when non-nil, are the only TCP/UDP destination ports the
	// token allows. Nil means every port; IssueToken rejects a non-nil
	// empty slice.
	Ports []PortRange
	// KeyID names the signing key (KeyID of its public key). It is set by
	// ParseSignedToken and ignored by IssueToken, which derives it.
	KeyID string
}

// KeyID returns the identifier of an Ed25519 public key that signed tokens
// carry: "key-" and 16 lowercase hex digits of its SHA-256 digest.
func KeyID(pub ed25519.PublicKey) string {
	id := keyIDOf(pub)
	return "key-" + hex.EncodeToString(id[:])
}

func keyIDOf(pub ed25519.PublicKey) [keyIDLen]byte {
	d := sha256.Sum256(pub)
	return [keyIDLen]byte(d[:keyIDLen])
}

// ValidUserName reports whether name is a valid user name: 1..MaxUserLen
// characters of A-Z, a-z, 0-9, '.', '_', '@' and '-'.
func ValidUserName(name string) bool {
	if len(name) == 0 || len(name) > MaxUserLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '@' || c == '-') {
			return false
		}
	}
	return true
}

const userRule = "expected 1..64 characters of A-Z a-z 0-9 . _ @ -"

// IssueToken returns a token carrying c, signed with key. It fills in
// c.ID (random) and c.IssuedAt (now) when they are empty, truncates the
// times to whole seconds and masks the routes. Errors name the claim at
// fault and the expected form; a claim set too large for MaxTokenLen is an
// error saying by how much.
func IssueToken(key ed25519.PrivateKey, c Claims) (string, error) {
	if len(key) != ed25519.PrivateKeySize {
		return "", fmt.Errorf("issue token: signing key is %d bytes, expected an Ed25519 private key (%d bytes)", len(key), ed25519.PrivateKeySize)
	}
	if !ValidUserName(c.User) {
		return "", fmt.Errorf("issue token: user %q: %s", c.User, userRule)
	}
	var jti [jtiLen]byte
	if c.ID == "" {
		rand.Read(jti[:]) // never fails (crypto/rand)
	} else if len(c.ID) != 2*jtiLen || !isLowerHex(c.ID) {
		return "", fmt.Errorf("issue token: ID %q: expected %d lowercase hex digits (or empty for a random one)", c.ID, 2*jtiLen)
	} else {
		hex.Decode(jti[:], []byte(c.ID))
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	iat := c.IssuedAt.Unix()
	if iat <= 0 || iat >= maxUnix {
		return "", fmt.Errorf("issue token: issued-at %v: expected a time after 1970", c.IssuedAt)
	}
	var exp int64
	if !c.Expires.IsZero() {
		exp = c.Expires.Unix()
		if exp <= iat || exp >= maxUnix {
			return "", fmt.Errorf("issue token: expiry %v: expected a time after issued-at %v", c.Expires.UTC().Format(time.RFC3339), c.IssuedAt.UTC().Format(time.RFC3339))
		}
	}
	if c.Routes != nil && len(c.Routes) == 0 {
		return "", errors.New("issue token: routes: empty list (use nil for no restriction)")
	}
	if c.Ports != nil && len(c.Ports) == 0 {
		return "", errors.New("issue token: ports: empty list (use nil for no restriction)")
	}
	if len(c.Routes) > maxClaimItems || len(c.Ports) > maxClaimItems {
		return "", fmt.Errorf("issue token: %d routes and %d port ranges: at most %d of each", len(c.Routes), len(c.Ports), maxClaimItems)
	}
	p := make([]byte, 0, maxPayloadLen)
	p = append(p, payloadVersion)
	kid := keyIDOf(key.Public().(ed25519.PublicKey))
	p = append(p, kid[:]...)
	p = append(p, jti[:]...)
	p = binary.BigEndian.AppendUint64(p, uint64(iat))
	p = binary.BigEndian.AppendUint64(p, uint64(exp))
	p = append(p, byte(len(c.User)))
	p = append(p, c.User...)
	p = append(p, byte(len(c.Routes)))
	for i, r := range c.Routes {
		if !r.IsValid() {
			return "", fmt.Errorf("issue token: route %d: invalid prefix; expected a CIDR like 10.0.0.0/8", i+1)
		}
		r = r.Masked()
		a := r.Addr()
		tag := byte(r.Bits())
		if a.Is6() {
			tag += routeTag6
		}
		p = append(p, tag)
		b := a.As16()
		raw := b[:]
		if a.Is4() {
			raw = b[12:]
		}
		p = append(p, raw[:(r.Bits()+7)/8]...)
	}
	p = append(p, byte(len(c.Ports)))
	for i, r := range c.Ports {
		if r.Lo == 0 || r.Lo > r.Hi {
			return "", fmt.Errorf("issue token: port range %d (%d-%d): expected 1 <= LO <= HI <= 65535", i+1, r.Lo, r.Hi)
		}
		p = binary.BigEndian.AppendUint16(p, r.Lo)
		p = binary.BigEndian.AppendUint16(p, r.Hi)
	}
	if len(p) > maxPayloadLen {
		n := len(SignedTokenPrefix) + b64.EncodedLen(len(p)) + 1 + sigB64Len
		return "", fmt.Errorf("issue token: the claims make a %d-character token, over the limit of %d (%d bytes of claims, at most %d); use fewer or wider routes and port ranges",
			n, MaxTokenLen, len(p), maxPayloadLen)
	}
	sig, err := key.Sign(nil, p, &ed25519.Options{Hash: crypto.Hash(0), Context: SignatureContext})
	if err != nil {
		return "", fmt.Errorf("issue token: sign: %w", err)
	}
	out := make([]byte, 0, MaxTokenLen)
	out = append(out, SignedTokenPrefix...)
	out = b64.AppendEncode(out, p)
	out = append(out, '.')
	out = b64.AppendEncode(out, sig)
	return string(out), nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// IsSignedToken reports whether tok has the form of a signed token (it
// starts with SignedTokenPrefix); it does not parse or verify it.
func IsSignedToken(tok string) bool {
	return len(tok) >= len(SignedTokenPrefix) && tok[:len(SignedTokenPrefix)] == SignedTokenPrefix
}

// rawSigned is a signed token split and decoded, in caller-owned storage.
type rawSigned struct {
	payload [maxPayloadLen]byte
	n       int // payload length
	sig     [ed25519.SignatureSize]byte
}

// errMalformed is the error of every syntax failure of a signed token.
func errMalformed(what string) error {
	return &detailError{msg: "malformed signed token: " + what, kind: ErrInvalidToken}
}

// split checks the syntax of tok (prefix, alphabet, lengths, canonical
// base64url) and decodes its payload and signature into r. It does not
// allocate on success.
func (r *rawSigned) split(tok string) error {
	if !IsSignedToken(tok) {
		return errMalformed("missing prefix " + SignedTokenPrefix)
	}
	if len(tok) > MaxTokenLen {
		return errMalformed("longer than " + strconv.Itoa(MaxTokenLen) + " characters")
	}
	body := tok[len(SignedTokenPrefix):]
	dot := -1
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_':
		case c == '.' && dot < 0:
			dot = i
		default:
			// Also rejects CR and LF, which encoding/base64 would skip.
			return errMalformed("unexpected character at offset " + strconv.Itoa(len(SignedTokenPrefix)+i))
		}
	}
	if dot < 0 {
		return errMalformed("expected " + SignedTokenPrefix + "<payload>.<signature>")
	}
	p64, s64 := body[:dot], body[dot+1:]
	if len(s64) != sigB64Len {
		return errMalformed("signature is " + strconv.Itoa(len(s64)) + " characters, expected " + strconv.Itoa(sigB64Len))
	}
	if len(p64) > b64.EncodedLen(maxPayloadLen) || len(p64) < b64.EncodedLen(minPayloadLen) {
		return errMalformed("payload length " + strconv.Itoa(len(p64)) + " out of range")
	}
	// Decode from a stack copy: []byte(string) of this size would allocate.
	var buf [MaxTokenLen]byte
	n, err := b64.Decode(r.payload[:], buf[:copy(buf[:], p64)])
	if err != nil || n != b64.DecodedLen(len(p64)) {
		return errMalformed("payload is not canonical base64url")
	}
	r.n = n
	if n, err := b64.Decode(r.sig[:], buf[:copy(buf[:], s64)]); err != nil || n != ed25519.SignatureSize {
		return errMalformed("signature is not canonical base64url")
	}
	return nil
}

// decodePayload checks the payload's structure and returns its claims.
// Every accepted payload is the unique encoding of its claims: versions,
// lengths and counts must match exactly, prefixes must be masked with no
// spare address bytes, port ranges ordered, no trailing bytes.
// KeyID and ID are filled in only when ids is set (Authenticate does not
// need them, and they cost two allocations).
func decodePayload(p []byte, ids bool) (Claims, error) {
	var c Claims
	if len(p) < minPayloadLen {
		return c, errMalformed("payload too short")
	}
	if p[0] != payloadVersion {
		return c, errMalformed("unknown payload version " + strconv.Itoa(int(p[0])))
	}
	if ids {
		c.KeyID = "key-" + hex.EncodeToString(p[1:1+keyIDLen])
		c.ID = hex.EncodeToString(p[1+keyIDLen : 1+keyIDLen+jtiLen])
	}
	off := 1 + keyIDLen + jtiLen
	iat := binary.BigEndian.Uint64(p[off:])
	exp := binary.BigEndian.Uint64(p[off+8:])
	off += 16
	if iat == 0 || iat >= maxUnix || exp >= maxUnix || (exp != 0 && exp <= iat) {
		return c, errMalformed("bad issued-at or expiry")
	}
	c.IssuedAt = time.Unix(int64(iat), 0).UTC()
	if exp != 0 {
		c.Expires = time.Unix(int64(exp), 0).UTC()
	}
	ulen := int(p[off])
	off++
	if ulen == 0 || ulen > MaxUserLen || len(p)-off < ulen {
		return c, errMalformed("bad user name length")
	}
	user := p[off : off+ulen]
	off += ulen
	for _, ch := range user {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '@' || ch == '-') {
			return c, errMalformed("bad character in user name")
		}
	}
	c.User = string(user)
	if off >= len(p) {
		return c, errMalformed("truncated before routes")
	}
	nr := int(p[off])
	off++
	if nr > 0 {
		c.Routes = make([]netip.Prefix, 0, nr)
	}
	for range nr {
		if off >= len(p) {
			return c, errMalformed("truncated route")
		}
		tag := int(p[off])
		off++
		v6, bits := tag >= routeTag6, tag
		if v6 {
			bits -= routeTag6
		}
		if !v6 && bits > 32 || bits > 128 {
			return c, errMalformed("bad route prefix length")
		}
		nb := (bits + 7) / 8
		if len(p)-off < nb {
			return c, errMalformed("truncated route")
		}
		var a16 [16]byte
		var addr netip.Addr
		if v6 {
			copy(a16[:], p[off:off+nb])
			addr = netip.AddrFrom16(a16)
		} else {
			var a4 [4]byte
			copy(a4[:], p[off:off+nb])
			addr = netip.AddrFrom4(a4)
		}
		off += nb
		pfx := netip.PrefixFrom(addr, bits)
		if pfx.Masked() != pfx {
			return c, errMalformed("route has host bits set")
		}
		c.Routes = append(c.Routes, pfx)
	}
	if off >= len(p) {
		return c, errMalformed("truncated before ports")
	}
	np := int(p[off])
	off++
	if len(p)-off != 4*np {
		if len(p)-off > 4*np {
			return c, errMalformed("trailing bytes after the claims")
		}
		return c, errMalformed("truncated port range")
	}
	if np > 0 {
		c.Ports = make([]PortRange, 0, np)
	}
	for range np {
		r := PortRange{Lo: binary.BigEndian.Uint16(p[off:]), Hi: binary.BigEndian.Uint16(p[off+2:])}
		off += 4
		if r.Lo == 0 || r.Lo > r.Hi {
			return c, errMalformed("bad port range")
		}
		c.Ports = append(c.Ports, r)
	}
	return c, nil
}

// ParseSignedToken decodes a signed token's claims, checking its syntax
// only: the signature is NOT verified and the times are not checked (use
// VerifySignedToken or an Authenticator). Errors wrap ErrInvalidToken.
func ParseSignedToken(tok string) (Claims, error) {
	var r rawSigned
	if err := r.split(tok); err != nil {
		return Claims{}, err
	}
	return decodePayload(r.payload[:r.n], true)
}

// VerifySignedToken parses tok and checks its signature against keys (the
// one whose KeyID the token names). It does not check the times nor any
// revocation; an Authenticator does. Errors wrap ErrInvalidToken (syntax)
// or ErrUnauthorized (unknown key, bad signature).
func VerifySignedToken(tok string, keys []ed25519.PublicKey) (Claims, error) {
	var r rawSigned
	if err := r.split(tok); err != nil {
		return Claims{}, err
	}
	c, err := decodePayload(r.payload[:r.n], true)
	if err != nil {
		return Claims{}, err
	}
	if err := verifySig(&r, keys); err != nil {
		return Claims{}, err
	}
	return c, nil
}

var (
	errUnknownKey = &detailError{msg: "signed token: unknown signing key", kind: ErrUnauthorized}
	errBadSig     = &detailError{msg: "signed token: bad signature", kind: ErrUnauthorized}
	sigOpts       = &ed25519.Options{Hash: crypto.Hash(0), Context: SignatureContext}
)

// verifySig checks r's signature with the key among keys whose key ID the
// payload names.
func verifySig(r *rawSigned, keys []ed25519.PublicKey) error {
	kid := [keyIDLen]byte(r.payload[1 : 1+keyIDLen])
	for _, k := range keys {
		if len(k) != ed25519.PublicKeySize || keyIDOf(k) != kid {
			continue
		}
		if ed25519.VerifyWithOptions(k, r.payload[:r.n], r.sig[:], sigOpts) != nil {
			return errBadSig
		}
		return nil
	}
	return errUnknownKey
}
