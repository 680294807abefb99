package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NewConn opens a lasting nftables netlink socket in the calling thread's
// network namespace and returns it with a handle of that namespace, which
// the caller closes after conn (CloseLasting). Later calls on conn, from
// any goroutine or thread, still reach that namespace.
func NewConn() (*nftables.Conn, netns.NsHandle, error) {
	// One thread for both: the handle names the namespace the socket is
	// created in, without setns (which would need CAP_SYS_ADMIN).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ns, err := netns.Get()
	if err != nil {
		return nil, netns.None(), fmt.Errorf("get network namespace: %w", err)
	}
	conn, err := nftables.New(nftables.AsLasting())
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
