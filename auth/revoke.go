package auth

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// RevocationsFileName is the revocation list's name in the state directory.
const RevocationsFileName = "revoked"

// Revocation kinds: the first word of a line of a revocation list.
const (
	RevokeID   = "id"   // a token by its TokenID (plain or signed)
	RevokeUser = "user" // every signed token of a user name
)

const revocationForm = `expected "id tok-<12 hex digits>" or "user NAME", optionally followed by "# comment"`

// Revocations is a revocation list: token IDs and user names that an
// Authenticator rejects. It is immutable after LoadRevocations /
// ParseRevocations and safe for concurrent use; lookups are map lookups. A
// nil *Revocations revokes nothing.
type Revocations struct {
	ids   map[string]struct{}
	users map[string]struct{}
}

// RevokedID reports whether the token with TokenID id is revoked.
func (r *Revocations) RevokedID(id string) bool {
	if r == nil {
		return false
	}
	_, ok := r.ids[id]
	return ok
}

// RevokedUser reports whether every token of user is revoked.
func (r *Revocations) RevokedUser(user string) bool {
	if r == nil {
		return false
	}
	_, ok := r.users[user]
	return ok
}

// Len returns the number of entries (token IDs plus users).
func (r *Revocations) Len() int {
	if r == nil {
		return 0
	}
	return len(r.ids) + len(r.users)
}

// LoadRevocations reads the revocation list at path. A missing file is an
// empty list (no error); see ParseRevocations for the format. Errors name
// the file (and the line).
func LoadRevocations(path string) (*Revocations, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Revocations{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revocations file %s: %w", path, unwrapPathError(err))
	}
	defer f.Close()
	return ParseRevocations(f, path)
}

// ParseRevocations reads a revocation list from r; name is used in error
// messages. Each line is blank, a comment ('#' at the start or after
// whitespace up to the end of the line), or
//
//	id tok-<12 lowercase hex digits>   (a TokenID, as servers log it)
//	user NAME                          (1..64 characters of [A-Za-z0-9._@-])
//
// Duplicates are allowed. Errors are "revocations file NAME: line N: ..."
// with the expected form, and wrap ErrInvalidRevocation. ParseRevocations
// reads r to EOF or the first error and does not close it.
func ParseRevocations(r io.Reader, name string) (*Revocations, error) {
	rv := &Revocations{ids: map[string]struct{}{}, users: map[string]struct{}{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLineLen)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := sc.Bytes()
		if lineNo == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		fields := strings.Fields(string(stripComment(line)))
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return nil, revocationErr(name, lineNo, "%d words; %s", len(fields), revocationForm)
		}
		if err := checkRevocation(fields[0], fields[1]); err != nil {
			return nil, revocationErr(name, lineNo, "%v", err)
		}
		if fields[0] == RevokeID {
			rv.ids[fields[1]] = struct{}{}
		} else {
			rv.users[fields[1]] = struct{}{}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, revocationErr(name, lineNo+1, "line longer than %d bytes", maxLineLen)
		}
		return nil, fmt.Errorf("revocations file %s: read: %w", name, unwrapPathError(err))
	}
	return rv, nil
}

func revocationErr(name string, line int, format string, args ...any) error {
	return &detailError{
		msg:  fmt.Sprintf("revocations file %s: line %d: ", name, line) + fmt.Sprintf(format, args...),
		kind: ErrInvalidRevocation,
	}
}

// checkRevocation validates one entry.
func checkRevocation(kind, value string) error {
	switch kind {
	case RevokeID:
		if !validTokenID(value) {
			return fmt.Errorf("token ID %q: expected tok- and 12 lowercase hex digits, as `roam token inspect` and the server log show it", value)
		}
	case RevokeUser:
		if !ValidUserName(value) {
			return fmt.Errorf("user %q: %s", value, userRule)
		}
	default:
		return fmt.Errorf("unknown kind %q; %s", kind, revocationForm)
	}
	return nil
}

func validTokenID(s string) bool {
	return len(s) == 16 && strings.HasPrefix(s, "tok-") && isLowerHex(s[4:])
}

// AppendRevocation adds the line "KIND VALUE # COMMENT" (the comment is
// optional and must be one line) to the revocation list at path, creating
// the file with mode 0600 if it does not exist. The existing file must
// parse (so a server is never handed a list it rejects); the line is added
// with one O_APPEND write and fsynced, so concurrent readers see it whole
// or not at all. Running servers see it after a reload (SIGHUP).
func AppendRevocation(path, kind, value, comment string) error {
	if err := checkRevocation(kind, value); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	if strings.ContainsAny(comment, "\r\n") {
		return errors.New("revoke: comment must be one line")
	}
	if _, err := LoadRevocations(path); err != nil {
		return fmt.Errorf("%w (fix it before adding to it)", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("revocations file %s: %w", path, unwrapPathError(err))
	}
	line := kind + " " + value
	if comment = strings.TrimSpace(comment); comment != "" {
		line += " # " + comment
	}
	line += "\n"
	// Start on a new line if the file does not end with one.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		var last [1]byte
		if r, err := os.Open(path); err == nil {
			if _, err := r.ReadAt(last[:], st.Size()-1); err == nil && last[0] != '\n' {
				line = "\n" + line
			}
			r.Close()
		}
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("revocations file %s: write: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("revocations file %s: sync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("revocations file %s: %w", path, err)
	}
	return nil
}
