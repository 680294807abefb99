package main

import (
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/roamvpn/roam/auth"
)

const tokenUsage = `usage: roam token [new]                       print a new random plain token (for a tokens file)
       roam token issue --user NAME [flags]     print a token signed with the state dir's token.key
       roam token revoke (TOKEN | --id ID | --user NAME) [flags]
                                                add to the revocation list (then SIGHUP the server)
       roam token inspect TOKEN [flags]         print a token's claims and check its signature

roam token SUBCOMMAND -h lists its flags. A plain TOKEN starting with '-' goes after "--".
`

// portList is the repeatable --port flag.
type portList struct{ vals []auth.PortRange }

func (p *portList) String() string {
	s := make([]string, len(p.vals))
	for i, v := range p.vals {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func (p *portList) Set(v string) error {
	r, err := auth.ParsePortRange(v)
	if err != nil {
		return errors.New("expected a port 1-65535 or LO-HI like 8000-8100")
	}
	p.vals = append(p.vals, r)
	return nil
}

// runToken runs `roam token ...`.
func runToken(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return printNewToken(stdout)
	}
	switch args[0] {
	case "new":
		if len(args) > 1 {
			return usagef("token new: unexpected argument %q (it takes none)", args[1])
		}
		return printNewToken(stdout)
	case "issue":
		return runTokenIssue(args[1:], stdout, stderr)
	case "revoke":
		return runTokenRevoke(args[1:], stdout)
	case "inspect":
		return runTokenInspect(args[1:], stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, tokenUsage)
		return nil
	default:
		return usagef("token: unknown subcommand %q (want new, issue, revoke or inspect)", args[0])
	}
}

func printNewToken(stdout io.Writer) error {
	tok, err := auth.GenerateToken()
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// parseFlagsArgs is parseFlags for commands that also take positional
// arguments: flags may come before, between and after them. It returns the
// positional arguments in order.
func parseFlagsArgs(fs *flag.FlagSet, args []string, stdout io.Writer) (pos []string, help bool, err error) {
	fs.SetOutput(io.Discard)
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			// Parse again through parseFlags for its message (or -h).
			help, err := parseFlags(fs, rest, stdout)
			return nil, help, err
		}
		if fs.NArg() == 0 {
			return pos, false, nil
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// parseExpiry reads --expires: a Go duration (720h), whole days (30d), or
// an RFC 3339 time; the result must lie after now.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	bad := usagef("token issue: invalid value %q for flag --expires: expected a duration like 720h or 30d, or an RFC 3339 time like 2027-01-31T00:00:00Z", s)
	var t time.Time
	if at, err := time.Parse(time.RFC3339, s); err == nil {
		t = at
	} else if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 32)
		if err != nil || n == 0 || n > 100*366 {
			return time.Time{}, bad
		}
		t = now.Add(time.Duration(n) * 24 * time.Hour)
	} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
		t = now.Add(d)
	} else {
		return time.Time{}, bad
	}
	if !t.After(now) {
		return time.Time{}, usagef("token issue: invalid value %q for flag --expires: %s is in the past", s, t.UTC().Format(time.RFC3339))
	}
	return t, nil
}

