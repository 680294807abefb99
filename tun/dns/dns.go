// Package dns points the host's resolver at the DNS servers a Roam server
// pushes, for as long as the tunnel is up, and puts the previous setup back
// afterwards.
//
// Two backends, picked by [Configure] (see [Backend]):
//
//   - systemd-resolved over D-Bus (org.freedesktop.resolve1 on the system
//     bus): SetLinkDNS, SetLinkDomains and SetLinkDefaultRoute on the TUN
//     link. In full-tunnel mode the link gets the routing domain "~.", so
//     resolved sends every query there and none to the local network's
//     resolvers (names of another link's own routing domains, such as a
//     DHCP "lan" domain, still go to that link, as with wg-quick). Close
//     calls RevertLink; resolved also forgets the link when it disappears,
//     so a crashed client leaves nothing behind.
//   - a managed resolv.conf: the file (default /etc/resolv.conf) is saved
//     next to itself (path + [BackupSuffix]), replaced by a file that starts
//     with [Header] and lists only the pushed servers, and restored by
//     Close. A symlink (for example to resolved's stub-resolv.conf) is saved
//     and restored as a symlink; Roam never writes through it into the
//     target. A path that is a mount point (what `ip netns exec` bind-mounts
//     from /etc/netns/NAME/resolv.conf) is rewritten in place. Crash safety:
//     Configure first restores a backup a previous client left behind if the
//     file is still Roam's, and drops the backup if someone else has
//     replaced the file since. A client in a network namespace of its own (a named
//     `ip netns` one, or not PID 1's) refuses to touch the default
//     /etc/resolv.conf unless a file is mounted over it: otherwise it is the
//     host's, and the whole host would be pointed at servers only the
//     namespace reaches.
//
// Either way only the pushed servers are asked, and the server routes them
// through the tunnel, so a full tunnel does not leak queries to the local
// network (with resolved: except other links' routing domains, see above).
//
// Nothing here is safe for concurrent use on the same file or link; one
// client configures one link.
package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// DefaultResolvConf is the file the resolv.conf backend manages unless
// Config.ResolvConf says otherwise.
const DefaultResolvConf = "/etc/resolv.conf"

// Backend selects how DNS is configured.
type Backend int

const (
	// Auto uses systemd-resolved when it serves this host's resolv.conf
	// (it owns org.freedesktop.resolve1 on the system bus, the process
	// is in the network namespace of PID 1 so the link index means the
	// same to resolved (assumed when PID 1's namespace cannot be looked
	// at, as for a non-root service), and the resolv.conf points at
	// resolved: a symlink into /run/systemd/resolve/ or nameserver
	// 127.0.0.53/54); otherwise the resolv.conf file. A non-root client
	// needs polkit's permission for resolved's link settings
	// (deploy/systemd/roam-resolved.rules).
	Auto Backend = iota
	// Resolved requires systemd-resolved; Configure fails without it.
	Resolved
	// File always manages the resolv.conf file.
	File
)

func (b Backend) String() string {
	switch b {
	case Auto:
		return "auto"
	case Resolved:
		return "systemd-resolved"
	case File:
		return "resolv.conf"
	}
	return fmt.Sprintf("Backend(%d)", int(b))
}

// Config says what to configure.
type Config struct {
	// Servers are the DNS servers, in preference order. At least one is
	// required.
	Servers []netip.Addr
	// Domains are search domains (optional).
	Domains []string
	// IfName is the TUN link the servers are reached through. Required
	// for the resolved backend (which configures that link); the file
	// backend only names it in the file's comment.
	IfName string
	// FullTunnel routes every query to Servers: resolved gets the routing
	// domain "~." and the default route on the link. Without it, resolved
	// uses the link's servers alongside the other links' (split tunnel);
	// the file backend lists only Servers either way.
	FullTunnel bool
	// ResolvConf is the file the file backend manages; empty means
	// DefaultResolvConf. In Auto mode it is also the file checked for
	// whether resolved is in use.
	ResolvConf string
	// BackupPath is where the previous file is kept; empty means
	// ResolvConf + BackupSuffix.
	BackupPath string
	// Backend picks the backend; the zero value is Auto.
	Backend Backend
	// Logger receives what was configured and restored. Nil means silent.
	Logger *slog.Logger
}

