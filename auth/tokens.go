package auth

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// Token length limits, in bytes (tokens are ASCII, so also characters).
const (
	MinTokenLen = 16
	MaxTokenLen = 512
)

// maxLineLen bounds one line of a tokens file, comments included.
const maxLineLen = 64 << 10

// tokenRule is appended to token syntax errors so the user learns the rule.
const tokenRule = "(tokens are 16..512 printable ASCII characters without spaces)"

// Tokens is a set of bearer tokens loaded from a tokens file. It keeps only
// SHA-256 digests of the tokens, never the tokens themselves. A Tokens is
// immutable after LoadTokens / ParseTokens returns and safe for concurrent
// use. A nil *Tokens holds no tokens: Len returns 0 and Verify rejects all.
type Tokens struct {
	digests [][sha256.Size]byte
	ids     []string // ids[i] == idFromDigest(digests[i])
}

// tokenEntry is one token found in a tokens file.
type tokenEntry struct {
	token string
	line  int
}

// LoadTokens reads the tokens file at path; see ParseTokens for the format
// and the errors. Errors name the file.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &TokensFileError{Name: path, Err: unwrapPathError(err)}
	}
	defer f.Close()
	return ParseTokens(f, path)
}

// ParseTokens reads a tokens file from r; name is used in error messages
// (normally the file's path). The format is one token per line; '#' starts a
// comment when it begins the line or follows whitespace (so '#' may appear
// inside a token); blank lines are ignored; surrounding whitespace (ASCII,
// including the '\r' of CRLF line ends) is trimmed; a leading UTF-8 BOM is
// ignored. Errors are *TokensFileError values naming the file and line and
// wrapping ErrInvalidToken (bad characters or length), ErrDuplicateToken
// (naming both lines) or ErrNoTokens (nothing but blanks and comments).
// ParseTokens reads r to EOF or the first error and does not close it.
func ParseTokens(r io.Reader, name string) (*Tokens, error) {
	entries, err := parseTokenEntries(r, name)
	if err != nil {
		return nil, err
	}
	t := &Tokens{
		digests: make([][sha256.Size]byte, 0, len(entries)),
		ids:     make([]string, 0, len(entries)),
	}
	for _, e := range entries {
		d := sha256.Sum256([]byte(e.token))
		t.digests = append(t.digests, d)
		t.ids = append(t.ids, idFromDigest(&d))
	}
	return t, nil
}

// parseTokenEntries does the work of ParseTokens and returns the tokens
// themselves with their line numbers (used by tests and fuzzing).
func parseTokenEntries(r io.Reader, name string) ([]tokenEntry, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLineLen)
	var (
		entries []tokenEntry
		byHash  = map[[sha256.Size]byte]int{} // digest -> line
		byID    = map[string]int{}            // TokenID -> line
		lineNo  int
	)
	lineErr := func(kind error, format string, args ...any) error {
		return &TokensFileError{Name: name, Line: lineNo, Err: &detailError{msg: fmt.Sprintf(format, args...), kind: kind}}
	}
	for sc.Scan() {
		lineNo++
		line := sc.Bytes()
		if lineNo == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		line = trimASCIISpace(stripComment(line))
		if len(line) == 0 {
			continue
		}
		for i, c := range line {
			switch {
			case isASCIISpace(c):
				return nil, lineErr(ErrInvalidToken, "token contains whitespace %s", tokenRule)
			case c < 0x21 || c > 0x7e:
				return nil, lineErr(ErrInvalidToken, "token contains byte 0x%02x at column %d %s", c, i+1, tokenRule)
			}
		}
		if len(line) < MinTokenLen || len(line) > MaxTokenLen {
			return nil, lineErr(ErrInvalidToken, "token is %d characters long %s", len(line), tokenRule)
		}
		if IsSignedToken(string(line)) {
			return nil, lineErr(ErrInvalidToken, "this is a signed token (it starts with %s): signed tokens need no tokens file, the server verifies them with its public key", SignedTokenPrefix)
		}
		tok := string(line)
		d := sha256.Sum256(line)
		if prev, dup := byHash[d]; dup {
			return nil, lineErr(ErrDuplicateToken, "duplicate token: same as line %d", prev)
		}
		id := idFromDigest(&d)
		if prev, dup := byID[id]; dup {
			// Two different tokens whose IDs collide (chance ~2^-48 per pair):
			// IDs key address leases, so refuse rather than mix the two up.
			return nil, lineErr(ErrDuplicateToken, "token ID %s collides with the token on line %d; generate a new token", id, prev)
		}
		byHash[d] = lineNo
		byID[id] = lineNo
		entries = append(entries, tokenEntry{token: tok, line: lineNo})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			lineNo++
			return nil, lineErr(ErrInvalidToken, "line longer than %d bytes", maxLineLen)
		}
		var pe *fs.PathError
		if !errors.As(err, &pe) {
			err = fmt.Errorf("read: %w", err)
		}
		return nil, &TokensFileError{Name: name, Err: unwrapPathError(err)}
	}
	if len(entries) == 0 {
		return nil, &TokensFileError{Name: name, Err: &detailError{
			msg:  "no tokens (every line is blank or a comment); add one, e.g. from `roam token new`",
			kind: ErrNoTokens,
		}}
	}
	return entries, nil
}

