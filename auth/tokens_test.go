package auth

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	tokA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" // 32 chars
	tokB = "bbbbbbbbbbbbbbbb-#b"              // '#' inside a token is part of it
	tokC = "cccccccccccccccc"                 // exactly MinTokenLen
)

func TestParseTokens(t *testing.T) {
	long := strings.Repeat("x", MaxTokenLen)
	tests := []struct {
		name    string
		in      string
		want    []tokenEntry // nil when an error is expected
		wantErr string       // substring of the error
		kind    error        // sentinel the error must wrap
	}{
		{name: "one", in: tokA + "\n", want: []tokenEntry{{tokA, 1}}},
		{name: "no final newline", in: tokA, want: []tokenEntry{{tokA, 1}}},
		{name: "comments and blanks",
			in:   "# tokens\n\n  \t\n" + tokA + "\n# " + tokC + "\n" + tokB + "\n",
			want: []tokenEntry{{tokA, 4}, {tokB, 6}}},
		{name: "trailing comment",
			in:   tokA + " # alice\n" + tokC + "\t#bob's laptop\n",
			want: []tokenEntry{{tokA, 1}, {tokC, 2}}},
		{name: "surrounding whitespace", in: "   " + tokA + "\t \n", want: []tokenEntry{{tokA, 1}}},
		{name: "CRLF", in: "# c\r\n" + tokA + "\r\n\r\n" + tokC + " # x\r\n", want: []tokenEntry{{tokA, 2}, {tokC, 4}}},
		{name: "BOM", in: "\xef\xbb\xbf" + tokA + "\n", want: []tokenEntry{{tokA, 1}}},
		{name: "max length", in: long + "\n", want: []tokenEntry{{long, 1}}},
		{name: "all printable", in: "!\"$%&'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~#\n", want: []tokenEntry{{"!\"$%&'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~#", 1}}},

		{name: "empty file", in: "", wantErr: "tokens file F: no tokens", kind: ErrNoTokens},
		{name: "only comments", in: "# a\n\n   # b\n", wantErr: "tokens file F: no tokens", kind: ErrNoTokens},
		{name: "inner space", in: "# c\n\n" + tokA + " " + tokC + "\n", wantErr: "tokens file F: line 3: token contains whitespace", kind: ErrInvalidToken},
		{name: "inner tab", in: tokA + "\t" + tokC + "\n", wantErr: "line 1: token contains whitespace", kind: ErrInvalidToken},
		{name: "inner CR", in: tokA + "\r" + tokC + "\n", wantErr: "line 1: token contains whitespace", kind: ErrInvalidToken},
		{name: "control byte", in: tokA + "\n" + "abc\x00defghijklmnopq\n", wantErr: "line 2: token contains byte 0x00 at column 4", kind: ErrInvalidToken},
		{name: "non-ASCII", in: "tökentökentökentöken\n", wantErr: "line 1: token contains byte 0xc3 at column 2", kind: ErrInvalidToken},
		{name: "NBSP edge", in: tokA + "\u00a0\n", wantErr: "line 1: token contains byte 0xc2", kind: ErrInvalidToken},
		{name: "too short", in: tokA + "\n\nshort # c\n", wantErr: "line 3: token is 5 characters long (tokens are 16..512 printable ASCII characters without spaces)", kind: ErrInvalidToken},
		{name: "too short by one", in: tokC[1:] + "\n", wantErr: "line 1: token is 15 characters long", kind: ErrInvalidToken},
		{name: "too long", in: long + "x\n", wantErr: "line 1: token is 513 characters long", kind: ErrInvalidToken},
		{name: "duplicate", in: tokA + "\n" + tokC + "\n  " + tokA + " # again\n", wantErr: "tokens file F: line 3: duplicate token: same as line 1", kind: ErrDuplicateToken},
		{name: "line too long", in: "#" + strings.Repeat("c", maxLineLen+1) + "\n" + tokA, wantErr: "line 1: line longer than", kind: ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTokenEntries(strings.NewReader(tt.in), "F")
			if tt.want == nil {
				if err == nil {
					t.Fatalf("got %v, want error containing %q", got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				if !errors.Is(err, tt.kind) {
					t.Errorf("error %q does not wrap %v", err, tt.kind)
				}
				var fe *TokensFileError
				if !errors.As(err, &fe) || fe.Name != "F" {
					t.Errorf("error %#v is not a *TokensFileError naming F", err)
				}
				if _, err2 := ParseTokens(strings.NewReader(tt.in), "F"); err2 == nil || err2.Error() != err.Error() {
					t.Errorf("ParseTokens error %v, parseTokenEntries error %v", err2, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d tokens %v, want %v", len(got), got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("token %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
			toks, err := ParseTokens(strings.NewReader(tt.in), "F")
			if err != nil {
				t.Fatal(err)
			}
			if toks.Len() != len(tt.want) {
				t.Errorf("Len() = %d, want %d", toks.Len(), len(tt.want))
			}
			ids := toks.IDs()
			for i, e := range tt.want {
				id, ok := toks.Verify(e.token)
				if !ok || id != TokenID(e.token) || ids[i] != id {
					t.Errorf("Verify(%q) = %q, %v; TokenID %q; IDs()[%d] %q", e.token, id, ok, TokenID(e.token), i, ids[i])
				}
			}
		})
	}
}

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	if err := os.WriteFile(path, []byte("# users\n"+tokA+" # alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := toks.Verify(tokA); !ok || toks.Len() != 1 {
		t.Fatalf("Verify(tokA) = %v, Len %d", ok, toks.Len())
	}

	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("\n\n"+tokA+" x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadTokens(bad)
	if want := "tokens file " + bad + ": line 3: token contains whitespace"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("LoadTokens(bad) error %v, want prefix %q", err, want)
	}

	missing := filepath.Join(dir, "missing")
	_, err = LoadTokens(missing)
	if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "tokens file "+missing+": open: ") {
		t.Errorf("LoadTokens(missing) error %v", err)
	}
	_, err = LoadTokens(dir)
	if err == nil || !strings.HasPrefix(err.Error(), "tokens file "+dir+": read: ") {
		t.Errorf("LoadTokens(dir) error %v", err)
	}
}

func TestVerify(t *testing.T) {
	toks, err := ParseTokens(strings.NewReader(tokA+"\n"+tokB+"\n"+tokC+"\n"), "F")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"first", tokA, true},
		{"middle", tokB, true},
		{"last", tokC, true},
		{"empty", "", false},
		{"prefix of a token", tokA[:20], false},
		{"token plus suffix", tokA + "a", false},
		{"one byte differs", tokA[:31] + "b", false},
		{"too short", tokC[:15], false},
		{"too long", strings.Repeat("a", MaxTokenLen+1), false},
		{"case differs", strings.ToUpper(tokA), false},
		{"with whitespace", " " + tokA, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok := toks.Verify(tt.token)
			if ok != tt.ok {
				t.Fatalf("Verify(%q) ok = %v, want %v", tt.token, ok, tt.ok)
			}
			switch {
			case ok && id != TokenID(tt.token):
				t.Errorf("id %q, want %q", id, TokenID(tt.token))
			case !ok && id != "":
				t.Errorf("id %q on failure, want empty", id)
			}
		})
	}
	var nilTokens *Tokens
	if _, ok := nilTokens.Verify(tokA); ok || nilTokens.Len() != 0 || nilTokens.IDs() != nil {
		t.Error("nil *Tokens should hold no tokens")
	}
}

