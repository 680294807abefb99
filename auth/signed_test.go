package auth

import (
	"crypto"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testKey returns a deterministic signing key (seed byte b).
func testKey(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = b
	}
	return ed25519.NewKeyFromSeed(seed)
}

func pubOf(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

var (
	t0    = time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	keyA  = testKey(1)
	keyB  = testKey(2)
	pfx   = netip.MustParsePrefix
	hour  = time.Hour
	allow = []PortRange{{443, 443}, {8000, 8100}}
)

func mustIssue(t testing.TB, key ed25519.PrivateKey, c Claims) string {
	t.Helper()
	tok, err := IssueToken(key, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// signRaw makes a token of an arbitrary payload, correctly signed: the way
// to test that the parser itself rejects non-canonical payloads.
func signRaw(key ed25519.PrivateKey, p []byte) string {
	sig, err := key.Sign(nil, p, &ed25519.Options{Hash: crypto.Hash(0), Context: SignatureContext})
	if err != nil {
		panic(err)
	}
	return SignedTokenPrefix + b64.EncodeToString(p) + "." + b64.EncodeToString(sig)
}

// payloadOf returns the decoded payload of a token.
func payloadOf(t testing.TB, tok string) []byte {
	t.Helper()
	var r rawSigned
	if err := r.split(tok); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), r.payload[:r.n]...)
}

func TestIssueParseRoundTrip(t *testing.T) {
	long := strings.Repeat("u", MaxUserLen)
	tests := []struct {
		name string
		in   Claims
		want Claims // KeyID is checked separately
	}{
		{
			name: "minimal",
			in:   Claims{User: "a", ID: "0123456789abcdef", IssuedAt: t0},
			want: Claims{User: "a", ID: "0123456789abcdef", IssuedAt: t0},
		},
		{
			name: "everything",
			in: Claims{User: "alice.smith@example-corp_1", ID: "ffffffffffffffff", IssuedAt: t0.Add(500 * time.Millisecond), Expires: t0.Add(30 * 24 * hour),
				Routes: []netip.Prefix{pfx("10.1.2.3/16"), pfx("0.0.0.0/0"), pfx("2001:db8::/32"), pfx("::/0"), pfx("192.0.2.7/32"), pfx("2001:db8::1/128"), pfx("::ffff:10.0.0.0/104")},
				Ports:  []PortRange{{1, 1}, {443, 443}, {8000, 8100}, {65535, 65535}}},
			want: Claims{User: "alice.smith@example-corp_1", ID: "ffffffffffffffff", IssuedAt: t0, Expires: t0.Add(30 * 24 * hour),
				Routes: []netip.Prefix{pfx("10.1.0.0/16"), pfx("0.0.0.0/0"), pfx("2001:db8::/32"), pfx("::/0"), pfx("192.0.2.7/32"), pfx("2001:db8::1/128"), pfx("::ffff:10.0.0.0/104")},
				Ports:  []PortRange{{1, 1}, {443, 443}, {8000, 8100}, {65535, 65535}}},
		},
		{
			name: "longest user",
			in:   Claims{User: long, ID: "0000000000000000", IssuedAt: t0, Expires: t0.Add(time.Second)},
			want: Claims{User: long, ID: "0000000000000000", IssuedAt: t0, Expires: t0.Add(time.Second)},
		},
		{
			name: "local time zone",
			in:   Claims{User: "z", ID: "0000000000000001", IssuedAt: t0.In(time.FixedZone("X", 3600))},
			want: Claims{User: "z", ID: "0000000000000001", IssuedAt: t0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := mustIssue(t, keyA, tt.in)
			if !IsSignedToken(tok) || len(tok) > MaxTokenLen {
				t.Fatalf("token %q (%d chars)", tok, len(tok))
			}
			if _, ok := ParseBearer("Bearer " + tok); !ok {
				t.Fatal("token is not a valid bearer token")
			}
			got, err := ParseSignedToken(tok)
			if err != nil {
				t.Fatal(err)
			}
			if got.KeyID != KeyID(pubOf(keyA)) {
				t.Errorf("KeyID %q, want %q", got.KeyID, KeyID(pubOf(keyA)))
			}
			got.KeyID = ""
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("claims\n got %+v\nwant %+v", got, tt.want)
			}
			v, err := VerifySignedToken(tok, []ed25519.PublicKey{pubOf(keyB), pubOf(keyA)})
			if err != nil {
				t.Fatal(err)
			}
			v.KeyID = ""
			if !reflect.DeepEqual(v, tt.want) {
				t.Errorf("VerifySignedToken claims %+v", v)
			}
			// Deterministic: the same claims and key make the same token.
			again := tt.want
			if tok2 := mustIssue(t, keyA, again); tok2 != tok {
				t.Errorf("reissue differs:\n%s\n%s", tok, tok2)
			}
		})
	}
}

