package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/roamvpn/roam/tunnel"
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

// stringList is the repeatable --web-origin flag; each value is checked
// and kept in canonical form.
type stringList struct{ vals []string }

func (l *stringList) String() string { return strings.Join(l.vals, ",") }

func (l *stringList) Set(v string) error {
	o, err := tunnel.ParseWebOrigin(strings.TrimSpace(v))
	if err != nil {
		return err // names the value, what is wrong and the expected form
	}
	l.vals = append(l.vals, o)
	return nil
}

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

// addrList is the repeatable --dns flag of the server: IP addresses.
type addrList struct{ vals []netip.Addr }

func (l *addrList) String() string {
	s := make([]string, len(l.vals))
	for i, v := range l.vals {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

func (l *addrList) Set(v string) error {
	a, err := netip.ParseAddr(strings.TrimSpace(v))
	if err != nil || a.IsUnspecified() || a.Zone() != "" {
		return errors.New("expected a DNS server's IP address like 100.96.0.1 or fd00:96::1")
	}
	l.vals = append(l.vals, a.Unmap())
	return nil
}
