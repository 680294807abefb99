package auth

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// SecretFile is the name of the server secret in the state directory.
const SecretFile = "secret"

// SecretLen is the length of a server secret in bytes.
const SecretLen = 32

// LoadOrCreateSecret returns the server secret kept in stateDir/secret (64
// hex digits and a newline, mode 0600), creating it from crypto/rand if the
// file does not exist. The secret is what makes a restarted server
// recognisable to its clients: keys derived from it (stateless resets,
// session tickets) stay the same across restarts. A file that exists but
// does not hold exactly 64 hex digits is an error naming the file.
func LoadOrCreateSecret(stateDir string) (secret []byte, created bool, err error) {
	path := filepath.Join(stateDir, SecretFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		s, perr := parseSecret(data)
		if perr != nil {
			return nil, false, fmt.Errorf("%s: %w", path, perr)
		}
		return s, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("read %s: %w", path, unwrapPathError(err))
	}
	secret = make([]byte, SecretLen)
	rand.Read(secret) // never fails (crypto/rand)
	if err := writeFileAtomic(path, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return nil, false, err
	}
	return secret, true, nil
}

func parseSecret(data []byte) ([]byte, error) {
	data = bytes.TrimSpace(data)
	if len(data) != 2*SecretLen {
		return nil, fmt.Errorf("expected %d hex digits (a %d-byte secret), found %d characters; delete the file to make a new one", 2*SecretLen, SecretLen, len(data))
	}
	s := make([]byte, SecretLen)
	if _, err := hex.Decode(s, data); err != nil {
		return nil, fmt.Errorf("expected %d hex digits: %v", 2*SecretLen, err)
	}
	return s, nil
}
