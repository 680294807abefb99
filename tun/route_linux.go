package tun

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/roamvpn/roam/tun/internal/nft"
)

// sysctlSrcValidMark makes reverse-path filtering use the packet's mark.
const sysctlSrcValidMark = "/proc/sys/net/ipv4/conf/all/src_valid_mark"

// Routing is the client's policy routing, installed the way wg-quick does it:
//
//	ip route add <route> dev <TunName> table <Table>        (each route)
//	ip rule add priority <Priority> lookup main suppress_prefixlength 0
//	ip rule add priority <Priority+1> not fwmark <Mark> lookup <Table>
//
// The rules exist for each address family that has routes. The first rule lets
// every route of the main table except its default route win, so the LAN stays
// reachable; the second sends everything else (and everything not in main)
// through the tunnel, except sockets marked with Mark (see ControlMark): the
// client's QUIC socket follows the main table whatever network it is on, so
// nothing needs rewriting when the network changes.
//
// Unless RoutingConfig.NoReplyMark is set, Routing also owns the nftables table
// "roam_mark_" + TunName and net.ipv4.conf.all.src_valid_mark (see
// RoutingConfig.NoReplyMark).
type Routing struct {
	mu sync.Mutex
	h  *netlink.Handle // guarded by mu; nil once closed
	ns netns.NsHandle  // guarded by mu; the namespace h talks to

	cfg    RoutingConfig    // with defaults
	routes []*netlink.Route // guarded by mu; added by us
	rules  []*netlink.Rule  // guarded by mu; added by us
	nft    *nftables.Conn   // guarded by mu; nil without the reply-mark table
	nftNS  netns.NsHandle   // guarded by mu; the namespace nft talks to
	table  *nftables.Table  // the reply-mark table
	srcVM  *sysctlSetting   // guarded by mu; src_valid_mark, if we changed it
	hasFam map[int]bool     // address families with routes
}

// InstallRouting installs the routes and rules of cfg in the calling thread's
// network namespace. It first removes what a crashed run with the same
// configuration left behind: every route in table Table, the
// suppress_prefixlength 0 rule at Priority, the rule for Table at
// Priority+1, and the system stack's redirect table
// RedirectTableName(TunName) (a crashed run of the system stack in
// redirect mode leaves it; it would send every TCP connection routed into
// the TUN to a loopback port that any local user could then listen on).
// So every client, whatever its stack and mode, starts without it; the
// caller starts a system stack on TunName only after InstallRouting. On error nothing it added stays. Two Routings at the same time
// need different Table, Priority and TunName values.
func InstallRouting(cfg RoutingConfig) (*Routing, error) {
	cfg = cfg.withDefaults()
	routes, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	ns, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("tun: routing: get network namespace: %w", err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	runtime.UnlockOSThread()
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("tun: routing: open netlink socket: %w", err)
	}
	r := &Routing{h: h, ns: ns, cfg: cfg, nftNS: netns.None(), hasFam: map[int]bool{}}
	if err := r.install(routes); err != nil {
		return nil, errors.Join(err, r.Close())
	}
	return r, nil
}

func (r *Routing) install(routes []netip.Prefix) error {
	cfg := r.cfg
	link, err := r.h.LinkByName(cfg.TunName)
	if err != nil {
		return fmt.Errorf("tun: routing: find link %s: %w", cfg.TunName, err)
	}
	if err := r.removeStale(); err != nil {
		return err
	}
	if !cfg.NoReplyMark {
		if err := r.installReplyMark(); err != nil {
			return err
		}
	}
	for _, p := range routes {
		rt := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
			Table:     cfg.Table,
			Protocol:  unix.RTPROT_STATIC,
		}
		fam := netlink.FAMILY_V6
		if p.Addr().Is4() {
			fam = netlink.FAMILY_V4
			rt.Scope = netlink.SCOPE_LINK
		}
		if err := r.h.RouteAdd(rt); err != nil {
			return fmt.Errorf("tun: routing: add route %s dev %s table %d: %w", p, cfg.TunName, cfg.Table, err)
		}
		r.routes = append(r.routes, rt)
		r.hasFam[fam] = true
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if !r.hasFam[fam] {
			continue
		}
		suppress := netlink.NewRule()
		suppress.Family = fam
		suppress.Priority = cfg.Priority
		suppress.Table = unix.RT_TABLE_MAIN
		suppress.SuppressPrefixlen = 0
		tunnel := netlink.NewRule()
		tunnel.Family = fam
		tunnel.Priority = cfg.Priority + 1
		tunnel.Mark = cfg.Mark
		tunnel.Invert = true
		tunnel.Table = cfg.Table
		for _, rule := range []*netlink.Rule{suppress, tunnel} {
			if err := r.h.RuleAdd(rule); err != nil {
				return fmt.Errorf("tun: routing: add rule %s: %w", ruleString(rule), err)
			}
			r.rules = append(r.rules, rule)
		}
	}
	return nil
}

