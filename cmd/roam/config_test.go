package main

import (
	"context"
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/roamvpn/roam/auth"
)

// writeConfig writes text to DIR/roam.toml and returns the path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "roam.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const goodToken = "config-test-token-0123456789"

// TestConfigErrors: every problem of a file is one line of `roam validate`
// starting with exactly FILE:LINE: key "...": and saying what is wrong.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // per error line: the text after FILE: (LINE: key "...": start of the message)
	}{
		{"unknown server key", "[server]\nbogus = 1\n",
			[]string{`2: key "server.bogus": unknown key (roam server -h lists the flags`}},
		{"unknown client key", "[client]\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\npool4 = \"10.0.0.0/8\"\n",
			[]string{`4: key "client.pool4": unknown key`}},
		{"flag spelled with a dash", "[server]\nstate-dir = \"/x\"\n",
			[]string{`2: key "server.state-dir": unknown key: expected state_dir`}},
		{"config key in the file", "[server]\nconfig = \"other.toml\"\n",
			[]string{`2: key "server.config": unknown key`}},
		{"unknown table", "version = 1\n[serverr]\nlisten = \"a:1\"\n",
			[]string{`2: key "serverr": unknown key: expected version = 1, a [server] table or a [client] table`}},
		{"unknown sub-table", "[server]\n[server.xyz]\na = 1\n",
			[]string{`2: key "server.xyz": unknown key`}},
		{"unknown top key", "colour = \"red\"\n[server]\n",
			[]string{`1: key "colour": unknown key`}},
		{"server not a table", "server = 1\n",
			[]string{`1: key "server": expected a [server] table, got the integer 1`}},
		{"array of tables", "[[server]]\nlisten = \"a:1\"\n",
			[]string{`1: key "server": arrays of tables ([[...]]) are not used`}},
		{"string wanted", "[server]\nlisten = 4433\n",
			[]string{`2: key "server.listen": expected a string like "HOST:PORT", got the integer 4433`}},
		{"string wanted, date given", "[server]\nlisten = 1979-05-27\n",
			[]string{`2: key "server.listen": expected a string like "HOST:PORT", got a local date`}},
		{"bool wanted", "[server]\nweb = \"yes\"\n",
			[]string{`2: key "server.web": expected a boolean (true or false), got the string "yes"`}},
		{"int wanted", "[client]\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\nmark = \"0x100\"\n",
			[]string{`4: key "client.mark": expected an integer, got the string "0x100"`}},
		{"negative for an unsigned flag", "[client]\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\nmark = -5\n",
			[]string{`4: key "client.mark": invalid value "-5": expected a non-negative integer`}},
		{"int out of range", "[client]\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\ntable = 4294967296\n",
			[]string{`4: key "client.table": invalid value "4294967296": expected a free routing table number`}},
		{"int beyond 64 bits", "[client]\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\nmark = 99999999999999999999\n",
			[]string{`4: key "client.mark": not valid TOML: decimal number is too large`}},
		{"int wanted, float given", "[client]\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\ntable = 1.5\n",
			[]string{`4: key "client.table": expected an integer, got a float`}},
		{"array wanted", "[server]\nroute = \"10.0.0.0/8\"\n",
			[]string{`2: key "server.route": expected an array of strings like ["CIDR"], got the string "10.0.0.0/8"`}},
		{"array element of the wrong type", "[server]\nroute = [\"10.0.0.0/8\", 8]\n",
			[]string{`2: key "server.route": element 2: expected a string like "CIDR", got the integer 8`}},
		// A bad element of a multi-line array is reported at the element's line.
		{"bad CIDR element", "[server]\nroute = [\n  \"10.0.0.0/8\",\n  \"1.2.3.4/40\",\n]\n",
			[]string{`4: key "server.route": invalid value "1.2.3.4/40": expected a CIDR prefix like 10.0.0.0/8`}},
		{"bad value", "[server]\nnat = \"magic\"\n",
			[]string{`2: key "server.nat": invalid value "magic": expected kernel or userspace`}},
		{"bad value of a custom flag", "[server]\npool4 = \"fd00::/64\"\n",
			[]string{`2: key "server.pool4": invalid value "fd00::/64": expected an IPv4 CIDR prefix`}},
		{"bad value found after parsing", "[server]\nlisten = \"nonsense\"\n",
			[]string{`2: key "server.listen": invalid value "nonsense": expected HOST:PORT like 0.0.0.0:4433`}},
		{"pool without room", "[server]\npool4 = \"10.0.0.0/31\"\n",
			[]string{`2: key "server.pool4": invalid value "10.0.0.0/31": prefix 10.0.0.0/31 leaves no address`}},
		{"flags that go together", "[server]\ncert = \"c.pem\"\n",
			[]string{`2: key "server.cert": cert and key go together: give both or neither`}},
		{"required key missing", "[client]\ntoken = \"" + goodToken + "\"\n",
			[]string{`1: key "client.server": required: expected HOST:PORT`}},
		{"log level", "[client]\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\nlog_level = \"loud\"\n",
			[]string{`4: key "client.log_level": invalid value "loud": expected debug, info, warn or error`}},
		{"debug not on loopback", "[server]\ndebug = \"0.0.0.0:6060\"\n",
			[]string{`2: key "server.debug": invalid value "0.0.0.0:6060": expected a loopback HOST:PORT`}},
		{"users not a table", "[server]\nusers = 5\n",
			[]string{`2: key "server.users": expected a table of users like [server.users.alice], got the integer 5`}},
		{"user not a table", "[server.users]\nalice = true\n",
			[]string{`2: key "server.users.alice": expected a table with routes, ports and disabled, got the boolean true`}},
		{"bad user name", "[server.users.\"bad name\"]\nroutes = []\n",
			[]string{`1: key 'server.users."bad name"': invalid user name: expected 1-64 characters`}},
		{"user name too long", "[server.users." + strings.Repeat("a", 65) + "]\n",
			[]string{`1: key "server.users.` + strings.Repeat("a", 65) + `": invalid user name`}},
		{"unknown user key", "[server.users.alice]\nroutes = [\"10.0.0.0/8\"]\ncolour = \"red\"\n",
			[]string{`3: key "server.users.alice.colour": unknown key: expected routes, ports or disabled`}},
		{"user routes not an array", "[server.users.alice]\nroutes = \"10.0.0.0/8\"\n",
			[]string{`2: key "server.users.alice.routes": expected an array of CIDR strings`}},
		{"user route bad CIDR", "[server.users.alice]\nroutes = [\n \"10.0.0.0/8\",\n \"10.0.0.0/99\"]\n",
			[]string{`4: key "server.users.alice.routes": element 2: the string "10.0.0.0/99" is not a CIDR prefix`}},
		{"user port bad", "[server.users.alice]\nports = [443, \"9000-8000\", 70000]\n",
			[]string{
				`2: key "server.users.alice.ports": element 2: the string "9000-8000" is not a port`,
				`2: key "server.users.alice.ports": element 3: the integer 70000 is not a port`,
			}},
		{"user disabled not a bool", "[server.users.alice]\ndisabled = \"yes\"\n",
			[]string{`2: key "server.users.alice.disabled": expected a boolean (true or false), got the string "yes"`}},
		{"user in an inline table", "[server]\nusers = { alice = { routes = [\"10.0.0.0/8\"], bogus = 1 } }\n",
			[]string{`2: key "server.users.alice.bogus": unknown key`}},
		{"user with dotted keys", "[server]\nusers.alice.routes = [\"x\"]\n",
			[]string{`2: key "server.users.alice.routes": element 1: the string "x" is not a CIDR prefix`}},
		{"bad version", "version = 2\n[server]\n",
			[]string{`1: key "version": unsupported version: got the integer 2, expected version = 1`}},
		{"version as a string", "version = \"1\"\n[server]\n",
			[]string{`1: key "version": unsupported version: got the string "1", expected version = 1`}},
		{"duplicate key", "[server]\nlisten = \"a:1\"\nlisten = \"b:2\"\n",
			[]string{`3: key "server.listen": not valid TOML: key listen is already defined`}},
		{"duplicate dotted key", "[server]\nusers.a.disabled = true\nusers.a.disabled = false\n",
			[]string{`3: key "server.users.a.disabled": not valid TOML: key disabled is already defined`}},
		{"duplicate table", "[server]\n[client]\n[server]\n",
			[]string{`3: key "server": not valid TOML: table server already exists`}},
		{"syntax error", "[server\nlisten = \"a:1\"\n",
			[]string{`1: not valid TOML: expected ']' to close table name`}},
		{"every error, in line order", "[server]\nnat = \"magic\"\nbogus = 1\n[client]\nmode = \"fast\"\nserver = \"h:1\"\ntoken = \"" + goodToken + "\"\n",
			[]string{
				`2: key "server.nat": invalid value "magic"`,
				`3: key "server.bogus": unknown key`,
				`5: key "client.mode": invalid value "fast": expected packet or flow`,
			}},
		{"no tables", "version = 1\n",
			[]string{` no [server] or [client] table`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("ROAM_TOKEN", "")
			file := writeConfig(t, tt.text)
			code, stdout, stderr := runArgs(t, context.Background(), "validate", file)
			if code != 1 || stdout != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and errors on stderr", code, stdout, stderr)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != len(tt.want) {
				t.Fatalf("got %d error lines, want %d:\n%s", len(lines), len(tt.want), stderr)
			}
			for i, w := range tt.want {
				if want := file + ":" + w; !strings.HasPrefix(lines[i], want) {
					t.Errorf("line %d:\n got %s\nwant %s...", i+1, lines[i], want)
				}
			}
		})
	}
}

