package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
)

// prefixList is a repeatable CIDR flag.
type prefixList struct {
	vals []netip.Prefix
	set  bool
}

func (p *prefixList) String() string {
	s := make([]string, len(p.vals))
	for i, v := range p.vals {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixList) Set(v string) error {
	pfx, err := netip.ParsePrefix(strings.TrimSpace(v))
	if err != nil {
		return errors.New("expected a CIDR prefix like 10.0.0.0/8 or fd00::/8")
	}
	if !p.set {
		p.vals, p.set = nil, true
	}
	p.vals = append(p.vals, pfx.Masked())
	return nil
}

func (p *prefixList) repeatable() {}

// stringList is a repeatable string flag. If check is set, each value is
// checked and kept in the canonical form check returns.
type stringList struct {
	vals  []string
	check func(string) (string, error)
}

func (l *stringList) String() string { return strings.Join(l.vals, ",") }

func (l *stringList) Set(v string) error {
	v = strings.TrimSpace(v)
	if l.check != nil {
		var err error
		if v, err = l.check(v); err != nil {
			return err // names the value, what is wrong and the expected form
		}
	} else if v == "" {
		return errors.New("expected a non-empty value")
	}
	l.vals = append(l.vals, v)
	return nil
}

func (l *stringList) repeatable() {}

// prefixFlag is one CIDR of a given family.
type prefixFlag struct {
	val    netip.Prefix
	want4  bool
	family string
}

func (p *prefixFlag) String() string { return p.val.String() }

func (p *prefixFlag) Set(v string) error {
	pfx, err := netip.ParsePrefix(strings.TrimSpace(v))
	if err != nil || pfx.Addr().Is4() != p.want4 || pfx.Addr().Is4In6() {
		if p.want4 {
			return errors.New("expected an IPv4 CIDR prefix like 100.96.0.0/16")
		}
		return errors.New("expected an IPv6 CIDR prefix like fd00:96::/64")
	}
	p.val = pfx.Masked()
	return nil
}

// parseFlags parses args with fs and turns every error into a one-line
// usage error naming the flag; -h prints the flag list.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (help bool, err error) {
	fs.SetOutput(io.Discard)
	err = fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "usage: roam %s [flags]\n\nflags:\n", fs.Name())
		fs.PrintDefaults()
		return true, nil
	}
	if err != nil {
		// flag's messages are "invalid value "x" for flag -pool4: expected ..."
		// and "flag provided but not defined: -x": one line each.
		msg := strings.ReplaceAll(err.Error(), "flag -", "flag --")
		msg = strings.ReplaceAll(msg, `" for -`, `" for --`) // bool flags: `invalid boolean value "x" for -web`
		if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -"); ok {
			msg = "unknown flag --" + strings.TrimPrefix(name, "-") + " (roam " + fs.Name() + " -h lists the flags)"
		}
		return false, usagef("%s: %s", fs.Name(), msg)
	}
	if fs.NArg() > 0 {
		return false, usagef("%s: unexpected argument %q (flags start with --)", fs.Name(), fs.Arg(0))
	}
	return false, nil
}

// flagError is a bad flag value (or combination of flags) found after
// parsing, when the value may have come from the command line or from the
// config file: fileSource.resolve words it for where it came from.
type flagError struct {
	flags []string // the flag it is about first, then others involved
	value string   // the bad value; "" for a missing or conflicting flag
	msg   string   // command-line form: what is wrong, the expected form
	fmsg  string   // file form of msg, if it differs
}

// badValue is an invalid value of one flag.
func badValue(name, value, format string, args ...any) *flagError {
	return &flagError{flags: []string{name}, value: value, msg: fmt.Sprintf(format, args...)}
}

// badFlags is a missing flag or a bad combination: cmdMsg names the flags
// (--cert), fileMsg the keys (cert).
func badFlags(names []string, cmdMsg, fileMsg string) *flagError {
	return &flagError{flags: names, msg: cmdMsg, fmsg: fileMsg}
}

// commonChecks are the checks of flags both commands have.
func commonChecks(logLevel, debug string) []*flagError {
	var errs []*flagError
	var l slog.Level
	if err := l.UnmarshalText([]byte(logLevel)); err != nil {
		errs = append(errs, badValue("log-level", logLevel, "expected debug, info, warn or error"))
	}
	if debug != "" {
		host, _, err := net.SplitHostPort(debug)
		if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			errs = append(errs, badValue("debug", debug, "expected a loopback HOST:PORT like 127.0.0.1:6060"))
		}
	}
	return errs
}

// cmdLineFlags returns the names of the flags fs's command line set.
func cmdLineFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// loadFlags applies the config file (if any) to the flags of fs after
// fs.Parse and runs check on the result. It returns every problem: the
// file's as *configError, the command line's as *usageError. other
// handles the table's keys that are not flags (see applyConfig).
func loadFlags(fs *flag.FlagSet, cfg *configFile, other func(string, *tomlValue) (bool, []error), check func() []*flagError) []error {
	cmd := fs.Name()
	onCmdLine := cmdLineFlags(fs)
	src := &fileSource{table: cmd, lines: map[string]int{}, cmdLine: onCmdLine}
	var errs []error
	if cfg != nil {
		errs = append(errs, cfg.errs...)
		t := cfg.table(cmd)
		if t == nil && len(cfg.errs) == 0 {
			errs = append(errs, &configError{file: cfg.path, msg: fmt.Sprintf("no [%s] table: expected the %s's settings in a [%s] table", cmd, cmd, cmd)})
		}
		var aerrs []error
		src, aerrs = applyConfig(fs, cfg.path, cmd, t, onCmdLine, other)
		errs = append(errs, aerrs...)
	}
	failed := map[string]bool{}
	for _, e := range errs {
		var ce *configError
		if errors.As(e, &ce) && strings.HasPrefix(ce.key, cmd+".") {
			failed[strings.ReplaceAll(strings.TrimPrefix(ce.key, cmd+"."), "_", "-")] = true
		}
	}
	for _, fe := range check() {
		if failed[fe.flags[0]] {
			continue // already reported with its key
		}
		errs = append(errs, src.resolve(fe))
	}
	sortErrors(errs)
	return errs
}

// usageErrors joins the problems loadFlags found into one usage error, one
// problem a line: every problem of the file, and the first of the command
// line (which, like flag.Parse, stops at the first).
func usageErrors(cmd string, errs []error) error {
	var lines []string
	cmdLine := false
	for _, e := range errs {
		var ue *usageError
		switch {
		case !errors.As(e, &ue):
			lines = append(lines, cmd+": "+e.Error())
		case !cmdLine:
			lines = append(lines, ue.msg)
			cmdLine = true
		}
	}
	return &usageError{strings.Join(lines, "\n")}
}

// ipList is the repeatable --dns flag of the server: IP addresses.
type ipList struct{ vals []netip.Addr }

func (l *ipList) String() string {
	s := make([]string, len(l.vals))
	for i, v := range l.vals {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func (l *ipList) Set(v string) error {
	a, err := netip.ParseAddr(strings.TrimSpace(v))
	if err != nil || a.IsUnspecified() || a.Zone() != "" {
		return errors.New("expected a DNS server's IP address like 100.96.0.1 or fd00:96::1")
	}
	l.vals = append(l.vals, a.Unmap())
	return nil
}

func (l *ipList) repeatable() {}
