package systack

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/roamvpn/roam/tun"
	"github.com/roamvpn/roam/tun/internal/nft"
)

// redirectTable is the nftables table of redirect mode (see the package
// doc, "Redirect mode"), named tun.RedirectTableName(<tun>).
// `nft list table inet roamsys_<tun>` shows it as
//
//	table inet roamsys_roam0 {
//		chain output {
//			type nat hook output priority dstnat; policy accept;
//			oifname "roam0" tcp flags syn / syn,ack fib daddr type != local ct status & confirmed == 0 meta nfproto ipv4 counter redirect to :L
//			oifname "roam0" tcp flags syn / syn,ack fib daddr type != local ct status & confirmed == 0 meta nfproto ipv6 counter redirect to :L
//		}
//	}
//
// where L is the listener's port (the IPv6 rule only if it takes IPv6).
//
// The table is owned by conn's netlink socket (NFT_TABLE_F_OWNER, Linux
// 5.12+) when the kernel supports it: the kernel deletes it when the
// socket closes, so a crashed run leaves none, and no other process can
// change it meanwhile. On an older kernel (owned false, ownErr says why)
// a crash leaves it, and tun.InstallRouting, or New in rewrite mode,
// deletes it at the next start.
type redirectTable struct {
	mu     sync.Mutex
	conn   *nftables.Conn // guarded by mu; nil once deleted; open as long as the table lives
	table  *nftables.Table
	owned  bool
	ownErr error // why the table is not owned
}

// installRedirect creates the table tun.RedirectTableName(ifName),
// replacing one of that name, in one atomic transaction: TCP SYNs (without
// ACK) that the host's routing sends out of ifName are redirected to port
// on the loopback address: 127.0.0.1 for IPv4 and, if v6, ::1 for IPv6
// (the address the kernel's redirect picks in the OUTPUT hook). It needs
// CAP_NET_ADMIN and nf_tables with NAT in the inet family (Linux 5.2).
//
// It is a variable so that the tests can make it fail (auto mode's
// fallback).
var installRedirect = func(ifName string, port uint16, v6 bool) (*redirectTable, error) {
	name := tun.RedirectTableName(ifName)
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	conn, owned, ownErr, err := nft.NewOwnedTable(t)
	if err != nil {
		return nil, fmt.Errorf("systack: nftables table inet %s: %w", name, err)
	}
	if !owned {
		// An empty table whether or not a crashed run left one, in the
		// transaction below.
		nft.ReplaceTable(conn, t)
	}
	accept := nftables.ChainPolicyAccept
	out := conn.AddChain(&nftables.Chain{
		Name:     "output",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookOutput,
		Priority: nftables.ChainPriorityNATDest,
		Policy:   &accept,
	})
	conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: redirectRule(ifName, unix.NFPROTO_IPV4, port)})
	if v6 {
		conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: redirectRule(ifName, unix.NFPROTO_IPV6, port)})
	}
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("systack: create nftables table inet %s (needs nf_tables with NAT, Linux 5.2+): %w", name, err)
	}
	return &redirectTable{conn: conn, table: t, owned: owned, ownErr: ownErr}, nil
}

// redirectRule is `oifname <ifName> tcp flags syn / syn,ack fib daddr
// type != local ct status & confirmed == 0 meta nfproto <proto> counter
// redirect to :<port>`.
//
// A nat chain sees the packets of a connection until its NAT is set up,
// normally only the first. Matching a SYN keeps a connection conntrack
// picks up in the middle (after conntrack forgot it) on its way through
// the TUN, as packets, instead of redirecting a stray segment of it.
// Matching an unconfirmed conntrack entry does the same for a connection
// whose first SYN conntrack saw before the table existed (the SYN went
// into the TUN): redirecting its retransmitted SYN would change the
// reply tuple of an entry already in conntrack's hash, and the
// listener's answers would never be translated back.
//
// The route of the host's own IPv6 addresses points at the device that
// holds them, so without "fib daddr type != local" a local connection to
// the TUN's own IPv6 address would be redirected too.
func redirectRule(ifName string, proto byte, port uint16) []expr.Any {
	return append(nft.MatchIfName(expr.MetaKeyOIFNAME, expr.CmpOpEq, ifName),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{flagSYN | flagACK}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{flagSYN}},
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nft.U32(unix.RTN_LOCAL)},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: nft.U32(ipsConfirmed), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
	)
}

// ipsConfirmed is IPS_CONFIRMED of <linux/netfilter/nf_conntrack_common.h>:
// the conntrack entry is in the hash (its first packet has left).
const ipsConfirmed = 1 << 3