func TestIssueDefaults(t *testing.T) {
	before := time.Now().Add(-time.Second)
	tok1 := mustIssue(t, keyA, Claims{User: "bob"})
	tok2 := mustIssue(t, keyA, Claims{User: "bob"})
	c1, err := ParseSignedToken(tok1)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := ParseSignedToken(tok2)
	if c1.ID == c2.ID || len(c1.ID) != 16 || TokenID(tok1) == TokenID(tok2) {
		t.Errorf("IDs %q %q, token IDs %s %s: want random, distinct", c1.ID, c2.ID, TokenID(tok1), TokenID(tok2))
	}
	if c1.IssuedAt.Before(before.Truncate(time.Second)) || c1.IssuedAt.After(time.Now()) {
		t.Errorf("IssuedAt %v, want now", c1.IssuedAt)
	}
	if !c1.Expires.IsZero() || c1.Routes != nil || c1.Ports != nil {
		t.Errorf("defaults %+v", c1)
	}
}

func TestIssueTokenErrors(t *testing.T) {
	many := make([]netip.Prefix, 30)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 1, 0xd, 0xb8, 15: byte(i)}), 128)
	}
	tests := []struct {
		name string
		key  ed25519.PrivateKey
		c    Claims
		want string
	}{
		{"empty user", keyA, Claims{}, `user "": expected 1..64 characters`},
		{"user too long", keyA, Claims{User: strings.Repeat("a", 65)}, "expected 1..64"},
		{"user with space", keyA, Claims{User: "a b"}, `user "a b"`},
		{"user non-ASCII", keyA, Claims{User: "bjørn"}, "user"},
		{"bad id", keyA, Claims{User: "a", ID: "XYZ"}, `ID "XYZ": expected 16 lowercase hex digits`},
		{"upper id", keyA, Claims{User: "a", ID: "0123456789ABCDEF"}, "lowercase hex"},
		{"expiry before issue", keyA, Claims{User: "a", IssuedAt: t0, Expires: t0.Add(-time.Second)}, "expiry 2030-05-06T07:08:08Z: expected a time after issued-at"},
		{"expiry equals issue", keyA, Claims{User: "a", IssuedAt: t0, Expires: t0.Add(time.Millisecond)}, "expected a time after issued-at"},
		{"before 1970", keyA, Claims{User: "a", IssuedAt: time.Unix(-5, 0)}, "after 1970"},
		{"empty routes", keyA, Claims{User: "a", Routes: []netip.Prefix{}}, "routes: empty list"},
		{"empty ports", keyA, Claims{User: "a", Ports: []PortRange{}}, "ports: empty list"},
		{"invalid route", keyA, Claims{User: "a", Routes: []netip.Prefix{{}}}, "route 1: invalid prefix"},
		{"port zero", keyA, Claims{User: "a", Ports: []PortRange{{0, 5}}}, "port range 1 (0-5)"},
		{"port reversed", keyA, Claims{User: "a", Ports: []PortRange{{1, 1}, {9, 8}}}, "port range 2 (9-8)"},
		{"too long", keyA, Claims{User: "a", Routes: many}, "-character token, over the limit of 512"},
		{"too many", keyA, Claims{User: "a", Ports: make([]PortRange, 256)}, "at most 255"},
		{"bad key", ed25519.PrivateKey(make([]byte, 10)), Claims{User: "a"}, "signing key is 10 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := IssueToken(tt.key, tt.c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("IssueToken = %q, %v; want error containing %q", tok, err, tt.want)
			}
		})
	}
}

// TestReasonableClaimsFit: a long user name, 16 routes and 16 port ranges
// stay within MaxTokenLen.
func TestReasonableClaimsFit(t *testing.T) {
	c := Claims{User: strings.Repeat("u", MaxUserLen), IssuedAt: t0, Expires: t0.Add(hour)}
	for i := range 8 {
		c.Routes = append(c.Routes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 24))
		c.Routes = append(c.Routes, netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 7: byte(i)}), 64))
	}
	for i := range 16 {
		c.Ports = append(c.Ports, PortRange{uint16(1000 * (i + 1)), uint16(1000*(i+1) + 10)})
	}
	tok := mustIssue(t, keyA, c)
	t.Logf("%d routes, %d port ranges, 64-char user: %d characters", len(c.Routes), len(c.Ports), len(tok))
}

