package main

// The config file: TOML with `version = 1` at the top and one table per
// command ([server], [client]). Every flag of a command is a key of its
// table, spelled with '_' for '-' (--state-dir is state_dir); the mapping is
// generic over the command's flag.FlagSet, so a flag added later has a key
// with no code here. Flags given on the command line override the file.
// The only keys that are not flags are [server.users.NAME] tables.
// docs/config.md lists every key.

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/roamvpn/roam/auth"
)

// configVersion is the only config file version this binary reads.
const configVersion = 1

// notInFile are flags that make no sense in a config file.
var notInFile = map[string]bool{"config": true}

// configError is one bad entry of a config file. Its text is
// "FILE:LINE: key "TABLE.KEY": WHAT (expected FORM)", or without the key
// part for errors that belong to no key (syntax), or without the line when
// there is none (an unreadable file).
type configError struct {
	file string
	line int    // 0: unknown
	key  string // dotted path like server.state_dir; "" for syntax errors
	msg  string
}

func (e *configError) Error() string {
	var b strings.Builder
	b.WriteString(e.file)
	if e.line > 0 {
		fmt.Fprintf(&b, ":%d", e.line)
	}
	b.WriteString(": ")
	switch {
	case strings.Contains(e.key, `"`): // a quoted part, like users."bad name"
		fmt.Fprintf(&b, "key '%s': ", e.key)
	case e.key != "":
		fmt.Fprintf(&b, "key %q: ", e.key)
	}
	b.WriteString(e.msg)
	return b.String()
}

// tomlValue is one value of the file with the line of its key (or, for an
// array element, of the element itself).
type tomlValue struct {
	line int
	// v is a string, int64, float64, bool, []*tomlValue or *tomlTable; nil
	// for values Roam never takes (dates and times), which kind describes.
	v    any
	kind string
}

// tomlTable is a table of the file in file order.
type tomlTable struct {
	line int // of its header or first key; 0 for the root
	keys []string
	vals map[string]*tomlValue
}

func newTable(line int) *tomlTable { return &tomlTable{line: line, vals: map[string]*tomlValue{}} }

func (t *tomlTable) set(k string, v *tomlValue) {
	if _, ok := t.vals[k]; !ok {
		t.keys = append(t.keys, k)
	}
	t.vals[k] = v
}

// sub returns the sub-table k, creating it (at line) if missing. ok is
// false when k holds something else.
func (t *tomlTable) sub(k string, line int) (*tomlTable, bool) {
	if v, ok := t.vals[k]; ok {
		st, ok := v.v.(*tomlTable)
		return st, ok
	}
	st := newTable(line)
	t.set(k, &tomlValue{line: line, v: st})
	return st, true
}

// configFile is a parsed config file.
type configFile struct {
	path   string
	root   *tomlTable
	errs   []error // file-level problems (syntax, version, unknown tables)
	tables map[string]*tomlTable
}

// table returns the command's table, or nil if the file has none.
func (c *configFile) table(name string) *tomlTable {
	if c == nil {
		return nil
	}
	return c.tables[name]
}

// loadConfig reads and parses path. A file that cannot be read or is not
// TOML gives a configFile with only errs set; a syntactically good file
// with bad top-level entries gives errs and whatever tables are good.
func loadConfig(path string) *configFile {
	b, err := os.ReadFile(path)
	if err != nil {
		c := &configFile{path: path, root: newTable(0), tables: map[string]*tomlTable{}}
		c.errs = append(c.errs, &configError{file: path, msg: fmt.Sprintf("cannot read the config file: %v", errors.Unwrap(err))})
		return c
	}
	return parseConfig(path, b)
}

// parseConfig parses the config file text b; path names it in errors.
func parseConfig(path string, b []byte) *configFile {
	c := &configFile{path: path, root: newTable(0), tables: map[string]*tomlTable{}}
	pathAt := c.parse(b)
	// go-toml's decoder checks the whole TOML grammar, including keys and
	// tables defined twice, which its low-level parser does not.
	var anyv map[string]any
	if err := toml.Unmarshal(b, &anyv); err != nil {
		ce := &configError{file: path, msg: "not valid TOML: " + strings.TrimPrefix(err.Error(), "toml: ")}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			ce.line, _ = de.Position()
			ce.key = pathAt[ce.line] // the decoder's key is relative to its table
			if strings.Contains(ce.msg, "already") {
				ce.msg += " (TOML allows each key and table once)"
			}
		}
		c.root, c.errs = newTable(0), []error{ce}
		return c
	}
	c.checkTop()
	return c
}