// delete deletes the table; it is idempotent, and a table someone else
// already deleted is not an error.
func (r *redirectTable) delete() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return nil
	}
	err := nft.DeleteTable(r.conn, r.table)
	r.conn.CloseLasting()
	r.conn = nil
	if err != nil {
		return fmt.Errorf("systack: delete nftables table inet %s: %w", r.table.Name, err)
	}
	return nil
}

// deleteStaleTable deletes the table tun.RedirectTableName(ifName) if a
// crashed run in redirect mode left it (rewrite mode runs without it).
// tun.InstallRouting, which the client runs before New, deletes it
// already; this covers a Stack on a TUN without it. Without nftables
// there is nothing to delete: no error.
func deleteStaleTable(ifName string) error {
	if err := nft.DeleteStale(tun.RedirectTableName(ifName)); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("systack: stale table: %w", err)
	}
	return nil
}

// loopbackListeners opens redirect mode's listeners on one free port of
// 127.0.0.1 and, if the host has it, ::1 (the first listener is the IPv4
// one): the kernel's OUTPUT-hook redirect rewrites the destination to the
// loopback address of the packet's family. Other hosts cannot reach them
// (a loopback address arriving on another interface is a martian), and a
// local process that connects to one directly has no original destination
// (see originalDst). A ::1 that cannot be listened on for another reason
// than its port being taken (no IPv6 on loopback, most often) leaves the
// Stack IPv4 only, and is logged to log.
func loopbackListeners(log *slog.Logger) ([]*net.TCPListener, error) {
	var lc net.ListenConfig
	var lastErr error
	for range 8 { // the IPv4 port may be taken on ::1
		l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("systack: listener on 127.0.0.1: %w", err)
		}
		ln4 := l.(*net.TCPListener)
		port := ln4.Addr().(*net.TCPAddr).Port
		l6, err := lc.Listen(context.Background(), "tcp6", fmt.Sprintf("[::1]:%d", port))
		if err == nil {
			return []*net.TCPListener{ln4, l6.(*net.TCPListener)}, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			log.Warn("system stack: no listener on ::1, redirecting IPv4 only (IPv6 TCP into the TUN passes to the tunnel as packets)", "err", err)
			return []*net.TCPListener{ln4}, nil
		}
		ln4.Close()
		lastErr = err
	}
	return nil, fmt.Errorf("systack: listener on ::1: %w", lastErr)
}

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST of
// <linux/netfilter_ipv6/ip6_tables.h> (x/sys/unix has only the IPv4
// SO_ORIGINAL_DST, of the same value).
const ip6tSOOriginalDst = 80

// originalDst returns the destination the application connected to,
// before the redirect: SO_ORIGINAL_DST for a connection of the IPv4
// listener, IP6T_SO_ORIGINAL_DST for one of the IPv6 listener (a
// separate, IPv6-only socket: no v4-mapped connections), which read the
// connection's conntrack entry. A connection that was not
// redirected (a local process that dialed the listener itself) has no
// NAT, so its original destination is the connection's own local address:
// ok is false then, and when conntrack has no entry for it.
func originalDst(c *net.TCPConn) (dst netip.AddrPort, ok bool) {
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	raw, err := c.SyscallConn()
	if err != nil {
		return dst, false
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			// sockaddr_in (16 bytes) into the 20 of an ipv6_mreq: the
			// kernel wants at least 16. Bytes 2..3 hold the port, 4..7
			// the address.
			var m *unix.IPv6Mreq
			if m, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST); serr == nil {
				b := m.Multiaddr
				if binary.NativeEndian.Uint16(b[0:]) != unix.AF_INET {
					serr = syscall.EAFNOSUPPORT
					return
				}
				dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:]))
			}
			return
		}
		// sockaddr_in6 (28 bytes) is the first field of an
		// ip6_mtuinfo (32).
		var m *unix.IPv6MTUInfo
		if m, serr = unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSOOriginalDst); serr == nil {
			a := m.Addr
			if a.Family != unix.AF_INET6 {
				serr = syscall.EAFNOSUPPORT
				return
			}
			// Port is in network byte order in memory.
			port := binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, a.Port))
			dst = netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), port)
		}
	})
	if err != nil || serr != nil || !dst.IsValid() {
		return netip.AddrPort{}, false
	}
	if dst.Addr() == local.Addr().Unmap() && dst.Port() == local.Port() {
		return netip.AddrPort{}, false
	}
	return dst, true
}