func TestAuthenticateSigned(t *testing.T) {
	base := Claims{User: "alice", IssuedAt: t0, Expires: t0.Add(hour), Routes: []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/8")}, Ports: allow}
	good := mustIssue(t, keyA, base)
	noExp := mustIssue(t, keyA, Claims{User: "carol", IssuedAt: t0})
	other := mustIssue(t, keyB, base)
	revokedTok := mustIssue(t, keyA, Claims{User: "alice", IssuedAt: t0, ID: "00000000000000aa"})
	bob := mustIssue(t, keyA, Claims{User: "bob", IssuedAt: t0})
	dave := mustIssue(t, keyA, Claims{User: "dave", IssuedAt: t0, Routes: []netip.Prefix{pfx("10.0.0.0/8")}})
	erin := mustIssue(t, keyA, Claims{User: "erin", IssuedAt: t0, Ports: allow})
	frank := mustIssue(t, keyA, Claims{User: "frank", IssuedAt: t0})
	plainToks, err := ParseTokens(strings.NewReader(tokA+"\n"+tokB+"\n"), "T")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := ParseRevocations(strings.NewReader("id "+TokenID(revokedTok)+"\nuser bob\nid "+TokenID(tokB)+"\n"), "R")
	if err != nil {
		t.Fatal(err)
	}
	a := NewAuthenticator(AuthenticatorConfig{
		Tokens:     plainToks,
		PublicKeys: []ed25519.PublicKey{pubOf(keyA)},
		Revoked:    rev,
		Users: map[string]UserPolicy{
			"alice": {Routes: []netip.Prefix{pfx("10.1.0.0/16"), pfx("192.168.0.0/16")}, Ports: []PortRange{{440, 450}}},
			"carol": {Disabled: true},
			"dave":  {Routes: []netip.Prefix{pfx("192.168.0.0/16")}},
			"erin":  {Ports: []PortRange{{22, 22}}},
			"frank": {Routes: []netip.Prefix{pfx("10.9.0.0/16")}, Ports: []PortRange{{22, 22}, {80, 80}}},
		},
	})
	tests := []struct {
		name   string
		a      *Authenticator
		tok    string
		now    time.Time
		want   *Identity
		reason string
	}{
		{name: "valid, narrowed by policy", tok: good, now: t0.Add(time.Minute),
			want: &Identity{Owner: TokenID(good), User: "alice", Expires: t0.Add(hour), Routes: []netip.Prefix{pfx("10.1.0.0/16")}, Ports: []PortRange{{443, 443}}}},
		{name: "at issue time", tok: good, now: t0, want: &Identity{Owner: TokenID(good), User: "alice", Expires: t0.Add(hour), Routes: []netip.Prefix{pfx("10.1.0.0/16")}, Ports: []PortRange{{443, 443}}}},
		{name: "within clock skew", tok: good, now: t0.Add(-ClockSkew), want: &Identity{Owner: TokenID(good), User: "alice", Expires: t0.Add(hour), Routes: []netip.Prefix{pfx("10.1.0.0/16")}, Ports: []PortRange{{443, 443}}}},
		{name: "not yet valid", tok: good, now: t0.Add(-ClockSkew - time.Second), reason: "not valid until 2030-05-06T07:03:09Z"},
		{name: "last second", tok: good, now: t0.Add(hour - time.Nanosecond), want: &Identity{Owner: TokenID(good), User: "alice", Expires: t0.Add(hour), Routes: []netip.Prefix{pfx("10.1.0.0/16")}, Ports: []PortRange{{443, 443}}}},
		{name: "expired at expiry", tok: good, now: t0.Add(hour), reason: "expired at 2030-05-06T08:08:09Z"},
		{name: "expired later", tok: good, now: t0.Add(100 * hour), reason: "expired"},
		{name: "no policy, no expiry", tok: noExp, now: t0.Add(1000 * hour), a: NewAuthenticator(AuthenticatorConfig{PublicKeys: []ed25519.PublicKey{pubOf(keyA)}}),
			want: &Identity{Owner: TokenID(noExp), User: "carol"}},
		{name: "disabled user", tok: noExp, now: t0, reason: "user carol is disabled"},
		{name: "unknown key", tok: other, now: t0, reason: "unknown signing key"},
		{name: "no keys", tok: good, now: t0, a: NewAuthenticator(AuthenticatorConfig{Tokens: plainToks}), reason: "unknown signing key"},
		{name: "revoked id", tok: revokedTok, now: t0, reason: "signed token " + TokenID(revokedTok) + " of user alice is revoked"},
		{name: "revoked user", tok: bob, now: t0, reason: "user bob is revoked"},
		{name: "policy leaves no routes", tok: dave, now: t0, reason: "leaves the token no routes"},
		{name: "policy leaves no ports", tok: erin, now: t0, reason: "leaves the token no ports"},
		{name: "unrestricted token, policy applies", tok: frank, now: t0,
			want: &Identity{Owner: TokenID(frank), User: "frank", Routes: []netip.Prefix{pfx("10.9.0.0/16")}, Ports: []PortRange{{22, 22}, {80, 80}}}},
		{name: "plain token", tok: tokA, now: t0, want: &Identity{Owner: TokenID(tokA)}},
		{name: "plain token revoked", tok: tokB, now: t0, reason: "token " + TokenID(tokB) + " is revoked"},
		{name: "plain unknown", tok: tokC, now: t0, reason: "unknown token"},
		{name: "empty", tok: "", now: t0, reason: "unknown token"},
		{name: "prefix only", tok: SignedTokenPrefix, now: t0, reason: "malformed"},
		{name: "trailing garbage", tok: good + "A", now: t0, reason: "malformed"},
		{name: "trailing dot", tok: good + ".", now: t0, reason: "malformed"},
		{name: "truncated", tok: good[:len(good)-1], now: t0, reason: "malformed"},
		{name: "newline inside", tok: good[:20] + "\n" + good[20:], now: t0, reason: "malformed"},
		{name: "too long", tok: good + strings.Repeat("A", MaxTokenLen), now: t0, reason: "malformed"},
		{name: "nil authenticator", a: (*Authenticator)(nil), tok: good, now: t0, reason: "unknown token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			au := a
			if tt.a != nil || tt.name == "nil authenticator" {
				au = tt.a
			}
			id, err := au.Authenticate(tt.tok, tt.now)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("accepted: %+v", id)
				}
				if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), tt.reason) {
					t.Fatalf("error %q (unauthorized: %v), want one containing %q", err, errors.Is(err, ErrUnauthorized), tt.reason)
				}
				if !reflect.DeepEqual(id, Identity{}) {
					t.Errorf("identity %+v returned with an error", id)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(id, *tt.want) {
				t.Errorf("identity\n got %+v\nwant %+v", id, *tt.want)
			}
		})
	}
}

