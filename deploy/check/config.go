package check

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Keys a Roam config file may hold in its [server] or [client] table: the
// flag names with '-' written '_' (docs/operator.md, "Config file"). Value
// kinds: "string", "bool", "int" or "array" (of strings; repeatable flags).
var (
	ServerKeys = map[string]string{
		"listen": "string", "state_dir": "string", "tokens": "string",
		"token_key": "array", "revocations": "string", "pool4": "string",
		"pool6": "string", "nat": "string", "tun": "string", "cert": "string",
		"key": "string", "route": "array", "egress": "string", "public": "string",
		"log_level": "string", "dns": "array", "dns_forward": "string", "metrics": "string",
		"status_socket": "string", "web": "bool", "web_origin": "array",
		"web_dir": "string", "debug": "string",
	}
	ClientKeys = map[string]string{
		"server": "string", "token": "string", "token_file": "string",
		"pin": "string", "route": "array", "tun": "string", "mode": "string",
		"mark": "int", "table": "int", "dns": "string", "resolv_conf": "string",
		"metrics": "string", "status_socket": "string", "log_level": "string",
		"debug": "string",
	}
	userKeys = map[string]string{"routes": "array", "ports": "array", "disabled": "bool"}
)

// Config is a decoded Roam config file: Table is the [server] or [client]
// table without its users; Users is [server.users.*].
type Config struct {
	Table map[string]any
	Users map[string]map[string]any
}

// CheckConfig decodes a Roam TOML config (name is used in messages) whose
// one table is role ("server" or "client") and checks what can be checked
// without the roam binary: TOML syntax (errors carry the line), version = 1,
// no other tables, every key known with a value of its kind, the address
// values (listen/metrics HOST:PORT, pools and routes as CIDRs, dns as IP
// addresses on the server, auto/off on the client), nat, mode and the
// users' routes and ports. `roam validate` checks the rest.
func CheckConfig(name string, data []byte, role string) (*Config, error) {
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, fmt.Errorf("%s:%d:%d: %v", name, row, col, de)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: key %q: %s", name, key, fmt.Sprintf(format, args...)))
	}
	if v, ok := doc["version"].(int64); !ok || v != 1 {
		bad("version", "expected version = 1 at the top, found %v", doc["version"])
	}
	for k := range doc {
		if k != "version" && k != role {
			bad(k, "unknown top-level key or table (expected version and [%s])", role)
		}
	}
	table, ok := doc[role].(map[string]any)
	if !ok {
		return nil, errors.Join(append(errs, fmt.Errorf("%s: no [%s] table", name, role))...)
	}
	known := ServerKeys
	if role == "client" {
		known = ClientKeys
	}
	cfg := &Config{Table: map[string]any{}, Users: map[string]map[string]any{}}
	for _, k := range sortedKeys(table) {
		v := table[k]
		if role == "server" && k == "users" {
			users, ok := v.(map[string]any)
			if !ok {
				bad(role+".users", "expected tables [server.users.NAME]")
				continue
			}
			for _, u := range sortedKeys(users) {
				ut, ok := users[u].(map[string]any)
				if !ok {
					bad(role+".users."+u, "expected a table")
					continue
				}
				for _, uk := range sortedKeys(ut) {
					full := role + ".users." + u + "." + uk
					kind, ok := userKeys[uk]
					if !ok {
						bad(full, "unknown key (expected routes, ports or disabled)")
						continue
					}
					if err := checkKind(ut[uk], kind); err != nil {
						bad(full, "%v", err)
					}
				}
				for _, r := range strs(ut["routes"]) {
					if _, err := netip.ParsePrefix(r); err != nil {
						bad(role+".users."+u+".routes", "%q: expected a CIDR like 10.0.0.0/8", r)
					}
				}
				for _, p := range strs(ut["ports"]) {
					if !validPorts(p) {
						bad(role+".users."+u+".ports", "%q: expected PORT or LO-HI (1-65535)", p)
					}
				}
				cfg.Users[u] = ut
			}
			continue
		}
		kind, ok := known[k]
		if !ok {
			bad(role+"."+k, "unknown key (not a roam %s flag)", role)
			continue
		}
		if err := checkKind(v, kind); err != nil {
			bad(role+"."+k, "%v", err)
			continue
		}
		cfg.Table[k] = v
	}
	t := cfg.Table
	for _, k := range []string{"listen", "metrics"} {
		if s, ok := t[k].(string); ok {
			if _, err := netip.ParseAddrPort(s); err != nil {
				bad(role+"."+k, "%q: expected IP:PORT like 127.0.0.1:9090", s)
			}
		}
	}
	for _, k := range []string{"pool4", "pool6"} {
		if s, ok := t[k].(string); ok {
			if _, err := netip.ParsePrefix(s); err != nil {
				bad(role+"."+k, "%q: expected a CIDR", s)
			}
		}
	}
	for _, r := range strs(t["route"]) {
		if _, err := netip.ParsePrefix(r); err != nil {
			bad(role+".route", "%q: expected a CIDR like 10.0.0.0/8", r)
		}
	}
	switch role {
	case "server":
		if s, ok := t["nat"].(string); ok && s != "kernel" && s != "userspace" {
			bad("server.nat", "%q: expected kernel or userspace", s)
		}
		for _, a := range strs(t["dns"]) {
			if _, err := netip.ParseAddr(a); err != nil {
				bad("server.dns", "%q: expected an IP address", a)
			}
		}
	case "client":
		if s, ok := t["server"].(string); !ok || s == "" {
			bad("client.server", "required: expected HOST:PORT")
		}
		if s, ok := t["mode"].(string); ok && s != "packet" && s != "flow" {
			bad("client.mode", "%q: expected packet or flow", s)
		}
		if s, ok := t["dns"].(string); ok && s != "auto" && s != "off" {
			bad("client.dns", "%q: expected auto or off", s)
		}
	}
	return cfg, errors.Join(errs...)
}

func checkKind(v any, kind string) error {
	switch kind {
	case "string":
		if _, ok := v.(string); ok {
			return nil
		}
	case "bool":
		if _, ok := v.(bool); ok {
			return nil
		}
	case "int":
		if _, ok := v.(int64); ok {
			return nil
		}
	case "array":
		a, ok := v.([]any)
		if ok {
			for _, e := range a {
				if _, ok := e.(string); !ok {
					return fmt.Errorf("expected an array of strings, found element %v (%T)", e, e)
				}
			}
			return nil
		}
	}
	return fmt.Errorf("expected a %s, found %v (%T)", kind, v, v)
}

// strs returns the string elements of a TOML array value (nil otherwise).
func strs(v any) []string {
	a, _ := v.([]any)
	var out []string
	for _, e := range a {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func validPorts(p string) bool {
	lo, hi, isRange := strings.Cut(p, "-")
	a, okA := port(lo)
	if !isRange {
		return okA
	}
	b, okB := port(hi)
	return okA && okB && a <= b
}

func port(s string) (int, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, n >= 1 && n <= 65535
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
