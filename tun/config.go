package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/roamvpn/roam/tun/internal/nft"
)

// Policy routing defaults: "Ro" in ASCII.
const (
	// DefaultMark is the socket mark (SO_MARK) the client's QUIC socket
	// carries so that its packets bypass the tunnel.
	DefaultMark uint32 = 0x526f
	// DefaultTable is the routing table that holds the tunnel routes.
	DefaultTable = 0x526f
	// DefaultPriority is the priority of the first of the two routing rules.
	DefaultPriority = 5260
)

// linuxIfNameMax is IFNAMSIZ-1: the longest Linux interface name.
const linuxIfNameMax = 15

// MasqueradeConfig configures [NewMasquerade].
type MasqueradeConfig struct {
	// TunName is the server's TUN device (for example "roam0"). Required.
	TunName string
	// Pools are the client address pools whose packets are masqueraded when
	// they leave through another interface. At least one is required; host
	// bits are ignored.
	Pools []netip.Prefix
	// Egress, if not empty, restricts masquerading to packets leaving through
	// this interface. If empty, every interface except TunName qualifies.
	Egress string
}

// RoutingConfig configures [InstallRouting]. Zero values select the defaults.
type RoutingConfig struct {
	// TunName is the client's TUN device. Required; it must be up (see
	// ConfigureLink) because the kernel refuses routes through a down link.
	TunName string
	// Routes go into table Table via TunName. At least one is required; host
	// bits are ignored and duplicates are merged. 0.0.0.0/0 and ::/0 make a
	// full tunnel.
	Routes []netip.Prefix
	// Table is the routing table for Routes. If zero, DefaultTable is used.
	// It must not be a reserved table (253 default, 254 main, 255 local) and
	// must not be shared with anything else: InstallRouting flushes it.
	Table int
	// Mark is the socket mark that keeps a socket out of the tunnel (see
	// ControlMark). If zero, DefaultMark is used.
	Mark uint32
	// Priority is the priority of the "lookup main suppress_prefixlength 0"
	// rule; the "not fwmark Mark lookup Table" rule gets Priority+1. If zero,
	// DefaultPriority is used. Both must come before the main table's rule
	// (32766).
	Priority int
	// NoReplyMark, if false (the default), makes InstallRouting also do what
	// wg-quick does for strict reverse-path filtering: an nftables table
	// ("roam_mark_" + TunName) copies Mark from outgoing UDP packets into
	// their conntrack entry and back onto the replies, and
	// net.ipv4.conf.all.src_valid_mark is set to 1, so rp_filter=1 does not
	// drop the replies to the marked socket. Set it where nftables is
	// unavailable and rp_filter is 0 or 2.
	NoReplyMark bool
}

// withDefaults returns c with zero fields replaced by their defaults.
func (c RoutingConfig) withDefaults() RoutingConfig {
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	return c
}

// validate checks a config that already has its defaults and returns the
// routes masked and de-duplicated, in their original order.
func (c RoutingConfig) validate() ([]netip.Prefix, error) {
	if err := checkIfName("RoutingConfig.TunName", c.TunName, true); err != nil {
		return nil, err
	}
	switch {
	case c.Table < 0 || int64(c.Table) > 0xffffffff:
		return nil, fmt.Errorf("tun: RoutingConfig.Table %d: want 1..4294967295", c.Table)
	case c.Table >= 253 && c.Table <= 255:
		return nil, fmt.Errorf("tun: RoutingConfig.Table %d is reserved (253 default, 254 main, 255 local)", c.Table)
	}
	if c.Priority < 1 || c.Priority+1 >= 32766 {
		return nil, fmt.Errorf("tun: RoutingConfig.Priority %d: want 1..32764 (before the main table's rule at 32766)", c.Priority)
	}
	if len(c.Routes) == 0 {
		return nil, errors.New("tun: RoutingConfig.Routes is empty: want at least one prefix such as 0.0.0.0/0")
	}
	return normalizePrefixes("RoutingConfig.Routes", c.Routes)
}

// validate checks the config and returns the pools masked and de-duplicated.
func (c MasqueradeConfig) validate() ([]netip.Prefix, error) {
	if err := checkIfName("MasqueradeConfig.TunName", c.TunName, true); err != nil {
		return nil, err
	}
	if err := checkIfName("MasqueradeConfig.Egress", c.Egress, false); err != nil {
		return nil, err
	}
	if c.Egress == c.TunName {
		return nil, fmt.Errorf("tun: MasqueradeConfig.Egress %q is the TUN device itself", c.Egress)
	}
	if len(c.Pools) == 0 {
		return nil, errors.New("tun: MasqueradeConfig.Pools is empty: want at least one prefix such as 10.77.0.0/16")
	}
	return normalizePrefixes("MasqueradeConfig.Pools", c.Pools)
}

// normalizePrefixes masks ps (4in6 addresses become IPv4) and drops
// duplicates, keeping the first occurrence's order.
func normalizePrefixes(field string, ps []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ps))
	seen := make(map[netip.Prefix]bool, len(ps))
	for i, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("tun: %s[%d] is not a valid prefix: want a form like 10.77.0.0/16 or fd00::/64", field, i)
		}
		if p.Addr().Is4In6() {
			bits := p.Bits() - 96
			if bits < 0 {
				return nil, fmt.Errorf("tun: %s[%d] %s: an IPv4-mapped prefix needs at least /96", field, i, p)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		p = p.Masked()
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// checkIfName checks a Linux interface name the way the kernel's
// dev_valid_name does, so errors name the config field.
func checkIfName(field, name string, required bool) error {
	if name == "" {
		if required {
			return fmt.Errorf("tun: %s is empty: want an interface name such as roam0", field)
		}
		return nil
	}
	if len(name) > linuxIfNameMax {
		return fmt.Errorf("tun: %s %q is longer than %d bytes", field, name, linuxIfNameMax)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\r\v\f\x00") {
		return fmt.Errorf("tun: %s %q is not a valid interface name (no '/', ':', whitespace, \".\" or \"..\")", field, name)
	}
	return nil
}

// TableName returns the name of the nftables table (family inet) that
// NewMasquerade creates for a TUN device: "roam_" followed by tunName with
// every byte outside [A-Za-z0-9_] replaced by '_'.
func TableName(tunName string) string {
	return "roam_" + nft.Sanitize(tunName)
}

// replyMarkTableName is the nftables table InstallRouting creates.
func replyMarkTableName(tunName string) string {
	return "roam_mark_" + nft.Sanitize(tunName)
}

// RedirectTableName returns the name of the nftables table (family inet)
// that the system stack (package tun/systack) creates for a TUN device in
// redirect mode: "roamsys_" followed by tunName with every byte outside
// [A-Za-z0-9_] replaced by '_'. Its rules send the TCP SYNs routed into
// the TUN to a loopback port; a table a crashed run left would send them
// to a port nobody may own, so InstallRouting deletes one (see
// RoutingConfig).
func RedirectTableName(tunName string) string {
	return "roamsys_" + nft.Sanitize(tunName)
}