// TestTamper changes every character of a valid token in turn (to two
// other characters of the alphabet and to a byte outside it): nothing may
// verify.
func TestTamper(t *testing.T) {
	tok := mustIssue(t, keyA, Claims{User: "alice", IssuedAt: t0, Routes: []netip.Prefix{pfx("10.0.0.0/8")}, Ports: allow})
	keys := []ed25519.PublicKey{pubOf(keyA)}
	a := NewAuthenticator(AuthenticatorConfig{PublicKeys: keys})
	if _, err := a.Authenticate(tok, t0); err != nil {
		t.Fatal(err)
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	n := 0
	for i := range len(tok) {
		for _, repl := range []byte{alphabet[(strings.IndexByte(alphabet, tok[i])+1)%64], alphabet[(strings.IndexByte(alphabet, tok[i])+33)%64], tok[i] ^ 0x01, '.', 0} {
			if repl == tok[i] {
				continue
			}
			bad := tok[:i] + string(repl) + tok[i+1:]
			n++
			if id, err := a.Authenticate(bad, t0); err == nil {
				t.Fatalf("byte %d %q -> %q: accepted as %+v", i, tok[i], repl, id)
			}
			if _, err := VerifySignedToken(bad, keys); err == nil {
				t.Fatalf("byte %d %q -> %q: VerifySignedToken accepted", i, tok[i], repl)
			}
		}
	}
	t.Logf("%d tampered tokens rejected", n)
}

// TestNonCanonical: correctly signed payloads that are not the unique
// encoding of their claims, and non-canonical base64, are rejected.
func TestNonCanonical(t *testing.T) {
	good := mustIssue(t, keyA, Claims{User: "al", ID: "0102030405060708", IssuedAt: t0, Expires: t0.Add(hour), Routes: []netip.Prefix{pfx("10.0.0.0/8")}, Ports: []PortRange{{80, 80}}})
	p := payloadOf(t, good)
	// Layout: ver(1) kid(8) jti(8) iat(8) exp(8) ulen(1)=2 "al" nroutes(1)=1 tag(1)=8 10 nports(1)=1 0 80 0 80
	const (
		offIat   = 17
		offExp   = 25
		offUlen  = 33
		offUser  = 34
		offNR    = 36
		offTag   = 37
		offRoute = 38
		offNP    = 39
	)
	if len(p) != 44 || p[offUlen] != 2 || p[offNR] != 1 || p[offTag] != 8 || p[offRoute] != 10 || p[offNP] != 1 {
		t.Fatalf("unexpected layout % x", p)
	}
	mut := func(f func(q []byte) []byte) string {
		q := append([]byte(nil), p...)
		return signRaw(keyA, f(q))
	}
	tests := []struct {
		name string
		tok  string
		want string
	}{
		{"trailing byte", mut(func(q []byte) []byte { return append(q, 0) }), "trailing bytes"},
		{"missing byte", mut(func(q []byte) []byte { return q[:len(q)-1] }), "truncated port range"},
		{"version 2", mut(func(q []byte) []byte { q[0] = 2; return q }), "unknown payload version 2"},
		{"version 0", mut(func(q []byte) []byte { q[0] = 0; return q }), "unknown payload version 0"},
		{"iat zero", mut(func(q []byte) []byte { binary.BigEndian.PutUint64(q[offIat:], 0); return q }), "bad issued-at"},
		{"iat huge", mut(func(q []byte) []byte { binary.BigEndian.PutUint64(q[offIat:], 1<<63); return q }), "bad issued-at"},
		{"exp before iat", mut(func(q []byte) []byte {
			binary.BigEndian.PutUint64(q[offExp:], uint64(t0.Unix()-1))
			return q
		}), "bad issued-at or expiry"},
		{"user length 0", mut(func(q []byte) []byte { q[offUlen] = 0; return q }), "bad user name length"},
		{"user length beyond", mut(func(q []byte) []byte { q[offUlen] = 200; return q }), "bad user name length"},
		{"user bad char", mut(func(q []byte) []byte { q[offUser] = ' '; return q }), "bad character in user name"},
		{"route host bits", mut(func(q []byte) []byte { q[offTag] = 7; q[offRoute] = 11; return q }), "host bits"},
		{"v4 /33", mut(func(q []byte) []byte { q[offTag] = 33; return q }), "bad route prefix length"},
		{"v6 /129", mut(func(q []byte) []byte { q[offTag] = routeTag6 + 129; return q }), "bad route prefix length"},
		{"port zero", mut(func(q []byte) []byte { q[offNP+1], q[offNP+2] = 0, 0; return q }), "bad port range"},
		{"port reversed", mut(func(q []byte) []byte {
			binary.BigEndian.PutUint16(q[offNP+1:], 81)
			binary.BigEndian.PutUint16(q[offNP+3:], 80)
			return q
		}), "bad port range"},
		{"count too big", mut(func(q []byte) []byte { q[offNP] = 2; return q }), "truncated port range"},
		{"short payload", signRaw(keyA, p[:20]), "payload length"},
	}
	a := NewAuthenticator(AuthenticatorConfig{PublicKeys: []ed25519.PublicKey{pubOf(keyA)}})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSignedToken(tt.tok)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("ParseSignedToken error %v, want %q", err, tt.want)
			}
			if _, err := a.Authenticate(tt.tok, t0); err == nil || !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("Authenticate error %v", err)
			}
		})
	}

	// Spare bits of the last base64 character set: same bytes with lax
	// decoding, rejected with strict.
	seg, sig, _ := strings.Cut(strings.TrimPrefix(good, SignedTokenPrefix), ".")
	if len(seg)%4 == 0 {
		t.Fatal("payload segment has no spare bits")
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	v := strings.IndexByte(alphabet, seg[len(seg)-1])
	if v&1 != 0 {
		t.Fatal("unexpected spare bit set")
	}
	lax := SignedTokenPrefix + seg[:len(seg)-1] + string(alphabet[v|1]) + "." + sig
	if _, err := ParseSignedToken(lax); err == nil || !strings.Contains(err.Error(), "canonical base64url") {
		t.Errorf("non-canonical base64: %v", err)
	}
	for _, bad := range []string{
		SignedTokenPrefix + seg + "=." + sig, // padding
		SignedTokenPrefix + seg + "." + sig + "=",
		SignedTokenPrefix + seg + "." + sig[:85] + "/", // standard alphabet
		SignedTokenPrefix + seg + ".." + sig,
		SignedTokenPrefix + seg,
		"roam2." + seg + "." + sig,
		"ROAM1." + seg + "." + sig,
	} {
		if _, err := ParseSignedToken(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSignatureDomainSeparated(t *testing.T) {
	tok := mustIssue(t, keyA, Claims{User: "a", IssuedAt: t0})
	p := payloadOf(t, tok)
	// A plain Ed25519 signature over the same payload must not verify.
	plain := SignedTokenPrefix + b64.EncodeToString(p) + "." + b64.EncodeToString(ed25519.Sign(keyA, p))
	if _, err := VerifySignedToken(plain, []ed25519.PublicKey{pubOf(keyA)}); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Errorf("pure Ed25519 signature: %v", err)
	}
}

func TestIntersectPrefixes(t *testing.T) {
	ps := func(s ...string) []netip.Prefix {
		out := []netip.Prefix{}
		for _, x := range s {
			out = append(out, pfx(x))
		}
		return out
	}
	tests := []struct {
		name    string
		a, b    []netip.Prefix
		want    []netip.Prefix
		wantNil bool
	}{
		{name: "both nil", wantNil: true},
		{name: "a nil", b: ps("10.0.0.0/8"), want: ps("10.0.0.0/8")},
		{name: "b nil", a: ps("10.0.0.0/8", "10.1.0.0/16"), want: ps("10.0.0.0/8")},
		{name: "equal", a: ps("10.0.0.0/8"), b: ps("10.0.0.0/8"), want: ps("10.0.0.0/8")},
		{name: "a inside b", a: ps("10.1.0.0/16"), b: ps("10.0.0.0/8"), want: ps("10.1.0.0/16")},
		{name: "b inside a", a: ps("10.0.0.0/8"), b: ps("10.1.0.0/16", "10.2.3.0/24"), want: ps("10.1.0.0/16", "10.2.3.0/24")},
		{name: "disjoint", a: ps("10.0.0.0/8"), b: ps("192.168.0.0/16"), want: ps()},
		{name: "families differ", a: ps("0.0.0.0/0"), b: ps("::/0"), want: ps()},
		{name: "default routes", a: ps("0.0.0.0/0", "::/0"), b: ps("10.0.0.0/8", "fd00::/8"), want: ps("10.0.0.0/8", "fd00::/8")},
		{name: "mixed", a: ps("10.0.0.0/8", "2001:db8::/32", "192.0.2.0/24"), b: ps("10.9.0.0/16", "2001:db8:1::/48", "198.51.100.0/24", "192.0.2.128/25"),
			want: ps("10.9.0.0/16", "192.0.2.128/25", "2001:db8:1::/48")},
		{name: "overlapping inputs deduplicated", a: ps("10.0.0.0/8", "10.1.0.0/16"), b: ps("10.1.0.0/16", "10.1.2.0/24"), want: ps("10.1.0.0/16")},
		{name: "unmasked inputs", a: ps("10.1.2.3/8"), b: ps("10.1.2.3/16"), want: ps("10.1.0.0/16")},
		{name: "host routes", a: ps("10.0.0.1/32", "10.0.0.2/32"), b: ps("10.0.0.0/30"), want: ps("10.0.0.1/32", "10.0.0.2/32")},
		{name: "empty a", a: ps(), b: ps("10.0.0.0/8"), want: ps()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range []string{"ab", "ba"} {
				x, y := tt.a, tt.b
				if order == "ba" {
					x, y = y, x
				}
				got := IntersectPrefixes(x, y)
				if tt.wantNil {
					if got != nil {
						t.Fatalf("%s: got %v, want nil", order, got)
					}
					continue
				}
				if got == nil || !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("%s: got %#v, want %v", order, got, tt.want)
				}
			}
		})
	}
}