// parse builds c.root from the syntax tree, keeping the lines. It returns
// the full key of the first table header or key on each line.
func (c *configFile) parse(b []byte) map[int]string {
	pathAt := map[int]string{}
	at := func(line int, parts ...[]string) {
		if _, ok := pathAt[line]; !ok {
			pathAt[line] = joinKey(slices.Concat(parts...))
		}
	}
	var curPath []string
	p := &unstable.Parser{}
	p.Reset(b)
	cur := c.root
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, line := keyParts(p, e.Key())
			at(line, parts)
			curPath = parts
			if e.Kind == unstable.ArrayTable {
				c.errs = append(c.errs, &configError{file: c.path, line: line, key: joinKey(parts),
					msg: "arrays of tables ([[...]]) are not used in a Roam config: expected a [table]"})
				cur = nil
				continue
			}
			cur = c.walk(c.root, parts, line)
		case unstable.KeyValue:
			parts, line := keyParts(p, e.Key())
			at(line, curPath, parts)
			if cur == nil {
				continue // inside a rejected [[table]]
			}
			t := c.walk(cur, parts[:len(parts)-1], line)
			if t != nil {
				t.set(parts[len(parts)-1], c.value(p, e.Value(), line))
			}
		}
	}
	// A syntax error stops p; toml.Unmarshal reports it with its line.
	return pathAt
}

// walk descends from t through parts, creating tables as needed.
func (c *configFile) walk(t *tomlTable, parts []string, line int) *tomlTable {
	for _, k := range parts {
		st, ok := t.sub(k, line)
		if !ok { // the TOML decoder rejects this before us
			return nil
		}
		t = st
	}
	return t
}

func keyParts(p *unstable.Parser, it unstable.Iterator) ([]string, int) {
	var parts []string
	line := 0
	for it.Next() {
		n := it.Node()
		if line == 0 {
			line = p.Shape(n.Raw).Start.Line
		}
		parts = append(parts, string(n.Data))
	}
	return parts, line
}

func (c *configFile) value(p *unstable.Parser, n *unstable.Node, line int) *tomlValue {
	v := &tomlValue{line: line}
	switch n.Kind {
	case unstable.String:
		v.v = string(n.Data)
	case unstable.Bool:
		v.v = string(n.Data) == "true"
	case unstable.Integer:
		i, err := strconv.ParseInt(string(n.Data), 0, 64) // TOML's 0x/0o/0b and _ are Go's too
		if err != nil {
			v.kind = "an integer out of range"
		} else {
			v.v = i
		}
	case unstable.Float:
		v.v = float64(0) // only its kind matters: no flag takes a float yet
		if f, err := strconv.ParseFloat(strings.ReplaceAll(string(n.Data), "_", ""), 64); err == nil {
			v.v = f
		}
	case unstable.Array:
		arr := []*tomlValue{}
		it := n.Children()
		for it.Next() {
			el := it.Node()
			if el.Kind == unstable.Comment {
				continue
			}
			elLine := line
			if el.Raw.Length > 0 {
				elLine = p.Shape(el.Raw).Start.Line
			}
			arr = append(arr, c.value(p, el, elLine))
		}
		v.v = arr
	case unstable.InlineTable:
		t := newTable(line)
		it := n.Children()
		for it.Next() {
			kv := it.Node()
			if kv.Kind != unstable.KeyValue {
				continue
			}
			parts, kline := keyParts(p, kv.Key())
			if st := c.walk(t, parts[:len(parts)-1], kline); st != nil {
				st.set(parts[len(parts)-1], c.value(p, kv.Value(), kline))
			}
		}
		v.v = t
	default: // dates and times
		v.kind = map[unstable.Kind]string{unstable.LocalDate: "a local date", unstable.LocalTime: "a local time",
			unstable.LocalDateTime: "a local date-time", unstable.DateTime: "a date-time"}[n.Kind]
	}
	return v
}