// stripComment cuts line at the first '#' that starts the line or follows an
// ASCII whitespace byte.
func stripComment(line []byte) []byte {
	for i, c := range line {
		if c == '#' && (i == 0 || isASCIISpace(line[i-1])) {
			return line[:i]
		}
	}
	return line
}

func isASCIISpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'
}

func trimASCIISpace(b []byte) []byte {
	for len(b) > 0 && isASCIISpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isASCIISpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// Len returns the number of tokens in t.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.digests)
}

// IDs returns the TokenID of every token, in file order. The slice is a fresh
// copy owned by the caller.
func (t *Tokens) IDs() []string {
	if t == nil {
		return nil
	}
	return append([]string(nil), t.ids...)
}

// Verify reports whether token is one of t's tokens and, if so, returns its
// TokenID: a stable, non-secret identifier for logs and address leases.
//
// The SHA-256 digest of token is compared with the digest of every known
// token using subtle.ConstantTimeCompare, without an early exit, so the time
// taken does not depend on which token matched or how many did; comparing
// fixed-size digests also hides the stored tokens' lengths. The only early
// return is for a token outside MinTokenLen..MaxTokenLen, a public rule that
// reveals nothing about the stored tokens. Verify does not allocate.
func (t *Tokens) Verify(token string) (id string, ok bool) {
	if t == nil || len(token) < MinTokenLen || len(token) > MaxTokenLen {
		return "", false
	}
	// Hash from a stack copy: []byte(token) would allocate for tokens longer
	// than 32 bytes.
	var buf [MaxTokenLen]byte
	d := sha256.Sum256(buf[:copy(buf[:], token)])
	match, idx := 0, 0
	for i := range t.digests {
		eq := subtle.ConstantTimeCompare(t.digests[i][:], d[:])
		match |= eq
		idx = subtle.ConstantTimeSelect(eq, i, idx)
	}
	if match != 1 {
		return "", false
	}
	return t.ids[idx], true
}

// TokenID returns the ID Verify returns for token: "tok-" followed by the
// first 12 lowercase hex digits of SHA-256(token). It does not verify token.
// The ID reveals nothing useful about the token and is safe to log.
func TokenID(token string) string {
	var d [sha256.Size]byte
	if len(token) <= MaxTokenLen {
		var buf [MaxTokenLen]byte // []byte(token) would allocate beyond 32 bytes
		d = sha256.Sum256(buf[:copy(buf[:], token)])
	} else {
		d = sha256.Sum256([]byte(token))
	}
	return idFromDigest(&d)
}

func idFromDigest(d *[sha256.Size]byte) string {
	var b [4 + 12]byte
	copy(b[:], "tok-")
	hex.Encode(b[4:], d[:6])
	return string(b[:])
}

// GenerateToken returns a new random token: 32 bytes from crypto/rand encoded
// as unpadded base64url, 43 characters. It is valid in a tokens file and in an
// Authorization header.
func GenerateToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// ParseBearer extracts the token from an Authorization header value of the
// form "Bearer <token>": the scheme is case-insensitive and followed by one or
// more spaces; spaces and tabs around the whole value are ignored. ok is false
// when the scheme is not Bearer, the token is empty, or the token contains
// whitespace or bytes outside printable ASCII. The token is not verified.
func ParseBearer(header string) (token string, ok bool) {
	h := strings.Trim(header, " \t")
	const scheme = "Bearer"
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) || h[len(scheme)] != ' ' {
		return "", false
	}
	tok := strings.TrimLeft(h[len(scheme):], " ")
	if tok == "" {
		return "", false
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x21 || c > 0x7e {
			return "", false
		}
	}
	return tok, true
}