func TestIntersectPorts(t *testing.T) {
	tests := []struct {
		name    string
		a, b    []PortRange
		want    []PortRange
		wantNil bool
	}{
		{name: "both nil", wantNil: true},
		{name: "a nil", b: []PortRange{{80, 80}, {443, 443}}, want: []PortRange{{80, 80}, {443, 443}}},
		{name: "b nil merges", a: []PortRange{{5, 9}, {1, 4}, {20, 30}, {25, 26}}, want: []PortRange{{1, 9}, {20, 30}}},
		{name: "equal", a: []PortRange{{443, 443}}, b: []PortRange{{443, 443}}, want: []PortRange{{443, 443}}},
		{name: "single in range", a: []PortRange{{443, 443}}, b: []PortRange{{1, 1024}}, want: []PortRange{{443, 443}}},
		{name: "partial overlap", a: []PortRange{{100, 200}}, b: []PortRange{{150, 300}}, want: []PortRange{{150, 200}}},
		{name: "touching", a: []PortRange{{100, 200}}, b: []PortRange{{200, 300}}, want: []PortRange{{200, 200}}},
		{name: "disjoint", a: []PortRange{{100, 199}}, b: []PortRange{{200, 300}}, want: []PortRange{}},
		{name: "many", a: []PortRange{{1, 100}, {1000, 2000}, {65535, 65535}}, b: []PortRange{{50, 1500}, {1800, 65535}},
			want: []PortRange{{50, 100}, {1000, 1500}, {1800, 2000}, {65535, 65535}}},
		{name: "adjacent results merged", a: []PortRange{{1, 10}, {11, 20}}, b: []PortRange{{5, 15}}, want: []PortRange{{5, 15}}},
		{name: "invalid ignored", a: []PortRange{{0, 5}, {9, 8}, {7, 7}}, b: []PortRange{{1, 10}}, want: []PortRange{{1, 5}, {7, 7}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, order := range []string{"ab", "ba"} {
				x, y := tt.a, tt.b
				if order == "ba" {
					x, y = y, x
				}
				got := IntersectPorts(x, y)
				if tt.wantNil {
					if got != nil {
						t.Fatalf("%s: got %v, want nil", order, got)
					}
					continue
				}
				if got == nil || !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("%s: got %#v, want %v", order, got, tt.want)
				}
			}
		})
	}
}