// TestConfigCommandErrors: server and client report a bad file like other
// usage errors (exit status 2), every problem on its own line.
func TestConfigCommandErrors(t *testing.T) {
	file := writeConfig(t, "[server]\nnat = \"magic\"\nweb = 1\n[client]\nmode = \"x\"\n")
	code, _, stderr := runArgs(t, context.Background(), "server", "--config", file)
	want := "roam server: " + file + ":2: key \"server.nat\": invalid value \"magic\": expected kernel or userspace\n" +
		"roam server: " + file + ":3: key \"server.web\": expected a boolean (true or false), got the integer 1\n"
	if code != 2 || stderr != want {
		t.Fatalf("server: exit %d, stderr\n%s\nwant 2 and\n%s", code, stderr, want)
	}
	code, _, stderr = runArgs(t, context.Background(), "client", "--config", file, "--server", "h:1", "--token", goodToken)
	if want := "roam client: " + file + ":5: key \"client.mode\": invalid value \"x\": expected packet or flow\n"; code != 2 || stderr != want {
		t.Fatalf("client: exit %d, stderr %q, want 2 and %q", code, stderr, want)
	}
	code, _, stderr = runArgs(t, context.Background(), "client", "--config", writeConfig(t, "[server]\n"), "--server", "h:1", "--token", goodToken)
	if code != 2 || !strings.Contains(stderr, "no [client] table") {
		t.Fatalf("client with a server-only file: exit %d, stderr %q", code, stderr)
	}
	missing := filepath.Join(t.TempDir(), "missing.toml")
	code, _, stderr = runArgs(t, context.Background(), "server", "--config", missing)
	if want := "roam server: " + missing + ": cannot read the config file: no such file or directory\n"; code != 2 || stderr != want {
		t.Fatalf("missing file: exit %d, stderr %q, want %q", code, stderr, want)
	}
}

