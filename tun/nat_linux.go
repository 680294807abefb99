package tun

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/roamvpn/roam/tun/internal/nft"
)

// Masquerade is an nftables table owned by Roam that masquerades the client
// pools on the server. Its rules, as `nft list table inet roam_roam0` shows
// them (with Egress empty):
//
//	table inet roam_roam0 {
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr 10.77.0.0/16 oifname != "roam0" counter masquerade
//			ip6 saddr fd77::/64 oifname != "roam0" counter masquerade
//		}
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "roam0" counter accept
//			oifname "roam0" ct state established,related counter accept
//		}
//	}
//
// The forward chain changes nothing on a host without other rules. A verdict
// in one nftables table does not bind another: a host firewall whose forward
// chain (in another table, or iptables) has policy drop still drops the
// clients' packets, and must accept them itself.
type Masquerade struct {
	mu    sync.Mutex
	conn  *nftables.Conn // guarded by mu; nil once closed
	ns    netns.NsHandle // guarded by mu; the namespace conn talks to
	table *nftables.Table
}

// NewMasquerade creates the table TableName(cfg.TunName) in family inet,
// replacing a table of that name left by a crashed run, in one atomic
// nftables transaction. It needs CAP_NET_ADMIN and nf_tables with NAT support
// (Linux 5.2 or newer for NAT in the inet family).
func NewMasquerade(cfg MasqueradeConfig) (*Masquerade, error) {
	pools, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	name := TableName(cfg.TunName)
	conn, ns, err := nft.NewConn()
	if err != nil {
		return nil, fmt.Errorf("tun: nftables table inet %s: %w", name, err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	nft.ReplaceTable(conn, t)

	post := conn.AddChain(&nftables.Chain{
		Name:     "postrouting",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	for _, p := range pools {
		exprs := matchSource(p)
		exprs = append(exprs, nft.MatchIfName(expr.MetaKeyOIFNAME, expr.CmpOpNeq, cfg.TunName)...)
		if cfg.Egress != "" {
			exprs = append(exprs, nft.MatchIfName(expr.MetaKeyOIFNAME, expr.CmpOpEq, cfg.Egress)...)
		}
		exprs = append(exprs, &expr.Counter{}, &expr.Masq{})
		conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: exprs})
	}

	accept := nftables.ChainPolicyAccept
	fwd := conn.AddChain(&nftables.Chain{
		Name:     "forward",
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &accept,
	})
	out := nft.MatchIfName(expr.MetaKeyIIFNAME, expr.CmpOpEq, cfg.TunName)
	out = append(out, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})
	conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: out})
	in := nft.MatchIfName(expr.MetaKeyOIFNAME, expr.CmpOpEq, cfg.TunName)
	in = append(in, matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)...)
	in = append(in, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})
	conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: in})

	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		ns.Close()
		return nil, fmt.Errorf("tun: create nftables table inet %s: %w", name, err)
	}
	return &Masquerade{conn: conn, ns: ns, table: t}, nil
}

// Table returns the name of the nftables table (family inet).
func (m *Masquerade) Table() string { return m.table.Name }

// Close deletes the table. It is idempotent; a table someone else already
// deleted is not an error.
func (m *Masquerade) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn == nil {
		return nil
	}
	err := nft.DeleteTable(m.conn, m.table)
	m.conn.CloseLasting()
	m.ns.Close()
	m.conn = nil
	if err != nil {
		return fmt.Errorf("tun: delete nftables table inet %s: %w", m.table.Name, err)
	}
	return nil
}

// matchSource matches packets whose source address is in p, with the
// "meta nfproto" check the inet family needs before reading an IP header.
func matchSource(p netip.Prefix) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(12)
	if p.Addr().Is6() {
		proto, off = unix.NFPROTO_IPV6, 8
	}
	addr := p.Addr().AsSlice()
	n := uint32(len(addr))
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
	}
	if p.Bits() < p.Addr().BitLen() {
		exprs = append(exprs, &expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            n,
			Mask:           prefixMask(p),
			Xor:            make([]byte, n),
		})
	}
	return append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr})
}

// prefixMask returns the netmask of p as bytes.
func prefixMask(p netip.Prefix) []byte {
	m := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// matchCtState matches packets whose conntrack state has any of bits.
func matchCtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nft.U32(bits), Xor: nft.U32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nft.U32(0)},
	}
}