func TestTokensFileRejectsSignedToken(t *testing.T) {
	tok := mustIssue(t, keyA, Claims{User: "a", IssuedAt: t0})
	_, err := ParseTokens(strings.NewReader(tok+"\n"), "F")
	if err == nil || !strings.Contains(err.Error(), "line 1: this is a signed token") {
		t.Errorf("error %v", err)
	}
}

func FuzzParseSignedToken(f *testing.F) {
	keys := []ed25519.PublicKey{pubOf(keyA)}
	seeds := map[string]bool{}
	for _, c := range []Claims{
		// Fixed IDs: seeds must be the same in every fuzz worker process.
		{User: "a", ID: "0000000000000001", IssuedAt: t0},
		{User: "alice@example.com", ID: "0000000000000002", IssuedAt: t0, Expires: t0.Add(hour), Routes: []netip.Prefix{pfx("10.0.0.0/8"), pfx("::/0"), pfx("192.0.2.1/32")}, Ports: allow},
		{User: strings.Repeat("x", 64), ID: "0000000000000003", IssuedAt: t0, Routes: []netip.Prefix{pfx("2001:db8::1/128"), pfx("0.0.0.0/0")}},
		{User: "p", ID: "0000000000000004", IssuedAt: t0, Ports: []PortRange{{1, 65535}}},
	} {
		tok := mustIssue(f, keyA, c)
		seeds[tok] = true
		f.Add(tok)
	}
	f.Add(signRaw(keyA, []byte{1, 2, 3}))
	f.Add(SignedTokenPrefix + "AAAA.BBBB")
	f.Add("roam1..")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := ParseSignedToken(tok)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("error %v does not wrap ErrInvalidToken", err)
			}
		} else {
			// Accepted: the claims re-encode to exactly this payload.
			var r rawSigned
			if err := r.split(tok); err != nil {
				t.Fatal(err)
			}
			q := encodeForTest(t, c, r.payload[1:1+keyIDLen])
			if string(q) != string(r.payload[:r.n]) {
				t.Fatalf("payload % x re-encodes to % x", r.payload[:r.n], q)
			}
			c2, err := decodePayload(q, true)
			if err != nil || !reflect.DeepEqual(c, c2) {
				t.Fatalf("claims %+v re-decode to %+v, %v", c, c2, err)
			}
		}
		_, verr := VerifySignedToken(tok, keys)
		if verr == nil && !seeds[tok] {
			t.Fatalf("a token the fuzzer made verifies: %q", tok)
		}
		id, aerr := NewAuthenticator(AuthenticatorConfig{PublicKeys: keys}).Authenticate(tok, t0)
		if (aerr == nil) != (verr == nil) {
			t.Fatalf("Authenticate %+v, %v; VerifySignedToken %v", id, aerr, verr)
		}
		if aerr != nil && !errors.Is(aerr, ErrUnauthorized) {
			t.Fatalf("Authenticate error %v does not wrap ErrUnauthorized", aerr)
		}
	})
}