// TestConfigApply: every kind of key lands in its flag, and the users in
// UserPolicy values.
func TestConfigApply(t *testing.T) {
	dir := t.TempDir()
	file := writeConfig(t, `version = 1

[server]
listen = "127.0.0.1:5555"   # a comment
state_dir = "`+dir+`"
pool4 = "10.77.0.0/16"
nat = "userspace"
web = false
route = [
  "10.0.0.0/8",
  "fd00::/8",
]
token_key = ["/etc/roam/a.pub", "/etc/roam/b.pub"]
revocations = "/etc/roam/revoked"

[server.users.alice]
routes = ["10.1.0.0/16"]
ports = [443, "8000-8100"]

[server.users."bob@example.com"]
disabled = true

[client]
server = "vpn.example.com:4433"
token = "`+goodToken+`"
mark = 0x1234
table = 1_000
route = ["192.168.0.0/16"]
mode = "flow"
`)
	f, _, err := parseServerFlags([]string{"--config", file}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f.listen != "127.0.0.1:5555" || f.stateDir != dir || f.pool4.val != netip.MustParsePrefix("10.77.0.0/16") || f.nat != "userspace" || f.web ||
		f.routes.String() != "10.0.0.0/8,fd00::/8" || f.tokenKeys.String() != "/etc/roam/a.pub,/etc/roam/b.pub" || f.revocations != "/etc/roam/revoked" {
		t.Errorf("server flags from the file: %+v", f)
	}
	wantUsers := map[string]auth.UserPolicy{
		"alice":           {Routes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}, Ports: []auth.PortRange{{Lo: 443, Hi: 443}, {Lo: 8000, Hi: 8100}}},
		"bob@example.com": {Disabled: true},
	}
	if !reflect.DeepEqual(f.users, wantUsers) {
		t.Errorf("users = %+v, want %+v", f.users, wantUsers)
	}
	c, _, err := parseClientFlags([]string{"--config", file}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.server != "vpn.example.com:4433" || c.token != goodToken || c.mark != 0x1234 || c.table != 1000 || c.routes.String() != "192.168.0.0/16" || c.mode != "flow" {
		t.Errorf("client flags from the file: %+v", c)
	}
	code, stdout, stderr := runArgs(t, context.Background(), "validate", file)
	if code != 0 || stdout != file+": ok\n" || stderr != "" {
		t.Errorf("validate: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestConfigFlagsOverride: a flag on the command line wins over the file;
// a repeatable flag replaces the file's array as a whole.
func TestConfigFlagsOverride(t *testing.T) {
	file := writeConfig(t, `[server]
listen = "127.0.0.1:5555"
nat = "userspace"
route = ["10.0.0.0/8", "10.1.0.0/16"]
web = false
`)
	tests := []struct {
		name  string
		args  []string
		check func(*serverFlags) bool
	}{
		{"file only", nil, func(f *serverFlags) bool {
			return f.listen == "127.0.0.1:5555" && f.routes.String() == "10.0.0.0/8,10.1.0.0/16" && !f.web
		}},
		{"string flag", []string{"--listen", "127.0.0.1:6666"}, func(f *serverFlags) bool {
			return f.listen == "127.0.0.1:6666" && f.nat == "userspace"
		}},
		{"repeatable flag replaces the array", []string{"--route", "192.168.0.0/24"}, func(f *serverFlags) bool {
			return f.routes.String() == "192.168.0.0/24"
		}},
		{"bool flag", []string{"--web=true"}, func(f *serverFlags) bool { return f.web }},
		{"flag before --config", []string{"--nat", "kernel"}, func(f *serverFlags) bool { return f.nat == "kernel" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _, err := parseServerFlags(append(tt.args, "--config", file), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(f) {
				t.Fatalf("flags %+v", f)
			}
		})
	}
	// A flag on the command line fixes a bad key of the file; its error is
	// then worded for the command line.
	bad := writeConfig(t, "[server]\nnat = \"magic\"\nlisten = \"x\"\n")
	if _, _, err := parseServerFlags([]string{"--config", bad, "--nat", "userspace", "--listen", "127.0.0.1:1"}, io.Discard); err != nil {
		t.Errorf("flags overriding bad keys: %v", err)
	}
	_, _, err := parseServerFlags([]string{"--config", bad, "--nat", "magic2", "--listen", "127.0.0.1:1"}, io.Discard)
	if err == nil || err.Error() != `server: invalid value "magic2" for flag --nat: expected kernel or userspace` {
		t.Errorf("bad flag with a file: %v", err)
	}
}

func TestValidateUsage(t *testing.T) {
	for _, args := range [][]string{{"validate"}, {"validate", "a", "b"}, {"validate", "--x"}} {
		if code, _, stderr := runArgs(t, context.Background(), args...); code != 2 || !strings.Contains(stderr, "roam validate FILE") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	missing := filepath.Join(t.TempDir(), "nope.toml")
	if code, _, stderr := runArgs(t, context.Background(), "validate", missing); code != 1 || stderr != missing+": cannot read the config file: no such file or directory\n" {
		t.Errorf("missing file: exit %d, stderr %q", code, stderr)
	}
}

// FuzzConfig: no input makes the parser panic, and every error line names
// the file.
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"version = 1\n[server]\nlisten = \"a:1\"\nroute = [\"10.0.0.0/8\"]\n[server.users.a]\nports = [1, \"2-3\"]\n",
		"[client]\nserver = \"h:1\"\nmark = 0x10\n",
		"a = { b = [1, [2, {c = 3}]] }\n[[x]]\n",
		"[server]\nusers = { a = { routes = [] } }\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := parseConfig("f.toml", b)
		if t := c.table("server"); t != nil {
			fl, fs := newServerFlags()
			fl.load(fs, c)
		}
		for _, e := range c.errs {
			if !strings.HasPrefix(e.Error(), "f.toml:") {
				t.Fatalf("error without the file: %v", e)
			}
		}
	})
}

// TestConfigDocExample: the example file in docs/config.md and the one in
// README.md pass roam validate.
func TestConfigDocExample(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(goodToken+"\n"), 0o600)
	for _, doc := range []string{"../../docs/config.md", "../../README.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok := strings.Cut(string(b), "```toml\n")
		example, _, ok2 := strings.Cut(rest, "```")
		if !ok || !ok2 {
			t.Fatalf("%s: no ```toml example", doc)
		}
		example = strings.ReplaceAll(example, "/etc/roam/client.token", tokenFile)
		example = strings.ReplaceAll(example, "/etc/roam/token\"", tokenFile+"\"")
		file := writeConfig(t, example)
		if code, stdout, stderr := runArgs(t, context.Background(), "validate", file); code != 0 || stdout != file+": ok\n" {
			t.Errorf("%s example: exit %d, %s%s", doc, code, stdout, stderr)
		}
	}
}

// addrList is a list flag of a kind config.go does not know: its usage
// text alone makes it take an array.
type addrList []string

func (l *addrList) String() string     { return strings.Join(*l, ",") }
func (l *addrList) Set(s string) error { *l = append(*l, s); return nil }

// TestConfigNewFlags: a flag added to a command's FlagSet has its key with
// no code in config.go, repeatable ones with an array.
func TestConfigNewFlags(t *testing.T) {
	file := writeConfig(t, "[server]\ndns = [\"10.0.0.53\", \"fd00::53\"]\nmetrics = \"127.0.0.1:9090\"\nmetrics_interval = 15\n")
	c := loadConfig(file)
	var dns addrList
	var metrics string
	var interval int
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.Var(&dns, "dns", "DNS server `ADDR` to push (repeatable)")
	fs.StringVar(&metrics, "metrics", "", "metrics `ADDR`")
	fs.IntVar(&interval, "metrics-interval", 0, "seconds")
	_, errs := applyConfig(fs, file, "server", c.table("server"), map[string]bool{}, nil)
	if len(errs) > 0 || strings.Join(dns, " ") != "10.0.0.53 fd00::53" || metrics != "127.0.0.1:9090" || interval != 15 {
		t.Fatalf("dns %q, metrics %q, interval %d, errors %v", dns, metrics, interval, errs)
	}
}
