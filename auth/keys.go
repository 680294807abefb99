package auth

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// File names of the token signing key pair inside the state directory.
const (
	SigningKeyFileName = "token.key"
	PublicKeyFileName  = "token.pub"
)

// publicKeyPrefix starts a public key line.
const publicKeyPrefix = "ed25519:"

const publicKeyForm = `expected "ed25519:<44 base64 characters>" or a PEM "PUBLIC KEY" block`

// FormatPublicKey returns pub as one line of a public keys file:
// "ed25519:" and the standard (padded) base64 of its 32 bytes.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return publicKeyPrefix + base64.StdEncoding.EncodeToString(pub)
}

// LoadOrCreateSigningKey returns the token signing key kept in
// dir/token.key (PKCS#8 PEM "PRIVATE KEY", mode 0600), creating dir (mode
// 0700) and a new Ed25519 key if the file does not exist; created is then
// true. It also makes sure dir/token.pub (mode 0644, the format of
// LoadPublicKeys) holds the key's public half: it is written if missing,
// and if present but without that key it is an error naming both files
// (nothing is overwritten). Files are written atomically.
func LoadOrCreateSigningKey(dir string) (key ed25519.PrivateKey, created bool, err error) {
	keyFile := filepath.Join(dir, SigningKeyFileName)
	pubFile := filepath.Join(dir, PublicKeyFileName)
	exists, err := fileExists(keyFile)
	if err != nil {
		return nil, false, fmt.Errorf("signing key file %s: %w", keyFile, unwrapPathError(err))
	}
	if exists {
		if key, err = LoadSigningKey(keyFile); err != nil {
			return nil, false, err
		}
	} else {
		_, key, err = ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, false, fmt.Errorf("generate signing key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, false, fmt.Errorf("encode signing key: %w", err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, false, fmt.Errorf("state dir: %w", err)
		}
		if err := writeFileAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, false, err
		}
		created = true
	}
	pub := key.Public().(ed25519.PublicKey)
	pubExists, err := fileExists(pubFile)
	if err != nil {
		return nil, false, fmt.Errorf("public keys file %s: %w", pubFile, unwrapPathError(err))
	}
	if pubExists && !created {
		keys, err := LoadPublicKeys(pubFile)
		if err != nil {
			return nil, false, err
		}
		for _, k := range keys {
			if k.Equal(pub) {
				return key, created, nil
			}
		}
		return nil, false, fmt.Errorf("%w: public keys file %s does not hold the public key of %s (%s); add the line %s to it, or remove it to have it rewritten",
			ErrInvalidKey, pubFile, keyFile, KeyID(pub), FormatPublicKey(pub))
	}
	content := "# Roam token public key " + KeyID(pub) + ": servers verify signed tokens with it (--token-key).\n" +
		FormatPublicKey(pub) + "\n"
	if err := writeFileAtomic(pubFile, []byte(content), 0o644); err != nil {
		return nil, false, err
	}
	return key, created, nil
}

// LoadSigningKey reads an Ed25519 token signing key from a PEM file
// holding a PKCS#8 "PRIVATE KEY" block (as LoadOrCreateSigningKey writes
// and `openssl genpkey -algorithm ed25519` makes). Errors name the file and
// wrap ErrInvalidKey or the I/O error.
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key file %s: %w", path, unwrapPathError(err))
	}
	var block *pem.Block
	for rest := data; ; {
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf(`%w: signing key file %s: no PEM "PRIVATE KEY" block found; expected a PKCS#8 Ed25519 key`, ErrInvalidKey, path)
		}
		if block.Type == "PRIVATE KEY" {
			break
		}
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: signing key file %s: %v", ErrInvalidKey, path, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%w: signing key file %s: a %T, expected an Ed25519 key", ErrInvalidKey, path, k)
	}
	return key, nil
}

// LoadPublicKeys reads the token public keys file at path; see
// ParsePublicKeys for the format. Errors name the file (and line).
func LoadPublicKeys(path string) ([]ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("public keys file %s: %w", path, unwrapPathError(err))
	}
	defer f.Close()
	return ParsePublicKeys(f, path)
}