// removeStale deletes routes in our table and our two rules, in both
// families, and the system stack's redirect table, as a crashed run would
// have left them.
func (r *Routing) removeStale() error {
	cfg := r.cfg
	if err := nft.DeleteStale(RedirectTableName(cfg.TunName)); err != nil {
		return fmt.Errorf("tun: routing: remove the stale system stack table: %w", err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := retryDump(func() ([]netlink.Rule, error) { return r.h.RuleList(fam) })
		if errors.Is(err, unix.EAFNOSUPPORT) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return fmt.Errorf("tun: routing: list rules: %w", err)
		}
		for _, rule := range rules {
			ours := rule.Priority == cfg.Priority && rule.Table == unix.RT_TABLE_MAIN && rule.SuppressPrefixlen == 0 ||
				rule.Priority == cfg.Priority+1 && rule.Table == cfg.Table
			if !ours {
				continue
			}
			if err := r.h.RuleDel(&rule); err != nil && !isNotFound(err) {
				return fmt.Errorf("tun: routing: remove stale rule %s: %w", ruleString(&rule), err)
			}
		}
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return r.h.RouteListFiltered(fam, &netlink.Route{Table: cfg.Table}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return fmt.Errorf("tun: routing: list routes in table %d: %w", cfg.Table, err)
		}
		for _, rt := range routes {
			if err := r.h.RouteDel(&rt); err != nil && !isNotFound(err) {
				return fmt.Errorf("tun: routing: remove stale route %s table %d: %w", rt.Dst, cfg.Table, err)
			}
		}
	}
	return nil
}

// installReplyMark creates the reply-mark nftables table (replacing a stale
// one) and sets src_valid_mark:
//
//	table inet roam_mark_<tun> {
//		chain premangle {
//			type filter hook prerouting priority mangle; policy accept;
//			meta l4proto udp ct mark <Mark> meta mark set ct mark
//		}
//		chain postmangle {
//			type filter hook postrouting priority mangle; policy accept;
//			meta l4proto udp meta mark <Mark> ct mark set meta mark
//		}
//	}
func (r *Routing) installReplyMark() error {
	name := replyMarkTableName(r.cfg.TunName)
	conn, ns, err := nft.NewConn()
	if err != nil {
		return fmt.Errorf("tun: routing: nftables table inet %s (set NoReplyMark to go without): %w", name, err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	nft.ReplaceTable(conn, t)
	accept := nftables.ChainPolicyAccept
	pre := conn.AddChain(&nftables.Chain{
		Name: "premangle", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept,
	})
	post := conn.AddChain(&nftables.Chain{
		Name: "postmangle", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityMangle, Policy: &accept,
	})
	udp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
	}
	conn.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: append(append([]expr.Any{}, udp...),
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nft.U32(r.cfg.Mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	)})
	conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: append(append([]expr.Any{}, udp...),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nft.U32(r.cfg.Mark)},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1},
	)})
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		ns.Close()
		return fmt.Errorf("tun: routing: create nftables table inet %s (set NoReplyMark to go without): %w", name, err)
	}
	r.nft, r.nftNS, r.table = conn, ns, t

	s, err := setSysctl(sysctlSrcValidMark, "1")
	if err != nil {
		return fmt.Errorf("tun: routing: %w", err)
	}
	r.srcVM = s
	return nil
}

// Close removes the rules, routes and nftables table that InstallRouting
// added and restores src_valid_mark. It is idempotent; things already gone
// are not an error.
func (r *Routing) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.h == nil {
		return nil
	}
	var errs []error
	for i := len(r.rules) - 1; i >= 0; i-- {
		if err := r.h.RuleDel(r.rules[i]); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("tun: routing: remove rule %s: %w", ruleString(r.rules[i]), err))
		}
	}
	for _, rt := range r.routes {
		if err := r.h.RouteDel(rt); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("tun: routing: remove route %s table %d: %w", rt.Dst, rt.Table, err))
		}
	}
	if r.nft != nil {
		if err := nft.DeleteTable(r.nft, r.table); err != nil {
			errs = append(errs, fmt.Errorf("tun: routing: delete nftables table inet %s: %w", r.table.Name, err))
		}
		r.nft.CloseLasting()
		r.nftNS.Close()
		r.nft = nil
	}
	if r.srcVM != nil {
		errs = append(errs, r.srcVM.restore())
		r.srcVM = nil
	}
	r.rules, r.routes = nil, nil
	r.h.Close()
	r.ns.Close()
	r.h = nil
	return errors.Join(errs...)
}

// ControlMark returns a net.ListenConfig / net.Dialer Control func that sets
// SO_MARK=mark on the socket, so that policy routing (see Routing) keeps the
// socket's packets out of the tunnel. It needs CAP_NET_ADMIN.
func ControlMark(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return fmt.Errorf("tun: set SO_MARK on %s socket: %w", network, err)
		}
		if serr != nil {
			return fmt.Errorf("tun: set SO_MARK=%#x on %s socket (needs CAP_NET_ADMIN): %w", mark, network, serr)
		}
		return nil
	}
}

// retryDump retries a netlink dump that the kernel interrupted because the
// table changed meanwhile.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var (
		res []T
		err error
	)
	for range 5 {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return res, err
}

// isNotFound reports whether a netlink delete failed because the object is
// already gone.
func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// ruleString formats a rule like `ip rule` does, for errors.
func ruleString(r *netlink.Rule) string {
	fam := "-4"
	if r.Family == netlink.FAMILY_V6 {
		fam = "-6"
	}
	s := fmt.Sprintf("%s priority %d", fam, r.Priority)
	if r.Mark != 0 {
		if r.Invert {
			s += " not"
		}
		s += fmt.Sprintf(" fwmark %#x", r.Mark)
	}
	s += fmt.Sprintf(" lookup %d", r.Table)
	if r.SuppressPrefixlen >= 0 {
		s += fmt.Sprintf(" suppress_prefixlength %d", r.SuppressPrefixlen)
	}
	return s
}