func TestTokenID(t *testing.T) {
	// SHA-256("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") starts with 3ba3f5f43b92.
	if got, want := TokenID(tokA), "tok-3ba3f5f43b92"; got != want {
		t.Errorf("TokenID = %q, want %q", got, want)
	}
	if TokenID(tokA) == TokenID(tokB) {
		t.Error("different tokens share an ID")
	}
}

func TestGenerateToken(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		tok, err := GenerateToken()
		if err != nil {
			t.Fatal(err)
		}
		if len(tok) != 43 || strings.ContainsAny(tok, "+/=") {
			t.Fatalf("token %q: want 43 base64url characters", tok)
		}
		if seen[tok] {
			t.Fatalf("token %q generated twice", tok)
		}
		seen[tok] = true
		toks, err := ParseTokens(strings.NewReader(tok+" # generated\n"), "gen")
		if err != nil {
			t.Fatalf("generated token does not parse: %v", err)
		}
		if _, ok := toks.Verify(tok); !ok {
			t.Fatal("generated token does not verify")
		}
		if got, ok := ParseBearer("Bearer " + tok); !ok || got != tok {
			t.Fatalf("ParseBearer(Bearer %s) = %q, %v", tok, got, ok)
		}
	}
}

func TestParseBearer(t *testing.T) {
	tests := []struct {
		name, header, want string
		ok                 bool
	}{
		{"plain", "Bearer " + tokA, tokA, true},
		{"lower scheme", "bearer " + tokA, tokA, true},
		{"upper scheme", "BEARER " + tokA, tokA, true},
		{"mixed scheme", "bEaReR " + tokA, tokA, true},
		{"many spaces", "Bearer    " + tokA, tokA, true},
		{"surrounding OWS", " \tBearer " + tokA + " \t", tokA, true},
		{"short token", "Bearer x", "x", true},
		{"token with =", "Bearer abc==", "abc==", true},
		{"empty", "", "", false},
		{"scheme only", "Bearer", "", false},
		{"scheme and space", "Bearer ", "", false},
		{"scheme and spaces", "Bearer    ", "", false},
		{"no space", "Bearer" + tokA, "", false},
		{"tab separator", "Bearer\t" + tokA, "", false},
		{"basic", "Basic dXNlcjpwYXNz", "", false},
		{"prefix scheme", "Bearerx " + tokA, "", false},
		{"token with space", "Bearer abc def", "", false},
		{"token with tab", "Bearer abc\tdef", "", false},
		{"token with control", "Bearer abc\x01def", "", false},
		{"token non-ASCII", "Bearer tökens", "", false},
		{"two headers joined", "Bearer a, Bearer b", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseBearer(tt.header)
			if got != tt.want || ok != tt.ok {
				t.Errorf("ParseBearer(%q) = %q, %v; want %q, %v", tt.header, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzParseTokens(f *testing.F) {
	gen, err := GenerateToken()
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(gen + "\n"))
	f.Add([]byte("# c\r\n" + tokA + " # a\r\n\r\n" + tokB + "\n" + tokC))
	f.Add([]byte(tokA + "\n" + tokA + "\n"))
	f.Add([]byte("\xef\xbb\xbf" + tokA + "\t#x"))
	f.Add([]byte(tokA + "\x00" + tokA))
	f.Add([]byte("#only a comment\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := parseTokenEntries(strings.NewReader(string(data)), "fuzz")
		toks, err2 := ParseTokens(strings.NewReader(string(data)), "fuzz")
		if (err == nil) != (err2 == nil) {
			t.Fatalf("parseTokenEntries err %v, ParseTokens err %v", err, err2)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "tokens file fuzz: ") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if len(entries) == 0 || toks.Len() != len(entries) {
			t.Fatalf("%d entries, Len %d", len(entries), toks.Len())
		}
		seen := map[string]bool{}
		for _, e := range entries {
			if len(e.token) < MinTokenLen || len(e.token) > MaxTokenLen || e.token[0] == '#' {
				t.Fatalf("line %d: bad token %q accepted", e.line, e.token)
			}
			for i := 0; i < len(e.token); i++ {
				if c := e.token[i]; c < 0x21 || c > 0x7e {
					t.Fatalf("line %d: token %q has byte %#x", e.line, e.token, c)
				}
			}
			if seen[e.token] {
				t.Fatalf("duplicate %q accepted", e.token)
			}
			seen[e.token] = true
			id, ok := toks.Verify(e.token)
			if !ok || id != TokenID(e.token) {
				t.Fatalf("token %q from line %d does not verify", e.token, e.line)
			}
			if got, ok := ParseBearer("Bearer " + e.token); !ok || got != e.token {
				t.Fatalf("ParseBearer round trip of %q = %q, %v", e.token, got, ok)
			}
		}
	})
}

func FuzzParseBearer(f *testing.F) {
	gen, err := GenerateToken()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"Bearer " + gen, "bearer   " + tokA + " ", "Basic abc", "Bearer", "Bearer a b", "\tBEARER x\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, ok := ParseBearer(header)
		if !ok {
			if tok != "" {
				t.Fatalf("ParseBearer(%q) = %q with ok false", header, tok)
			}
			return
		}
		if tok == "" || !strings.Contains(header, tok) {
			t.Fatalf("ParseBearer(%q) = %q", header, tok)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c < 0x21 || c > 0x7e {
				t.Fatalf("ParseBearer(%q) = %q with byte %#x", header, tok, c)
			}
		}
		if again, ok := ParseBearer("Bearer " + tok); !ok || again != tok {
			t.Fatalf("round trip of %q = %q, %v", tok, again, ok)
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	var sb strings.Builder
	var toks []string
	for range 100 {
		tok, err := GenerateToken()
		if err != nil {
			b.Fatal(err)
		}
		toks = append(toks, tok)
		sb.WriteString(tok + "\n")
	}
	set, err := ParseTokens(strings.NewReader(sb.String()), "bench")
	if err != nil {
		b.Fatal(err)
	}
	other, _ := GenerateToken()
	for _, bc := range []struct{ name, tok string }{{"match-first", toks[0]}, {"match-last", toks[99]}, {"mismatch", other}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				set.Verify(bc.tok)
			}
		})
	}
}

func TestVerifyAllocs(t *testing.T) {
	long := strings.Repeat("L", MaxTokenLen)
	set, err := ParseTokens(strings.NewReader(tokA+"\n"+tokB+"\n"+long+"\n"), "F")
	if err != nil {
		t.Fatal(err)
	}
	gen, _ := GenerateToken() // 43 bytes: longer than the 32-byte stack buffer of []byte(s)
	for _, tok := range []string{tokB, long, gen} {
		if n := testing.AllocsPerRun(100, func() { set.Verify(tok) }); n != 0 {
			t.Errorf("Verify(%d-byte token) allocates %v times per call, want 0", len(tok), n)
		}
	}
}
