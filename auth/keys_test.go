package auth

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateSigningKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	key, created, err := LoadOrCreateSigningKey(dir)
	if err != nil || !created {
		t.Fatalf("created %v, err %v", created, err)
	}
	keyFile, pubFile := filepath.Join(dir, SigningKeyFileName), filepath.Join(dir, PublicKeyFileName)
	for file, mode := range map[string]os.FileMode{keyFile: 0o600, pubFile: 0o644, dir: 0o700} {
		if st, err := os.Stat(file); err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, err %v; want %v", file, st.Mode().Perm(), err, mode)
		}
	}
	pem, _ := os.ReadFile(keyFile)
	if !strings.HasPrefix(string(pem), "-----BEGIN PRIVATE KEY-----\n") {
		t.Errorf("key file %q", pem)
	}
	pubs, err := LoadPublicKeys(pubFile)
	if err != nil || len(pubs) != 1 || !pubs[0].Equal(key.Public()) {
		t.Fatalf("public keys %v, err %v", pubs, err)
	}

	// Second call loads the same key.
	again, created, err := LoadOrCreateSigningKey(dir)
	if err != nil || created || !again.Equal(key) {
		t.Fatalf("reload: created %v, err %v, same %v", created, err, again.Equal(key))
	}
	// A missing token.pub is rewritten.
	os.Remove(pubFile)
	if _, _, err := LoadOrCreateSigningKey(dir); err != nil {
		t.Fatal(err)
	}
	if pubs, err := LoadPublicKeys(pubFile); err != nil || !pubs[0].Equal(key.Public()) {
		t.Fatalf("rewritten public keys %v, err %v", pubs, err)
	}
	// A token.pub without this key is an error; nothing is overwritten.
	other := FormatPublicKey(pubOf(keyB)) + "\n"
	os.WriteFile(pubFile, []byte(other), 0o644)
	_, _, err = LoadOrCreateSigningKey(dir)
	if err == nil || !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), pubFile+" does not hold the public key of "+keyFile) {
		t.Errorf("mismatch error %v", err)
	}
	if b, _ := os.ReadFile(pubFile); string(b) != other {
		t.Error("token.pub was overwritten")
	}
	// token.pub with more keys including this one is fine.
	os.WriteFile(pubFile, []byte(other+FormatPublicKey(key.Public().(ed25519.PublicKey))+"\n"), 0o644)
	if _, _, err := LoadOrCreateSigningKey(dir); err != nil {
		t.Error(err)
	}
	// A corrupt key file is an error naming it.
	os.WriteFile(keyFile, []byte("garbage"), 0o600)
	if _, _, err := LoadOrCreateSigningKey(dir); err == nil || !strings.Contains(err.Error(), "signing key file "+keyFile) {
		t.Errorf("corrupt key error %v", err)
	}
}

func TestLoadSigningKeyErrors(t *testing.T) {
	dir := t.TempDir()
	ecCert, _, _, err := generateCert(nil, nil, t0)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecCert.PrivateKey)
	edDER, _ := x509.MarshalPKCS8PrivateKey(keyA)
	tests := []struct {
		name, content, want string
	}{
		{"empty", "", `no PEM "PRIVATE KEY" block found`},
		{"not pem", "ed25519:abc\n", `no PEM "PRIVATE KEY" block`},
		{"ecdsa", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})), "expected an Ed25519 key"},
		{"bad der", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})), "signing key file"},
		{"after a certificate", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ecCert.Certificate[0]})) +
			string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER})), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			os.WriteFile(path, []byte(tt.content), 0o600)
			k, err := LoadSigningKey(path)
			if tt.want == "" {
				if err != nil || !k.Equal(keyA) {
					t.Fatalf("key %v, err %v", k, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) || !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("error %v, want one naming %s and containing %q", err, path, tt.want)
			}
		})
	}
	if _, err := LoadSigningKey(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing: open: ") {
		t.Errorf("missing file error %v", err)
	}
}

func TestParsePublicKeys(t *testing.T) {
	a, b := FormatPublicKey(pubOf(keyA)), FormatPublicKey(pubOf(keyB))
	pkix, _ := x509.MarshalPKIXPublicKey(pubOf(keyB))
	pemB := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix}))
	ecCert, _, _, _ := generateCert(nil, nil, t0)
	ecPKIX, _ := x509.MarshalPKIXPublicKey(ecCert.Leaf.PublicKey)
	pemEC := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: ecPKIX}))
	tests := []struct {
		name, in string
		want     []ed25519.PublicKey
		err      string
	}{
		{name: "one", in: a + "\n", want: []ed25519.PublicKey{pubOf(keyA)}},
		{name: "comments and blanks", in: "\xef\xbb\xbf# keys\n\n  " + a + "  # laptop\r\n" + b, want: []ed25519.PublicKey{pubOf(keyA), pubOf(keyB)}},
		{name: "duplicate kept once", in: a + "\n" + a + "\n", want: []ed25519.PublicKey{pubOf(keyA)}},
		{name: "pem", in: "# openssl\n" + pemB + a + "\n", want: []ed25519.PublicKey{pubOf(keyB), pubOf(keyA)}},
		{name: "empty", in: "# nothing\n", err: "public keys file F: no keys"},
		{name: "bare base64", in: a[len("ed25519:"):] + "\n", err: "F: line 1: "},
		{name: "short key", in: "\n\ned25519:AAAA\n", err: `F: line 3: bad key "ed25519:AAAA": expected "ed25519:<44 base64 characters>"`},
		{name: "bad base64", in: a[:len(a)-2] + "!=\n", err: "F: line 1: bad key"},
		{name: "missing padding", in: strings.TrimRight(a, "=") + "\n", err: "F: line 1: bad key"},
		{name: "other type", in: "ssh-ed25519 AAAAC3Nz\n", err: `F: line 1: "ssh-ed25519 AAAAC3Nz": expected`},
		{name: "pem of ecdsa", in: a + "\n" + pemEC, err: "F: line 2: PEM block holds a *ecdsa.PublicKey, expected an Ed25519 key"},
		{name: "pem private key", in: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", err: `F: line 1: PEM block "-----BEGIN PRIVATE KEY-----"`},
		{name: "pem unclosed", in: a + "\n-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n", err: "F: line 2: PEM block not closed"},
		{name: "pem bad end", in: "-----BEGIN PUBLIC KEY-----\nMCow\n-----END RSA PUBLIC KEY-----\n", err: "F: line 3: "},
		{name: "pem bad base64", in: "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n", err: "F: line 1: PEM block: bad base64"},
		{name: "line too long", in: a + "\n#" + strings.Repeat("x", maxLineLen+1), err: "F: line 2: line longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePublicKeys(strings.NewReader(tt.in), "F")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), "public keys file "+tt.err) && !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrInvalidKey) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, tt.err)
				}
				if !strings.HasPrefix(err.Error(), "public keys file F: ") {
					t.Errorf("error %q does not name the file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d keys, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !got[i].Equal(tt.want[i]) {
					t.Errorf("key %d differs", i)
				}
			}
		})
	}
	if _, err := LoadPublicKeys(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "public keys file ") {
		t.Errorf("missing file: %v", err)
	}
}
