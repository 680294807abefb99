package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NewConn opens a lasting nftables netlink socket in the calling thread's
// network namespace and returns it with a handle of that namespace, which
// the caller closes after conn (CloseLasting). Later calls on conn, from
// any goroutine or thread, still reach that namespace.
func NewConn() (*nftables.Conn, netns.NsHandle, error) {
	return newConn()
}

func newConn(opts ...nftables.ConnOption) (*nftables.Conn, netns.NsHandle, error) {
	// One thread for both: the handle names the namespace the socket is
	// created in, without setns (which would need CAP_SYS_ADMIN).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return nil, netns.None(), fmt.Errorf("get network namespace: %w", err)
	}
	conn, err := nftables.New(append(opts, nftables.AsLasting())...)
	if err != nil {
		ns.Close()
		return nil, netns.None(), fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return conn, ns, nil
}

// ReplaceTable queues "add table; delete table; add table", which leaves
// an empty table t whether or not it existed, within the caller's
// transaction (conn.Flush).
func ReplaceTable(conn *nftables.Conn, t *nftables.Table) {
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
}

// DeleteTable deletes t (and flushes conn); a missing table is not an
// error.
func DeleteTable(conn *nftables.Conn, t *nftables.Table) error {
	conn.DelTable(t)
	err := conn.Flush()
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// DeleteStale deletes the table name of family inet in the calling
// thread's network namespace, if it exists, on a socket of its own: a
// table a crashed run left. A host without nf_tables has no such table:
// no error either.
func DeleteStale(name string) error {
	conn, ns, err := NewConn()
	if err != nil {
		return nil // no nf_tables netlink subsystem: no table
	}
	defer ns.Close()
	defer conn.CloseLasting()
	err = DeleteTable(conn, &nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	if err != nil && !errors.Is(err, unix.EPROTONOSUPPORT) && !errors.Is(err, unix.EAFNOSUPPORT) {
		return fmt.Errorf("delete nftables table inet %s: %w", name, err)
	}
	return nil
}

// MatchIfName compares the input or output interface name (key
// MetaKeyIIFNAME or MetaKeyOIFNAME) with name.
func MatchIfName(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: IfNameBytes(name)},
	}
}

// IfNameBytes is name NUL-padded to IFNAMSIZ, as the kernel stores it.
func IfNameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// U32 encodes v in host byte order, as nftables expects for marks, ct
// state and status, and fib results.
func U32(v uint32) []byte {
	return binary.NativeEndian.AppendUint32(nil, v)
}

// tableFlagOwner is NFT_TABLE_F_OWNER of <linux/netfilter/nf_tables.h>
// (Linux 5.12): the table belongs to the netlink socket that created it;
// only that socket may change or delete it, and the kernel deletes it when
// the socket closes (when its process dies, at the latest).
const tableFlagOwner = 0x2

// ownedTimeout bounds the wait for the kernel's answers to the owned
// table's transaction.
const ownedTimeout = 5 * time.Second

// NewOwnedTable opens a lasting nftables socket in the calling thread's
// network namespace and, in one transaction, replaces the table t (family
// and name; a table a crashed run left, which cannot be an owned one) with
// an empty one owned by that socket (NFT_TABLE_F_OWNER): chains and rules
// the caller adds through conn, and conn's deletion, are the only changes
// the kernel accepts, and closing conn (CloseLasting, or the process
// dying) deletes the table. conn must stay open as long as the table is
// wanted.
//
// google/nftables (v0.3.0) always sends table flags 0, so the table
// messages go over the same socket by hand. If the kernel cannot own
// tables (before Linux 5.12) or the transaction fails otherwise, owned is
// false, nothing was changed, and conn is a fresh socket: the caller
// replaces the table itself (ReplaceTable) in its own transaction. ownErr
// says why it is not owned.
func NewOwnedTable(t *nftables.Table) (conn *nftables.Conn, owned bool, ownErr error, err error) {
	var raw *netlink.Conn
	capture := nftables.WithSockOptions(func(c *netlink.Conn) error {
		raw = c
		return nil
	})
	conn, ns, err := newConn(capture)
	if err != nil {
		return nil, false, nil, err
	}
	ns.Close()
	if raw == nil {
		ownErr = errors.New("no netlink socket")
	} else {
		ownErr = replaceOwned(raw, t)
	}
	if ownErr == nil {
		return conn, true, nil, nil
	}
	// Answers may still be queued on the socket: start afresh.
	conn.CloseLasting()
	conn, ns, err = NewConn()
	if err != nil {
		return nil, false, ownErr, err
	}
	ns.Close()
	return conn, false, ownErr, nil
}

// replaceOwned sends "add table t; delete table t; add table t flags
// owner" as one batch on raw and waits for the three acknowledgements.
func replaceOwned(raw *netlink.Conn, t *nftables.Table) error {
	attrs := func(flags uint32) []byte {
		b, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_TABLE_NAME, Data: []byte(t.Name + "\x00")},
			{Type: unix.NFTA_TABLE_FLAGS, Data: binary.BigEndian.AppendUint32(nil, flags)},
		})
		if err != nil {
			panic(err) // constant layout
		}
		return append([]byte{byte(t.Family), unix.NFNETLINK_V0, 0, 0}, b...)
	}
	msg := func(typ int, flags netlink.HeaderFlags, data []byte) netlink.Message {
		return netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
			Data:   data,
		}
	}
	batchHdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
	ack := netlink.Request | netlink.Acknowledge
	msgs := []netlink.Message{
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request}, Data: batchHdr},
		msg(unix.NFT_MSG_NEWTABLE, ack|netlink.Create, attrs(0)),
		msg(unix.NFT_MSG_DELTABLE, ack, attrs(0)),
		msg(unix.NFT_MSG_NEWTABLE, ack|netlink.Create, attrs(tableFlagOwner)),
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request}, Data: batchHdr},
	}
	if _, err := raw.SendMessages(msgs); err != nil {
		return err
	}
	if err := raw.SetReadDeadline(time.Now().Add(ownedTimeout)); err != nil {
		return err
	}
	defer raw.SetReadDeadline(time.Time{})
	for n := 0; n < 3; {
		got, err := raw.Receive()
		if err != nil {
			return err
		}
		n += len(got)
	}
	return nil
}