// Handle is an applied DNS configuration; Close undoes it.
type Handle struct {
	backend Backend
	rc      *resolvConf // file backend
	link    *resolvedLink
	once    sync.Once
	err     error
	log     *slog.Logger
}

// Backend returns the backend in use (Resolved or File).
func (h *Handle) Backend() Backend { return h.backend }

// Configure applies cfg and returns a Handle whose Close restores the
// previous state. On error nothing is left changed (apart from a stale
// backup that crash recovery has put back).
func Configure(cfg Config) (*Handle, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("dns: Config.Servers is empty; want at least one server address")
	}
	for i, a := range cfg.Servers {
		if !a.IsValid() || a.IsUnspecified() {
			return nil, fmt.Errorf("dns: Config.Servers[%d]: %v is not a server address", i, a)
		}
	}
	for i, d := range cfg.Domains {
		if d == "" || strings.ContainsAny(d, " \t\r\n#;") {
			return nil, fmt.Errorf("dns: Config.Domains[%d]: %q is not a domain name", i, d)
		}
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	if cfg.BackupPath == "" {
		cfg.BackupPath = cfg.ResolvConf + BackupSuffix
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "dns")
	cfg.Logger = log
	h := &Handle{log: log}

	useResolved := cfg.Backend == Resolved
	if cfg.Backend == Auto {
		ok, why := resolvedInUse(cfg.ResolvConf)
		useResolved = ok
		if !ok {
			log.Debug("not using systemd-resolved", "reason", why)
		}
	}
	if useResolved {
		ifi, err := net.InterfaceByName(cfg.IfName)
		if err != nil {
			return nil, fmt.Errorf("dns: link %q: %w", cfg.IfName, err)
		}
		l, err := configureResolved(ifi.Index, &cfg)
		if err != nil {
			return nil, err
		}
		h.backend, h.link = Resolved, l
		log.Info("DNS via systemd-resolved", "link", cfg.IfName, "servers", cfg.Servers, "all_queries", cfg.FullTunnel)
		return h, nil
	}

	if cfg.ResolvConf == DefaultResolvConf {
		if err := refuseHostFile(cfg.ResolvConf); err != nil {
			return nil, err
		}
	}
	rc := &resolvConf{path: cfg.ResolvConf, backup: cfg.BackupPath, log: log}
	if err := rc.recover(); err != nil {
		return nil, err
	}
	if err := rc.install(render(&cfg, filepath.Base(cfg.BackupPath))); err != nil {
		return nil, err
	}
	h.backend, h.rc = File, rc
	log.Info("DNS via resolv.conf", "file", cfg.ResolvConf, "servers", cfg.Servers, "backup", cfg.BackupPath)
	return h, nil
}

// Close restores what Configure changed: resolved's link settings are
// reverted, or the saved resolv.conf is put back (unless someone else has
// replaced Roam's file meanwhile; theirs is kept). It is idempotent and
// returns the first call's error.
func (h *Handle) Close() error {
	h.once.Do(func() {
		switch h.backend {
		case Resolved:
			h.err = h.link.revert()
		case File:
			h.err = h.rc.restore()
		}
		if h.err != nil {
			h.log.Warn("restoring DNS failed", "err", h.err)
		} else {
			h.log.Info("DNS restored", "backend", h.backend)
		}
	})
	return h.err
}

// HostResolver returns the first nameserver of the resolv.conf at path
// (DefaultResolvConf if empty), for forwarding queries to the host's
// resolver. Loopback resolvers such as resolved's 127.0.0.53 are returned
// as they are.
func HostResolver(path string) (netip.Addr, error) {
	if path == "" {
		path = DefaultResolvConf
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("dns: reading the host's resolver: %w", err)
	}
	ns := parseNameservers(b)
	if len(ns) == 0 {
		return netip.Addr{}, fmt.Errorf("dns: %s has no nameserver line; want e.g. \"nameserver 192.0.2.53\"", path)
	}
	return ns[0], nil
}
