package dns

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/godbus/dbus/v5"
)

const (
	resolvedName = "org.freedesktop.resolve1"
	resolvedPath = "/org/freedesktop/resolve1"
	resolvedMgr  = "org.freedesktop.resolve1.Manager."
)

// resolvedLink is a link configured through systemd-resolved.
type resolvedLink struct {
	conn    *dbus.Conn
	ifindex int
}

// linkDNS is resolved's (iay) address: family and bytes.
type linkDNS struct {
	Family  int32
	Address []byte
}

// linkDomain is resolved's (sb) domain: name and routing-only.
type linkDomain struct {
	Domain      string
	RoutingOnly bool
}

// resolvedInUse reports whether systemd-resolved answers this process's
// queries for the link indexes it sees, and if not, why.
func resolvedInUse(resolvConf string) (bool, string) {
	if !sameNetnsAsInit() {
		return false, "not in the network namespace of PID 1 (resolved's link indexes differ)"
	}
	if !pointsAtResolved(resolvConf) {
		return false, resolvConf + " does not point at resolved"
	}
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return false, "no system bus: " + err.Error()
	}
	defer conn.Close()
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&has); err != nil || !has {
		return false, resolvedName + " is not on the system bus"
	}
	return true, ""
}

// sameNetnsAsInit reports whether this thread is in the host's network
// namespace: not in a named one (`ip netns`, /run/netns/NAME), and in
// PID 1's. A process that may not look at PID 1's namespace (a hardened
// service with CAP_NET_ADMIN only, or a sandbox) is taken to share it.
func sameNetnsAsInit() bool {
	var self syscall.Stat_t
	if syscall.Stat("/proc/thread-self/ns/net", &self) != nil {
		return false
	}
	same := func(st *syscall.Stat_t) bool { return st.Ino == self.Ino && st.Dev == self.Dev }
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			var st syscall.Stat_t
			if syscall.Stat(filepath.Join(netnsDir, e.Name()), &st) == nil && same(&st) {
				return false
			}
		}
	}
	var init syscall.Stat_t
	if err := syscall.Stat("/proc/1/ns/net", &init); err != nil {
		return err == syscall.EACCES || err == syscall.EPERM
	}
	return same(&init)
}

// netnsDir holds the named network namespaces of `ip netns`.
const netnsDir = "/run/netns"

// pointsAtResolved reports whether the resolv.conf at path sends queries to
// resolved: a symlink into /run/systemd/resolve/, or a file whose
// nameservers are resolved's stub addresses.
func pointsAtResolved(path string) bool {
	if t, err := filepath.EvalSymlinks(path); err == nil && strings.HasPrefix(t, "/run/systemd/resolve/") {
		return true
	}
	b, err := os.ReadFile(path)
	if err != nil || bytes.HasPrefix(b, []byte(Header)) {
		return false
	}
	ns := parseNameservers(b)
	for _, a := range ns {
		if a != netip.MustParseAddr("127.0.0.53") && a != netip.MustParseAddr("127.0.0.54") {
			return false
		}
	}
	return len(ns) > 0
}

// configureResolved sets the link's DNS servers, domains and default
// route. On error the link is reverted.
func configureResolved(ifindex int, cfg *Config) (*resolvedLink, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("dns: connecting to the system bus: %w", err)
	}
	l := &resolvedLink{conn: conn, ifindex: ifindex}
	var servers []linkDNS
	for _, a := range cfg.Servers {
		fam := int32(syscall.AF_INET)
		if a.Is6() && !a.Is4In6() {
			fam = syscall.AF_INET6
		}
		addr := a.Unmap()
		if fam == syscall.AF_INET6 {
			addr = a.WithZone("")
		}
		servers = append(servers, linkDNS{Family: fam, Address: addr.AsSlice()})
	}
	var domains []linkDomain
	if cfg.FullTunnel {
		domains = append(domains, linkDomain{Domain: ".", RoutingOnly: true}) // "~." in resolvectl's notation
	}
	for _, d := range cfg.Domains {
		domains = append(domains, linkDomain{Domain: d})
	}
	if domains == nil {
		domains = []linkDomain{}
	}
	obj := conn.Object(resolvedName, resolvedPath)
	steps := []struct {
		method string
		args   []any
	}{
		{"SetLinkDNS", []any{int32(ifindex), servers}},
		{"SetLinkDomains", []any{int32(ifindex), domains}},
		{"SetLinkDefaultRoute", []any{int32(ifindex), true}},
	}
	for _, s := range steps {
		err := obj.Call(resolvedMgr+s.method, 0, s.args...).Err
		if err != nil && s.method == "SetLinkDefaultRoute" && dbusErrName(err) == "org.freedesktop.DBus.Error.UnknownMethod" {
			// systemd < 240 has no default-route flag; "~." alone routes
			// every query to the link there.
			cfg.Logger.Debug("systemd-resolved has no SetLinkDefaultRoute", "err", err)
			continue
		}
		if err != nil {
			l.revert()
			return nil, fmt.Errorf("dns: systemd-resolved %s on link %d: %w", s.method, ifindex, err)
		}
	}
	return l, nil
}

// revert undoes the link's settings (RevertLink) and closes the bus
// connection. A link that is already gone counts as reverted.
func (l *resolvedLink) revert() error {
	defer l.conn.Close()
	err := l.conn.Object(resolvedName, resolvedPath).Call(resolvedMgr+"RevertLink", 0, int32(l.ifindex)).Err
	if dbusErrName(err) == resolvedName+".NoSuchLink" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dns: systemd-resolved RevertLink on link %d: %w", l.ifindex, err)
	}
	return nil
}

// dbusErrName returns the D-Bus error name of err, or "".
func dbusErrName(err error) string {
	var e dbus.Error
	if errors.As(err, &e) {
		return e.Name
	}
	var pe *dbus.Error
	if errors.As(err, &pe) {
		return pe.Name
	}
	return ""
}

// refuseHostFile guards the host's resolver file against a client in a
// network namespace of its own (ip netns exec, a test): there path is
// still the host's file unless something bind-mounted a namespace's own
// over it (ip netns exec does, from /etc/netns/NAME/resolv.conf; container
// runtimes do too). Changing the host's file from inside a namespace
// would point the whole host at servers only the namespace can reach.
func refuseHostFile(path string) error {
	if sameNetnsAsInit() || isMountPoint(path) {
		return nil
	}
	return fmt.Errorf("dns: this process runs in another network namespace than PID 1, and %s is the host's file "+
		"(nothing is mounted over it, as ip netns exec does from /etc/netns/NAME/resolv.conf); refusing to change the host's DNS: "+
		"give the namespace its own file (--resolv-conf) or leave DNS alone (--dns off)", path)
}

// isMountPoint reports whether path is the mount point of a mount in
// this process's mount namespace (/proc/self/mountinfo, field 5).
func isMountPoint(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 && unescapeMount(f[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