// ParsePublicKeys reads token public keys from r; name is used in error
// messages. Each line is blank, a comment ('#' at the start or after
// whitespace, to the end of the line), or one key as
//
//	ed25519:<standard base64 of the 32-byte key>   (FormatPublicKey)
//
// PEM "PUBLIC KEY" blocks (PKIX, as `openssl pkey -pubout` writes) are
// accepted too, each line of the block on its own line. Duplicate keys are
// kept once. A file with no key is an error. Errors are "public keys file
// NAME: line N: ..." with the expected form, and wrap ErrInvalidKey.
func ParsePublicKeys(r io.Reader, name string) ([]ed25519.PublicKey, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLineLen)
	var (
		keys      []ed25519.PublicKey
		lineNo    int
		pemStart  int             // line of the open BEGIN, 0 outside a block
		pemBody   strings.Builder // base64 lines of the open block
		lineError = func(line int, format string, args ...any) error {
			return &detailError{
				msg:  fmt.Sprintf("public keys file %s: line %d: ", name, line) + fmt.Sprintf(format, args...),
				kind: ErrInvalidKey,
			}
		}
	)
	add := func(k ed25519.PublicKey) {
		for _, have := range keys {
			if have.Equal(k) {
				return
			}
		}
		keys = append(keys, k)
	}
	for sc.Scan() {
		lineNo++
		raw := sc.Bytes()
		if lineNo == 1 {
			raw = bytes.TrimPrefix(raw, []byte("\xef\xbb\xbf"))
		}
		line := strings.TrimSpace(string(raw))
		if pemStart > 0 {
			if strings.HasPrefix(line, "-----END ") {
				if line != "-----END PUBLIC KEY-----" {
					return nil, lineError(lineNo, "%q does not close the PUBLIC KEY block of line %d", line, pemStart)
				}
				der, err := base64.StdEncoding.DecodeString(pemBody.String())
				if err != nil {
					return nil, lineError(pemStart, "PEM block: bad base64: %v", err)
				}
				k, err := x509.ParsePKIXPublicKey(der)
				if err != nil {
					return nil, lineError(pemStart, "PEM block: %v", err)
				}
				pub, ok := k.(ed25519.PublicKey)
				if !ok {
					return nil, lineError(pemStart, "PEM block holds a %T, expected an Ed25519 key", k)
				}
				add(pub)
				pemStart = 0
				pemBody.Reset()
				continue
			}
			if strings.Contains(line, ":") { // PEM headers: none expected in a public key
				return nil, lineError(lineNo, "unexpected PEM header %q", line)
			}
			pemBody.WriteString(line)
			continue
		}
		line = strings.TrimSpace(string(stripComment([]byte(line))))
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "-----BEGIN "):
			if line != "-----BEGIN PUBLIC KEY-----" {
				return nil, lineError(lineNo, "PEM block %q: %s", line, publicKeyForm)
			}
			pemStart = lineNo
		case strings.HasPrefix(line, publicKeyPrefix):
			b, err := base64.StdEncoding.Strict().DecodeString(line[len(publicKeyPrefix):])
			if err != nil || len(b) != ed25519.PublicKeySize {
				return nil, lineError(lineNo, "bad key %q: %s", line, publicKeyForm)
			}
			add(ed25519.PublicKey(b))
		default:
			return nil, lineError(lineNo, "%q: %s", line, publicKeyForm)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, lineError(lineNo+1, "line longer than %d bytes", maxLineLen)
		}
		return nil, fmt.Errorf("public keys file %s: read: %w", name, unwrapPathError(err))
	}
	if pemStart > 0 {
		return nil, lineError(pemStart, "PEM block not closed by -----END PUBLIC KEY-----")
	}
	if len(keys) == 0 {
		return nil, &detailError{msg: fmt.Sprintf("public keys file %s: no keys; %s per line", name, publicKeyForm), kind: ErrInvalidKey}
	}
	return keys, nil
}