func runTokenIssue(args []string, stdout, stderr io.Writer) error {
	var (
		user, expires, stateDir, keyFile string
		routes                           prefixList
		ports                            portList
	)
	fs := flag.NewFlagSet("token issue", flag.ContinueOnError)
	fs.StringVar(&user, "user", "", "user `NAME` (1-64 characters of A-Z a-z 0-9 . _ @ -); required")
	fs.StringVar(&expires, "expires", "", "expiry: a duration `D` (720h, 30d) or an RFC 3339 time; default: never")
	fs.Var(&routes, "route", "`CIDR` the token may reach (repeatable); default: whatever the server routes")
	fs.Var(&ports, "port", "TCP/UDP destination port `P` or range LO-HI the token may reach (repeatable); default: all")
	fs.StringVar(&stateDir, "state-dir", defaultStateDir(), "server state `DIR` holding token.key (created with token.pub if missing)")
	fs.StringVar(&keyFile, "key", "", "sign with this Ed25519 PKCS#8 PEM key `FILE` instead of STATE_DIR/token.key")
	help, err := parseFlags(fs, args, stdout)
	if help || err != nil {
		return err
	}
	if user == "" {
		return usagef("token issue: flag --user is required: the user name the token is for")
	}
	if !auth.ValidUserName(user) {
		return usagef("token issue: invalid value %q for flag --user: expected 1-64 characters of A-Z a-z 0-9 . _ @ -", user)
	}
	if keyFile != "" && flagSet(fs, "state-dir") {
		return usagef("token issue: flags --key and --state-dir are alternatives: give one")
	}
	now := time.Now()
	c := auth.Claims{User: user, IssuedAt: now, Routes: routes.vals, Ports: ports.vals}
	if expires != "" {
		if c.Expires, err = parseExpiry(expires, now); err != nil {
			return err
		}
	}
	var key ed25519.PrivateKey
	if keyFile != "" {
		if key, err = auth.LoadSigningKey(keyFile); err != nil {
			return err
		}
	} else {
		var created bool
		if key, created, err = auth.LoadOrCreateSigningKey(stateDir); err != nil {
			return err
		}
		if created {
			fmt.Fprintf(stderr, "roam: created the token signing key %s; servers verify its tokens with %s\n",
				filepath.Join(stateDir, auth.SigningKeyFileName), filepath.Join(stateDir, auth.PublicKeyFileName))
		}
	}
	tok, err := auth.IssueToken(key, c)
	if err != nil {
		return err
	}
	issued, err := auth.ParseSignedToken(tok)
	if err != nil {
		return fmt.Errorf("issued token does not parse: %w", err) // a bug
	}
	fmt.Fprintln(stdout, tok)
	exp := "never"
	if !issued.Expires.IsZero() {
		exp = issued.Expires.Format(time.RFC3339)
	}
	fmt.Fprintf(stderr, "roam: issued token %s for user %s, expires %s, routes %s, ports %s, key %s\n",
		auth.TokenID(tok), issued.User, exp, routesText(issued.Routes), portsText(issued.Ports), issued.KeyID)
	return nil
}

