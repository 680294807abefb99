package auth

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateSecret(t *testing.T) {
	dir := t.TempDir()
	s1, created, err := LoadOrCreateSecret(dir)
	if err != nil || !created || len(s1) != SecretLen {
		t.Fatalf("first call: %x, %v, %v", s1, created, err)
	}
	st, err := os.Stat(filepath.Join(dir, SecretFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, %v", st, err)
	}
	s2, created, err := LoadOrCreateSecret(dir)
	if err != nil || created || !bytes.Equal(s1, s2) {
		t.Fatalf("second call: %x, %v, %v; want %x", s2, created, err, s1)
	}
	for _, tt := range []struct{ name, content, want string }{
		{"short", "abcd\n", "expected 64 hex digits"},
		{"not hex", strings.Repeat("zz", 32), "expected 64 hex digits"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			os.WriteFile(filepath.Join(d, SecretFile), []byte(tt.content), 0o600)
			_, _, err := LoadOrCreateSecret(d)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), filepath.Join(d, SecretFile)) {
				t.Fatalf("err = %v, want it to name the file and say %q", err, tt.want)
			}
		})
	}
}
