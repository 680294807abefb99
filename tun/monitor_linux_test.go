package tun

import (
	"net/netip"
	"testing"
	"time"
)

// TestMonitor: address and route changes in a private namespace are
// signalled, and PathTo follows the route (with the socket mark, so a
// policy rule for unmarked packets does not apply).
func TestMonitor(t *testing.T) {
	ns := newNetns(t)
	// veth pairs inside the namespace (this kernel has no dummy links)
	for _, l := range []string{"d1", "d2"} {
		nsRun(t, ns, "ip", "link", "add", l, "type", "veth", "peer", "name", l+"p")
		nsRun(t, ns, "ip", "link", "set", l+"p", "up")
	}
	nsRun(t, ns, "ip", "addr", "add", "10.77.1.2/24", "dev", "d1")
	nsRun(t, ns, "ip", "link", "set", "d1", "up")
	nsRun(t, ns, "ip", "route", "add", "192.0.2.1/32", "via", "10.77.1.1")
	var m *Monitor
	var err error
	inNetns(t, ns, func() { m, err = NewMonitor(0x526f) })
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	server := netip.MustParseAddr("192.0.2.1")
	local, _, err := m.PathTo(server)
	if err != nil || local != netip.MustParseAddr("10.77.1.2") {
		t.Fatalf("PathTo = %v, %v; want 10.77.1.2", local, err)
	}
	// Packets without the mark go to table 100, which has no route: PathTo
	// must not care.
	nsRun(t, ns, "ip", "rule", "add", "not", "fwmark", "0x526f", "table", "100")

	drain := func() {
		for {
			select {
			case <-m.Changes():
			case <-time.After(100 * time.Millisecond):
				return
			}
		}
	}
	wait := func(what string) {
		t.Helper()
		select {
		case <-m.Changes():
		case <-time.After(10 * time.Second):
			t.Fatalf("no change signalled after %s", what)
		}
	}
	drain()
	nsRun(t, ns, "ip", "link", "set", "d1", "down")
	wait("link down")
	if local, _, err := m.PathTo(server); err == nil {
		t.Fatalf("PathTo with the link down = %v, want an error", local)
	}
	drain()
	nsRun(t, ns, "ip", "addr", "add", "10.77.2.2/24", "dev", "d2")
	nsRun(t, ns, "ip", "link", "set", "d2", "up")
	nsRun(t, ns, "ip", "route", "add", "192.0.2.1/32", "via", "10.77.2.1")
	wait("new address and route")
	local, ifindex, err := m.PathTo(server)
	if err != nil || local != netip.MustParseAddr("10.77.2.2") || ifindex == 0 {
		t.Fatalf("PathTo = %v %d, %v; want 10.77.2.2 on d2", local, ifindex, err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m.Close() // idempotent
}