// checkTop checks the top level: version and the command tables.
func (c *configFile) checkTop() {
	for _, k := range c.root.keys {
		v := c.root.vals[k]
		switch k {
		case "version":
			if i, ok := v.v.(int64); !ok || i != configVersion {
				c.errs = append(c.errs, &configError{file: c.path, line: v.line, key: k,
					msg: fmt.Sprintf("unsupported version: got %s, expected version = %d", describe(v), configVersion)})
			}
		case "server", "client":
			if t, ok := v.v.(*tomlTable); ok {
				c.tables[k] = t
			} else {
				c.errs = append(c.errs, &configError{file: c.path, line: v.line, key: k, msg: "expected a [" + k + "] table, got " + describe(v)})
			}
		default:
			c.errs = append(c.errs, &configError{file: c.path, line: v.line, key: k,
				msg: "unknown key: expected version = 1, a [server] table or a [client] table"})
		}
	}
}

// describe names a value for an error message: its kind, and a string's text.
func describe(v *tomlValue) string {
	switch x := v.v.(type) {
	case string:
		return fmt.Sprintf("the string %q", x)
	case int64:
		return fmt.Sprintf("the integer %d", x)
	case float64:
		return "a float"
	case bool:
		return fmt.Sprintf("the boolean %v", x)
	case []*tomlValue:
		return "an array"
	case *tomlTable:
		return "a table"
	}
	return v.kind
}

