package main

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/roamvpn/roam/auth"
)

// runTok runs `roam token ARGS...` in-process.
func runTok(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runArgs(t, context.Background(), append([]string{"token"}, args...)...)
}

// authenticatorFor builds the Authenticator a server with state dir dir
// would: its token.pub and revocation list.
func authenticatorFor(t *testing.T, dir string) *auth.Authenticator {
	t.Helper()
	keys, err := auth.LoadPublicKeys(filepath.Join(dir, auth.PublicKeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	rev, err := auth.LoadRevocations(filepath.Join(dir, auth.RevocationsFileName))
	if err != nil {
		t.Fatal(err)
	}
	return auth.NewAuthenticator(auth.AuthenticatorConfig{PublicKeys: keys, Revoked: rev})
}

func TestTokenNew(t *testing.T) {
	seen := map[string]bool{}
	for _, args := range [][]string{nil, {"new"}} {
		code, out, errOut := runTok(t, args...)
		tok := strings.TrimSpace(out)
		if code != 0 || errOut != "" || len(tok) != 43 || strings.Count(out, "\n") != 1 || seen[tok] {
			t.Fatalf("roam token %v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
		seen[tok] = true
	}
}

func TestTokenIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	before := time.Now().Truncate(time.Second)
	code, out, errOut := runTok(t, "issue", "--user", "alice@example.com", "--expires", "30d",
		"--route", "10.1.2.3/16", "--route", "fd00::/8", "--port", "443", "--port", "8000-8100", "--state-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	tok := strings.TrimSpace(out)
	if strings.Count(out, "\n") != 1 || !auth.IsSignedToken(tok) {
		t.Fatalf("stdout %q: want one signed token line", out)
	}
	if !strings.Contains(errOut, "created the token signing key "+filepath.Join(dir, "token.key")) {
		t.Errorf("stderr does not tell about the new key: %q", errOut)
	}
	summary := "issued token " + auth.TokenID(tok) + " for user alice@example.com, expires "
	if !strings.Contains(errOut, summary) {
		t.Errorf("stderr %q lacks %q", errOut, summary)
	}

	id, err := authenticatorFor(t, dir).Authenticate(tok, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wantRoutes := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("fd00::/8")}
	wantPorts := []auth.PortRange{{Lo: 443, Hi: 443}, {Lo: 8000, Hi: 8100}}
	if id.User != "alice@example.com" || id.Owner != auth.TokenID(tok) || !reflect.DeepEqual(id.Routes, wantRoutes) || !reflect.DeepEqual(id.Ports, wantPorts) {
		t.Errorf("identity %+v", id)
	}
	if want := before.Add(30 * 24 * time.Hour); id.Expires.Before(want) || id.Expires.After(want.Add(5*time.Second)) {
		t.Errorf("expires %v, want about %v", id.Expires, want)
	}

	// Second issue with the same state dir: same key, no "created" notice.
	code, out2, errOut := runTok(t, "issue", "--user", "bob", "--expires", "2h30m", "--state-dir", dir)
	if code != 0 || strings.Contains(errOut, "created") || !strings.Contains(errOut, "routes any, ports any") {
		t.Fatalf("second issue: exit %d, stderr %q", code, errOut)
	}
	if id, err := authenticatorFor(t, dir).Authenticate(strings.TrimSpace(out2), time.Now()); err != nil || id.User != "bob" || id.Routes != nil {
		t.Fatalf("bob: %+v, %v", id, err)
	}

	// --key FILE (an openssl-style PKCS#8 key) and an RFC 3339 expiry.
	_, priv, _ := ed25519.GenerateKey(nil)
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	keyFile := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	exp := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	code, out3, errOut := runTok(t, "issue", "--user", "carol", "--key", keyFile, "--expires", exp.Format(time.RFC3339))
	if code != 0 {
		t.Fatalf("--key: exit %d: %s", code, errOut)
	}
	c, err := auth.VerifySignedToken(strings.TrimSpace(out3), []ed25519.PublicKey{priv.Public().(ed25519.PublicKey)})
	if err != nil || !c.Expires.Equal(exp) || c.User != "carol" {
		t.Fatalf("--key token: %+v, %v", c, err)
	}
	if _, err := authenticatorFor(t, dir).Authenticate(strings.TrimSpace(out3), time.Now()); err == nil {
		t.Error("a token of another key verifies with the state dir's key")
	}
}

func TestTokenRevoke(t *testing.T) {
	dir := t.TempDir()
	issue := func(user string) string {
		code, out, errOut := runTok(t, "issue", "--user", user, "--state-dir", dir)
		if code != 0 {
			t.Fatalf("issue: %s", errOut)
		}
		return strings.TrimSpace(out)
	}
	alice1, alice2, bob, carol := issue("alice"), issue("alice"), issue("bob"), issue("carol")
	for _, tok := range []string{alice1, alice2, bob, carol} {
		if _, err := authenticatorFor(t, dir).Authenticate(tok, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		args    []string
		revoked []string // now rejected
		kept    []string // still accepted
	}{
		{[]string{alice1, "--state-dir", dir}, []string{alice1}, []string{alice2, bob, carol}},
		{[]string{"--id", auth.TokenID(bob), "--comment", "left the team", "--state-dir", dir}, []string{alice1, bob}, []string{alice2, carol}},
		{[]string{"--state-dir", dir, "--user", "alice"}, []string{alice1, alice2, bob}, []string{carol}},
	}
	for _, st := range steps {
		code, out, errOut := runTok(t, append([]string{"revoke"}, st.args...)...)
		if code != 0 || !strings.Contains(out, "send SIGHUP to the server") {
			t.Fatalf("revoke %v: exit %d, stdout %q, stderr %q", st.args, code, out, errOut)
		}
		a := authenticatorFor(t, dir)
		for _, tok := range st.revoked {
			if _, err := a.Authenticate(tok, time.Now()); !errors.Is(err, auth.ErrUnauthorized) || !strings.Contains(err.Error(), "revoked") {
				t.Errorf("after %v: %s: %v, want revoked", st.args, auth.TokenID(tok), err)
			}
		}
		for _, tok := range st.kept {
			if _, err := a.Authenticate(tok, time.Now()); err != nil {
				t.Errorf("after %v: %s rejected: %v", st.args, auth.TokenID(tok), err)
			}
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "revoked"))
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "id "+auth.TokenID(alice1)+" # revoked ") || !strings.HasSuffix(lines[0], ", user alice") ||
		lines[1] != "id "+auth.TokenID(bob)+" # left the team" || !strings.HasPrefix(lines[2], "user alice # revoked") {
		t.Errorf("revocation file:\n%s", b)
	}

	// A plain token, into a --file, after "--" since it may start with '-'.
	file := filepath.Join(t.TempDir(), "list")
	plain := "-plain-token-0123456789"
	if code, _, errOut := runTok(t, "revoke", "--file", file, "--", plain); code != 0 {
		t.Fatalf("revoke plain: %s", errOut)
	}
	rev, err := auth.LoadRevocations(file)
	if err != nil || !rev.RevokedID(auth.TokenID(plain)) {
		t.Fatalf("plain token not revoked: %v", err)
	}
}

func TestTokenInspect(t *testing.T) {
	dir := t.TempDir()
	code, out, _ := runTok(t, "issue", "--user", "dave", "--route", "192.0.2.0/24", "--port", "22", "--expires", "1h", "--state-dir", dir)
	if code != 0 {
		t.Fatal("issue failed")
	}
	tok := strings.TrimSpace(out)
	claims, err := auth.ParseSignedToken(tok)
	if err != nil || claims.Expires.Sub(claims.IssuedAt) != time.Hour {
		t.Fatalf("claims %+v, %v", claims, err)
	}
	code, out, errOut := runTok(t, "inspect", tok, "--state-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"token id   " + auth.TokenID(tok), "user       dave", "routes     192.0.2.0/24", "ports      22", "expires    " + claims.Expires.Format(time.RFC3339) + " (in ", "signature  ok (key in " + filepath.Join(dir, "token.pub")} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	// Without a key: claims, signature not checked.
	code, out, _ = runTok(t, "inspect", "--state-dir", t.TempDir(), tok)
	if code != 0 || !strings.Contains(out, "signature  not checked") {
		t.Errorf("no key: exit %d\n%s", code, out)
	}
	// With another key: exit 1.
	other := t.TempDir()
	runTok(t, "issue", "--user", "x", "--state-dir", other)
	code, out, errOut = runTok(t, "inspect", "--pub", filepath.Join(other, "token.pub"), tok)
	if code != 1 || !strings.Contains(out, "signature  INVALID") || !strings.Contains(errOut, "unknown signing key") {
		t.Errorf("other key: exit %d\n%s%s", code, out, errOut)
	}
	// Malformed: exit 1 with the reason.
	code, _, errOut = runTok(t, "inspect", tok[:len(tok)-3])
	if code != 1 || !strings.Contains(errOut, "malformed signed token") {
		t.Errorf("malformed: exit %d, %q", code, errOut)
	}
	code, out, _ = runTok(t, "inspect", "just-a-plain-token-xyz")
	if code != 0 || !strings.Contains(out, "plain") || !strings.Contains(out, auth.TokenID("just-a-plain-token-xyz")) {
		t.Errorf("plain: exit %d\n%s", code, out)
	}
}

func TestTokenBadFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"frob"}, `unknown subcommand "frob"`},
		{[]string{"new", "x"}, "token new: unexpected argument"},
		{[]string{"issue"}, "flag --user is required"},
		{[]string{"issue", "--user", "a b"}, "--user"},
		{[]string{"issue", "--user", strings.Repeat("a", 65)}, "--user"},
		{[]string{"issue", "--user", "a", "--expires", "soon"}, "--expires"},
		{[]string{"issue", "--user", "a", "--expires", "-5h"}, "--expires"},
		{[]string{"issue", "--user", "a", "--expires", "0d"}, "--expires"},
		{[]string{"issue", "--user", "a", "--expires", "2001-01-01T00:00:00Z"}, "--expires"},
		{[]string{"issue", "--user", "a", "--route", "10.0.0.0/33"}, "--route"},
		{[]string{"issue", "--user", "a", "--port", "0"}, "--port"},
		{[]string{"issue", "--user", "a", "--port", "9-8"}, "--port"},
		{[]string{"issue", "--user", "a", "--port", "70000"}, "--port"},
		{[]string{"issue", "--user", "a", "--key", "k", "--state-dir", dir}, "--key and --state-dir"},
		{[]string{"issue", "--user", "a", "--bogus"}, "--bogus"},
		{[]string{"issue", "--user", "a", "extra"}, "unexpected argument"},
		{[]string{"revoke", "--state-dir", dir}, "exactly one of TOKEN, --id ID or --user NAME"},
		{[]string{"revoke", "--state-dir", dir, "--user", "a", "--id", "tok-000000000000"}, "exactly one"},
		{[]string{"revoke", "--state-dir", dir, "a-token-0123456789", "b-token-0123456789"}, "unexpected argument"},
		{[]string{"revoke", "--state-dir", dir, "--id", "tok-xyz"}, "--id"},
		{[]string{"revoke", "--state-dir", dir, "--id", "3ba3f5f43b92"}, "--id"},
		{[]string{"revoke", "--state-dir", dir, "--user", "a/b"}, "--user"},
		{[]string{"revoke", "--state-dir", dir, "short"}, "is not a token"},
		{[]string{"revoke", "--file", "f", "--state-dir", dir, "--user", "a"}, "--file and --state-dir"},
		{[]string{"revoke", "--state-dir", dir, "--user", "a", "--comment", "two\nlines"}, "--comment"},
		{[]string{"revoke", "--state-dir", dir, "--nope"}, "--nope"},
		{[]string{"inspect"}, "expected one TOKEN argument, got 0"},
		{[]string{"inspect", "a", "b"}, "got 2"},
		{[]string{"inspect", "--pub", "p", "--state-dir", dir, "x"}, "--pub and --state-dir"},
		{[]string{"inspect", "--what", "x"}, "--what"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runTok(t, tt.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (stdout %q, stderr %q)", code, out, errOut)
			}
			if strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, tt.want) || !strings.HasPrefix(errOut, "roam token") {
				t.Fatalf("want one line mentioning %q, got %q", tt.want, errOut)
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("bad command lines wrote %d files into the state dir", len(entries))
	}
}