func routesText(rs []netip.Prefix) string {
	if rs == nil {
		return "any"
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

func portsText(ps []auth.PortRange) string {
	if ps == nil {
		return "any"
	}
	return (&portList{vals: ps}).String()
}

func runTokenRevoke(args []string, stdout io.Writer) error {
	var id, user, stateDir, file, comment string
	fs := flag.NewFlagSet("token revoke", flag.ContinueOnError)
	fs.StringVar(&id, "id", "", "revoke the token with this token `ID` (tok-<12 hex digits>, as the server logs it)")
	fs.StringVar(&user, "user", "", "revoke every signed token of user `NAME`")
	fs.StringVar(&stateDir, "state-dir", defaultStateDir(), "server state `DIR`: the list is STATE_DIR/revoked")
	fs.StringVar(&file, "file", "", "revocation list `FILE` instead of STATE_DIR/revoked")
	fs.StringVar(&comment, "comment", "", "`TEXT` to note on the line (default: the time, and the user of a signed TOKEN)")
	pos, help, err := parseFlagsArgs(fs, args, stdout)
	if help || err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("token revoke: unexpected argument %q (give one TOKEN, or --id or --user)", pos[1])
	}
	if n := len(pos) + btoi(id != "") + btoi(user != ""); n != 1 {
		return usagef("token revoke: give exactly one of TOKEN, --id ID or --user NAME (got %d)", n)
	}
	if file != "" && flagSet(fs, "state-dir") {
		return usagef("token revoke: flags --file and --state-dir are alternatives: give one")
	}
	if strings.ContainsAny(comment, "\r\n") {
		return usagef("token revoke: invalid value for flag --comment: expected one line")
	}
	note := "revoked " + time.Now().UTC().Format(time.RFC3339)
	kind, value := auth.RevokeID, id
	switch {
	case len(pos) == 1:
		if t, ok := auth.ParseBearer("Bearer " + pos[0]); !ok || t != pos[0] || len(t) < auth.MinTokenLen || len(t) > auth.MaxTokenLen {
			return usagef("token revoke: argument %q is not a token: expected 16-512 printable ASCII characters (a signed roam1. token or a line of a tokens file)", pos[0])
		}
		value = auth.TokenID(pos[0])
		if c, err := auth.ParseSignedToken(pos[0]); err == nil {
			note += ", user " + c.User
		}
	case id != "":
		if len(id) != 16 || !strings.HasPrefix(id, "tok-") || strings.Trim(id[4:], "0123456789abcdef") != "" {
			return usagef("token revoke: invalid value %q for flag --id: expected tok- and 12 lowercase hex digits, as the server logs and `roam token inspect` show it", id)
		}
	default:
		if !auth.ValidUserName(user) {
			return usagef("token revoke: invalid value %q for flag --user: expected 1-64 characters of A-Z a-z 0-9 . _ @ -", user)
		}
		kind, value = auth.RevokeUser, user
	}
	if comment != "" {
		note = comment
	}
	if file == "" {
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return fmt.Errorf("state directory: %w", err)
		}
		file = filepath.Join(stateDir, auth.RevocationsFileName)
	}
	if err := auth.AppendRevocation(file, kind, value, note); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s %s in %s\nsend SIGHUP to the server to apply it now (e.g. systemctl reload roam-server, or kill -HUP <server pid>)\n", kind, value, file)
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func runTokenInspect(args []string, stdout io.Writer) error {
	var stateDir, pubFile string
	fs := flag.NewFlagSet("token inspect", flag.ContinueOnError)
	fs.StringVar(&stateDir, "state-dir", defaultStateDir(), "check the signature with STATE_DIR/token.pub if it exists (`DIR`)")
	fs.StringVar(&pubFile, "pub", "", "check the signature with the public keys in `FILE` (ed25519:<base64> lines or PEM)")
	pos, help, err := parseFlagsArgs(fs, args, stdout)
	if help || err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("token inspect: expected one TOKEN argument, got %d", len(pos))
	}
	if pubFile != "" && flagSet(fs, "state-dir") {
		return usagef("token inspect: flags --pub and --state-dir are alternatives: give one")
	}
	tok := pos[0]
	if !auth.IsSignedToken(tok) {
		fmt.Fprintf(stdout, "kind       plain (valid where a tokens file lists it)\ntoken id   %s\n", auth.TokenID(tok))
		return nil
	}
	c, err := auth.ParseSignedToken(tok)
	if err != nil {
		return err
	}
	now := time.Now()
	exp := "never"
	if !c.Expires.IsZero() {
		exp = c.Expires.Format(time.RFC3339)
		if now.Before(c.Expires) {
			exp += " (in " + c.Expires.Sub(now).Round(time.Second).String() + ")"
		} else {
			exp += " (EXPIRED)"
		}
	}
	fmt.Fprintf(stdout, "kind       signed (%s)\ntoken id   %s\nuser       %s\nserial     %s\nkey        %s\nissued     %s\nexpires    %s\nroutes     %s\nports      %s\n",
		strings.TrimSuffix(auth.SignedTokenPrefix, "."), auth.TokenID(tok), c.User, c.ID, c.KeyID,
		c.IssuedAt.Format(time.RFC3339), exp, routesText(c.Routes), portsText(c.Ports))

	if pubFile == "" {
		candidate := filepath.Join(stateDir, auth.PublicKeyFileName)
		if _, err := os.Stat(candidate); err != nil {
			fmt.Fprintf(stdout, "signature  not checked (no %s; give --pub FILE)\n", candidate)
			return nil
		}
		pubFile = candidate
	}
	keys, err := auth.LoadPublicKeys(pubFile)
	if err != nil {
		return err
	}
	if _, err := auth.VerifySignedToken(tok, keys); err != nil {
		fmt.Fprintf(stdout, "signature  INVALID with the keys in %s\n", pubFile)
		return fmt.Errorf("token inspect: %w", err)
	}
	fmt.Fprintf(stdout, "signature  ok (key in %s)\n", pubFile)
	return nil
}