// joinKey writes a key path the way TOML would, quoting parts that are not
// bare keys.
func joinKey(parts []string) string {
	out := make([]string, len(parts))
	for i, p := range parts {
		if bareKey.MatchString(p) {
			out[i] = p
		} else {
			out[i] = strconv.Quote(p)
		}
	}
	return strings.Join(out, ".")
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// flagKey is the config key of a flag name.
func flagKey(name string) string { return strings.ReplaceAll(name, "-", "_") }

// boolFlag is the flag package's (unexported) interface of boolean flags.
type boolFlag interface{ IsBoolFlag() bool }

// repeatableFlag is a flag that may be given more than once; the file
// takes a TOML array for it. A command-line value replaces the file's
// array as a whole. A flag is repeatable if its Value has a repeatable
// method (prefixList, stringList) or its usage text says "(repeatable)",
// so a new list flag gets an array key without code here.
type repeatableFlag interface {
	flag.Value
	repeatable()
}

func isRepeatable(fl *flag.Flag) bool {
	_, ok := fl.Value.(repeatableFlag)
	return ok || strings.Contains(fl.Usage, "(repeatable")
}

// fileSource records which flags got their value from a config file.
type fileSource struct {
	file    string
	table   string
	lines   map[string]int  // flag name -> line of its key
	tline   int             // the table's line; 0: no table
	cmdLine map[string]bool // flags set on the command line
}

// fromFile reports whether the flag's value came from the file.
func (s *fileSource) fromFile(name string) bool {
	_, ok := s.lines[name]
	return ok
}

// resolve words a check's problem for where the value came from: the
// file's key (or, for a missing flag, the file's table) or the command line.
func (s *fileSource) resolve(fe *flagError) error {
	name := fe.flags[0]
	for _, n := range fe.flags {
		if s.fromFile(n) {
			name = n
			break
		}
	}
	line, inFile := s.lines[name]
	if !inFile && s.file != "" && s.tline > 0 && !s.cmdLine[name] {
		line, inFile = s.tline, true // missing from the table
	}
	if inFile {
		msg := fe.fmsg
		if msg == "" {
			msg = fe.msg
		}
		if fe.value != "" {
			msg = fmt.Sprintf("invalid value %q: %s", fe.value, msg)
		}
		return &configError{file: s.file, line: line, key: s.table + "." + flagKey(name), msg: msg}
	}
	if fe.value != "" {
		return usagef("%s: invalid value %q for flag --%s: %s", s.table, fe.value, name, fe.msg)
	}
	return usagef("%s: %s", s.table, fe.msg)
}

// applyConfig sets fs's flags from the command's table t of file (nil t:
// nothing to do). Flags in onCmdLine keep their command-line values. other
// handles the keys that are not flags (nil: there are none); it returns
// false for a key it does not know either.
func applyConfig(fs *flag.FlagSet, file, table string, t *tomlTable, onCmdLine map[string]bool,
	other func(key string, v *tomlValue) (known bool, errs []error)) (*fileSource, []error) {
	src := &fileSource{file: file, table: table, lines: map[string]int{}, cmdLine: onCmdLine}
	if t == nil {
		return src, nil
	}
	src.tline = t.line
	var errs []error
	for _, k := range t.keys {
		v := t.vals[k]
		key := table + "." + k
		name := strings.ReplaceAll(k, "_", "-")
		fl := fs.Lookup(name)
		if fl == nil || notInFile[name] || strings.Contains(k, "-") {
			if other != nil {
				if known, oerrs := other(k, v); known {
					errs = append(errs, oerrs...)
					continue
				}
			}
			msg := fmt.Sprintf("unknown key (roam %s -h lists the flags; a key is a flag's name with _ for -)", table)
			if fl != nil && strings.Contains(k, "-") && !notInFile[name] {
				msg = fmt.Sprintf("unknown key: expected %s (keys use _ where flags use -)", flagKey(name))
			}
			errs = append(errs, &configError{file: file, line: v.line, key: key, msg: msg})
			continue
		}
		if onCmdLine[name] {
			continue // the command line overrides the file
		}
		vals, msg := flagValues(fl, v)
		if msg != "" {
			errs = append(errs, &configError{file: file, line: v.line, key: key, msg: msg})
			continue
		}
		ok := true
		for _, s := range vals {
			if err := fs.Set(name, s.s); err != nil {
				switch err.Error() { // the flag package's own errors for numbers say too little
				case "parse error":
					err = fmt.Errorf("expected %s", numberKind(fl))
				case "value out of range":
					err = fmt.Errorf("out of range for %s", numberKind(fl))
				}
				errs = append(errs, &configError{file: file, line: s.line, key: key, msg: fmt.Sprintf("invalid value %q: %v", s.s, err)})
				ok = false
				break
			}
		}
		if ok {
			src.lines[name] = v.line
		}
	}
	return src, errs
}

type lineString struct {
	s    string
	line int
}

// flagValues turns a file value into the strings fs.Set takes for fl, or
// says what was wrong with it.
func flagValues(fl *flag.Flag, v *tomlValue) ([]lineString, string) {
	if isRepeatable(fl) {
		arr, ok := v.v.([]*tomlValue)
		if !ok {
			return nil, fmt.Sprintf("expected an array of strings like [%q], got %s", exampleOf(fl), describe(v))
		}
		out := make([]lineString, 0, len(arr))
		for i, el := range arr {
			s, ok := el.v.(string)
			if !ok {
				return nil, fmt.Sprintf("element %d: expected a string like %q, got %s", i+1, exampleOf(fl), describe(el))
			}
			out = append(out, lineString{s, el.line})
		}
		return out, ""
	}
	one := func(s string) ([]lineString, string) { return []lineString{{s, v.line}}, "" }
	if bf, ok := fl.Value.(boolFlag); ok && bf.IsBoolFlag() {
		if b, ok := v.v.(bool); ok {
			return one(strconv.FormatBool(b))
		}
		return nil, "expected a boolean (true or false), got " + describe(v)
	}
	if g, ok := fl.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case int, int64, uint, uint64:
			if i, ok := v.v.(int64); ok {
				return one(strconv.FormatInt(i, 10))
			}
			return nil, "expected an integer, got " + describe(v)
		case float64:
			switch x := v.v.(type) {
			case float64:
				return one(strconv.FormatFloat(x, 'g', -1, 64))
			case int64:
				return one(strconv.FormatInt(x, 10))
			}
			return nil, "expected a number, got " + describe(v)
		case time.Duration:
			if s, ok := v.v.(string); ok {
				return one(s)
			}
			return nil, `expected a duration string like "30s" or "1h", got ` + describe(v)
		}
	}
	if s, ok := v.v.(string); ok {
		return one(s)
	}
	return nil, fmt.Sprintf("expected a string like %q, got %s", exampleOf(fl), describe(v))
}