// encodeForTest re-encodes claims the way IssueToken does (by issuing with
// a throwaway key and swapping in the original key ID).
func encodeForTest(t *testing.T, c Claims, kid []byte) []byte {
	t.Helper()
	tok, err := IssueToken(keyB, c)
	if err != nil {
		t.Fatalf("accepted claims %+v do not reissue: %v", c, err)
	}
	p := payloadOf(t, tok)
	copy(p[1:1+keyIDLen], kid)
	return p
}

// BenchmarkAuthenticateMixed: plain and signed tokens through one
// Authenticator with a revocation list and a user policy.
func BenchmarkAuthenticateMixed(b *testing.B) {
	plain, _ := ParseTokens(strings.NewReader(tokA+"\n"+tokB+"\n"+tokC+"\n"), "bench")
	signed := mustIssue(b, keyA, Claims{User: "alice", IssuedAt: t0, Expires: t0.Add(hour),
		Routes: []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/8")}, Ports: allow})
	rev, _ := ParseRevocations(strings.NewReader("user mallory\nid tok-000000000000\n"), "bench")
	a := NewAuthenticator(AuthenticatorConfig{Tokens: plain, PublicKeys: []ed25519.PublicKey{pubOf(keyB), pubOf(keyA)}, Revoked: rev,
		Users: map[string]UserPolicy{"alice": {Routes: []netip.Prefix{pfx("10.1.0.0/16")}}}})
	for _, bc := range []struct{ name, tok string }{{"plain", tokB}, {"signed", signed}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Authenticate(bc.tok, t0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("signed-bad-signature", func(b *testing.B) {
		bad := []byte(signed)
		i := strings.LastIndexByte(signed, '.') + 1 // in R: a full verification
		bad[i] = map[bool]byte{true: 'A', false: 'B'}[bad[i] != 'A']
		b.ReportAllocs()
		for b.Loop() {
			if _, err := a.Authenticate(string(bad), t0); err == nil {
				b.Fatal("accepted")
			}
		}
	})
}

// BenchmarkAuthenticateSigned is the per-request cost of a signed token
// without a user policy (parse, Ed25519ctx verify, checks, Identity).
func BenchmarkAuthenticateSigned(b *testing.B) {
	signed := mustIssue(b, keyA, Claims{User: "alice", IssuedAt: t0, Expires: t0.Add(hour),
		Routes: []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/8")}, Ports: allow})
	a := NewAuthenticator(AuthenticatorConfig{PublicKeys: []ed25519.PublicKey{pubOf(keyA)}, Revoked: &Revocations{}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(signed, t0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAuthenticatePlain(b *testing.B) {
	plain, _ := ParseTokens(strings.NewReader(tokA+"\n"+tokB+"\n"+tokC+"\n"), "bench")
	a := NewAuthenticator(AuthenticatorConfig{Tokens: plain, Revoked: &Revocations{}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(tokB, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAuthenticateAllocs: plain tokens allocate nothing; a signed token
// allocates only what its Identity holds (Owner, User, Routes, Ports) and
// what crypto/ed25519 does inside.
func TestAuthenticateAllocs(t *testing.T) {
	plain, _ := ParseTokens(strings.NewReader(tokA+"\n"+tokB+"\n"), "T")
	signed := mustIssue(t, keyA, Claims{User: "alice", IssuedAt: t0, Routes: []netip.Prefix{pfx("10.0.0.0/8")}, Ports: allow})
	a := NewAuthenticator(AuthenticatorConfig{Tokens: plain, PublicKeys: []ed25519.PublicKey{pubOf(keyA)}, Revoked: &Revocations{}})
	if n := testing.AllocsPerRun(20, func() { a.Authenticate(tokB, t0) }); n != 0 {
		t.Errorf("plain: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(20, func() { a.Authenticate(signed, t0) }); n > 6 {
		t.Errorf("signed: %v allocations, want at most 6", n)
	}
}
