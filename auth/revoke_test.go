package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRevocations(t *testing.T) {
	id1, id2 := TokenID(tokA), TokenID(tokB)
	tests := []struct {
		name      string
		in        string
		ids       []string
		users     []string
		notIDs    []string
		notUsers  []string
		wantError string
	}{
		{name: "empty", in: ""},
		{name: "comments only", in: "# revoked tokens\n\n   # indented\n"},
		{name: "entries", in: "\xef\xbb\xbfid " + id1 + "  # lost laptop\r\nuser bob\n\tuser alice@example.com # left\nid " + id2 + "\nid " + id1 + "\n",
			ids: []string{id1, id2}, users: []string{"bob", "alice@example.com"}, notIDs: []string{"tok-000000000000"}, notUsers: []string{"Bob", "carol"}},
		{name: "unknown kind", in: "\ntoken " + id1 + "\n", wantError: `R: line 2: unknown kind "token"; expected "id tok-<12 hex digits>" or "user NAME"`},
		{name: "one word", in: "id\n", wantError: `R: line 1: 1 words; expected "id tok-<12 hex digits>"`},
		{name: "three words", in: "user bob extra\n", wantError: "R: line 1: 3 words"},
		{name: "bad id", in: "id tok-XYZ\n", wantError: `R: line 1: token ID "tok-XYZ": expected tok- and 12 lowercase hex digits`},
		{name: "id without prefix", in: "id 3ba3f5f43b92\n", wantError: "R: line 1: token ID"},
		{name: "upper hex id", in: "id tok-3BA3F5F43B92\n", wantError: "R: line 1: token ID"},
		{name: "bad user", in: "user bjørn\n", wantError: `R: line 1: user "bjørn": expected 1..64 characters`},
		{name: "comment glued", in: "user bob#x\n", wantError: `R: line 1: user "bob#x"`},
		{name: "line too long", in: "user a\n#" + strings.Repeat("x", maxLineLen+1), wantError: "R: line 2: line longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRevocations(strings.NewReader(tt.in), "R")
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) || !errors.Is(err, ErrInvalidRevocation) || !strings.HasPrefix(err.Error(), "revocations file R: line ") {
					t.Fatalf("error %v, want one containing %q", err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range tt.ids {
				if !r.RevokedID(id) {
					t.Errorf("id %s not revoked", id)
				}
			}
			for _, u := range tt.users {
				if !r.RevokedUser(u) {
					t.Errorf("user %s not revoked", u)
				}
			}
			for _, id := range tt.notIDs {
				if r.RevokedID(id) {
					t.Errorf("id %s revoked", id)
				}
			}
			for _, u := range tt.notUsers {
				if r.RevokedUser(u) {
					t.Errorf("user %s revoked", u)
				}
			}
			if r.Len() != len(tt.ids)+len(tt.users) {
				t.Errorf("Len %d", r.Len())
			}
		})
	}
	var nilRev *Revocations
	if nilRev.RevokedID(id1) || nilRev.RevokedUser("bob") || nilRev.Len() != 0 {
		t.Error("nil *Revocations revokes something")
	}
}

func TestLoadAndAppendRevocation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, RevocationsFileName)
	r, err := LoadRevocations(path)
	if err != nil || r == nil || r.Len() != 0 {
		t.Fatalf("missing file: %v, %v", r, err)
	}
	if err := AppendRevocation(path, RevokeID, TokenID(tokA), "lost laptop"); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, err %v; want 0600", st.Mode().Perm(), err)
	}
	if err := AppendRevocation(path, RevokeUser, "bob", ""); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if want := "id " + TokenID(tokA) + " # lost laptop\nuser bob\n"; string(b) != want {
		t.Errorf("file %q, want %q", b, want)
	}
	// A file without a final newline gets one before the new line.
	os.WriteFile(path, []byte("user bob"), 0o600)
	if err := AppendRevocation(path, RevokeUser, "carol", "x"); err != nil {
		t.Fatal(err)
	}
	r, err = LoadRevocations(path)
	if err != nil || !r.RevokedUser("bob") || !r.RevokedUser("carol") {
		t.Fatalf("after append: %v (%d entries)", err, r.Len())
	}

	tests := []struct {
		name, kind, value, comment, want string
	}{
		{"bad kind", "token", "x", "", `unknown kind "token"`},
		{"bad id", RevokeID, "abc", "", `token ID "abc"`},
		{"bad user", RevokeUser, "a b", "", `user "a b"`},
		{"multi-line comment", RevokeUser, "dave", "a\nb", "comment must be one line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := os.ReadFile(path)
			err := AppendRevocation(path, tt.kind, tt.value, tt.comment)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				t.Error("file changed on error")
			}
		})
	}

	// A corrupt file is reported with its line and left alone.
	os.WriteFile(path, []byte("user bob\nbogus line here\n"), 0o600)
	err = AppendRevocation(path, RevokeUser, "erin", "")
	if err == nil || !strings.Contains(err.Error(), "revocations file "+path+": line 2: 3 words") || !strings.Contains(err.Error(), "fix it") {
		t.Errorf("corrupt file error %v", err)
	}
	if _, err := LoadRevocations(path); err == nil {
		t.Error("corrupt file loaded")
	}
	if _, err := LoadRevocations(dir); err == nil || !strings.Contains(err.Error(), "revocations file "+dir+": read: ") {
		t.Errorf("directory: %v", err)
	}
}