// numberKind names the kind of number a numeric flag takes.
func numberKind(fl *flag.Flag) string {
	if g, ok := fl.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case uint, uint64:
			return "a non-negative integer"
		case int, int64:
			return "an integer"
		case time.Duration:
			return `a duration like "30s" or "1h"`
		}
	}
	return "a number"
}

// exampleOf is the placeholder of a flag's usage (HOST:PORT, CIDR, ...).
func exampleOf(fl *flag.Flag) string {
	name, _ := flag.UnquoteUsage(fl)
	if name == "" || name == "value" {
		return "..."
	}
	return name
}

// userName is what a [server.users.NAME] table may be called.
var userName = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)

// parseUsers reads the value of [server.users]: one table per user with
// routes (CIDR strings), ports ("P", "LO-HI" or integers) and disabled.
func parseUsers(file string, v *tomlValue) (map[string]auth.UserPolicy, []error) {
	t, ok := v.v.(*tomlTable)
	if !ok {
		return nil, []error{&configError{file: file, line: v.line, key: "server.users",
			msg: "expected a table of users like [server.users.alice], got " + describe(v)}}
	}
	users := map[string]auth.UserPolicy{}
	var errs []error
	bad := func(line int, key, format string, args ...any) {
		errs = append(errs, &configError{file: file, line: line, key: key, msg: fmt.Sprintf(format, args...)})
	}
	for _, name := range t.keys {
		uv := t.vals[name]
		ukey := joinKey([]string{"server", "users", name})
		if !userName.MatchString(name) {
			bad(uv.line, ukey, "invalid user name: expected 1-64 characters of A-Z a-z 0-9 . _ @ -")
			continue
		}
		ut, ok := uv.v.(*tomlTable)
		if !ok {
			bad(uv.line, ukey, "expected a table with routes, ports and disabled, got %s", describe(uv))
			continue
		}
		var pol auth.UserPolicy
		for _, k := range ut.keys {
			fv := ut.vals[k]
			key := ukey + "." + joinKey([]string{k})
			switch k {
			case "routes":
				arr, ok := fv.v.([]*tomlValue)
				if !ok {
					bad(fv.line, key, `expected an array of CIDR strings like ["10.0.0.0/8"], got %s`, describe(fv))
					continue
				}
				pol.Routes = []netip.Prefix{}
				for i, el := range arr {
					s, ok := el.v.(string)
					pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
					if !ok || err != nil {
						bad(el.line, key, "element %d: %s is not a CIDR prefix: expected one like 10.0.0.0/8 or fd00::/8", i+1, describe(el))
						continue
					}
					pol.Routes = append(pol.Routes, pfx.Masked())
				}
			case "ports":
				arr, ok := fv.v.([]*tomlValue)
				if !ok {
					bad(fv.line, key, `expected an array of ports like [443, "8000-8100"], got %s`, describe(fv))
					continue
				}
				pol.Ports = []auth.PortRange{}
				for i, el := range arr {
					var s string
					switch x := el.v.(type) {
					case int64:
						s = strconv.FormatInt(x, 10)
					case string:
						s = x
					}
					pr, err := auth.ParsePortRange(s)
					if s == "" || err != nil {
						bad(el.line, key, `element %d: %s is not a port: expected a port 1-65535 or "LO-HI" like "8000-8100"`, i+1, describe(el))
						continue
					}
					pol.Ports = append(pol.Ports, pr)
				}
			case "disabled":
				b, ok := fv.v.(bool)
				if !ok {
					bad(fv.line, key, "expected a boolean (true or false), got %s", describe(fv))
					continue
				}
				pol.Disabled = b
			default:
				bad(fv.line, key, "unknown key: expected routes, ports or disabled")
			}
		}
		users[name] = pol
	}
	return users, errs
}

// sortErrors orders errors by file line (errors without a line first),
// keeping the order of equal lines.
func sortErrors(errs []error) {
	line := func(e error) int {
		var ce *configError
		if errors.As(e, &ce) {
			return ce.line
		}
		return -1
	}
	slices.SortStableFunc(errs, func(a, b error) int { return line(a) - line(b) })
}
