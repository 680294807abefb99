package systack

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/roamvpn/roam/datagram"
)

// pktOf parses a built packet for the table's methods.
func pktOf(t *testing.T, s tcpSpec) *tcpPacket {
	t.Helper()
	var p datagram.Packet
	tp := new(tcpPacket)
	if parseTCP(buildTCP(s), &p, tp) != isTCP {
		t.Fatal("not a TCP packet")
	}
	return tp
}

// step feeds the table one packet of the connection app -> dst: from the
// application (fromApp) or the listener's answer to the entry's NAT port.
// It returns the entry found or made (nil if none).
func step(t *testing.T, nt *natTable, app, dst netip.AddrPort, fromApp bool, flags uint8) *natEntry {
	t.Helper()
	nt.mu.Lock()
	defer nt.mu.Unlock()
	now := nt.now()
	if fromApp {
		tp := pktOf(t, tcpSpec{src: app, dst: dst, flags: flags})
		e, _ := nt.forwardLocked(tp.tuple(), flags, now)
		return e
	}
	e := nt.byTuple[pktOf(t, tcpSpec{src: app, dst: dst}).tuple()]
	if e == nil {
		return nil
	}
	tp := pktOf(t, tcpSpec{src: netip.AddrPortFrom(app.Addr(), lnPrt), dst: netip.AddrPortFrom(dst.Addr(), e.port), flags: flags})
	return nt.reverseLocked(tp, now)
}

// TestNATTimeouts checks each state's timeout with synctest's clock.
func TestNATTimeouts(t *testing.T) {
	type pk struct {
		fromApp bool
		flags   uint8
	}
	for _, tt := range []struct {
		name    string
		packets []pk
		timeout time.Duration
	}{
		{"SYN only", []pk{{true, flagSYN}}, synTimeout},
		{"established", []pk{{true, flagSYN}, {false, flagSYN | flagACK}, {true, flagACK}}, estTimeout},
		{"half-closed", []pk{{true, flagSYN}, {false, flagSYN | flagACK}, {true, flagACK | flagFIN}}, estTimeout},
		{"both FINs", []pk{{true, flagSYN}, {false, flagSYN | flagACK}, {true, flagFIN | flagACK}, {false, flagFIN | flagACK}}, finTimeout},
		{"RST from the application", []pk{{true, flagSYN}, {false, flagSYN | flagACK}, {true, flagRST}}, rstTimeout},
		{"RST from the listener", []pk{{true, flagSYN}, {false, flagRST | flagACK}}, rstTimeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				nt := newNATTable(16, lnPrt)
				for _, p := range tt.packets {
					if step(t, nt, app4, dst4, p.fromApp, p.flags) == nil {
						t.Fatalf("packet %+v found no entry", p)
					}
				}
				time.Sleep(tt.timeout)
				if step(t, nt, app4, dst4, true, flagACK) == nil {
					t.Fatalf("entry gone after exactly %v", tt.timeout)
				}
				time.Sleep(tt.timeout + time.Nanosecond)
				if step(t, nt, app4, dst4, true, flagACK) != nil {
					t.Fatalf("entry still there %v after the last packet", tt.timeout)
				}
				if nt.expired.Load() != 1 || nt.active.Load() != 0 {
					t.Fatalf("expired %d active %d", nt.expired.Load(), nt.active.Load())
				}
			})
		})
	}
}

// TestNATTable: NAT ports, lookups, the bound, sweeps and reuse of a
// closed connection's tuple.
func TestNATTable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nt := newNATTable(3, minNATPort+1)
		if step(t, nt, app4, dst4, true, flagACK) != nil {
			t.Fatal("a packet that is not a SYN made an entry")
		}
		e1 := step(t, nt, app4, dst4, true, flagSYN)
		if e1 == nil || e1.port != minNATPort {
			t.Fatalf("first entry %+v, want port %d", e1, minNATPort)
		}
		if again := step(t, nt, app4, dst4, true, flagSYN); again != e1 {
			t.Fatal("a retransmitted SYN made a new entry")
		}
		e2 := step(t, nt, app6, dst6, true, flagSYN)
		if e2 == nil || e2.port != minNATPort+2 {
			t.Fatalf("second entry %+v, want port %d (the listener's port is skipped)", e2, minNATPort+2)
		}
		app, dst, ok := nt.lookup(dst6.Addr(), e2.port)
		if !ok || app != app6 || dst != dst6 {
			t.Fatalf("lookup: %v %v %v", app, dst, ok)
		}
		if _, _, ok := nt.lookup(dst4.Addr(), e2.port); ok {
			t.Fatal("lookup with the wrong destination address succeeded")
		}
		if _, _, ok := nt.lookup(dst4.Addr(), minNATPort+5); ok {
			t.Fatal("lookup of a free port succeeded")
		}
		// A listener packet whose addresses do not match the entry.
		nt.mu.Lock()
		tp := pktOf(t, tcpSpec{src: netip.AddrPortFrom(app4.Addr(), lnPrt), dst: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.99"), e1.port)})
		if nt.reverseLocked(tp, nt.now()) != nil {
			t.Error("reverse lookup matched another destination")
		}
		nt.mu.Unlock()

		other := netip.AddrPortFrom(app4.Addr(), 50000)
		if step(t, nt, other, dst4, true, flagSYN) == nil {
			t.Fatal("third entry refused")
		}
		if step(t, nt, netip.AddrPortFrom(app4.Addr(), 50001), dst4, true, flagSYN) != nil || nt.dropped.Load() != 1 {
			t.Fatal("an entry beyond the bound was made")
		}
		// The application reuses e1's tuple after both FINs: a new entry
		// with a new port (the old one may be in TIME_WAIT).
		step(t, nt, app4, dst4, false, flagSYN|flagACK)
		step(t, nt, app4, dst4, true, flagFIN|flagACK)
		step(t, nt, app4, dst4, false, flagFIN|flagACK)
		e1b := step(t, nt, app4, dst4, true, flagSYN)
		if e1b == nil || e1b == e1 || e1b.port == e1.port {
			t.Fatalf("reused tuple: %+v (old %+v)", e1b, e1)
		}
		// Once the SYN-only entries expire, a SYN finds room again (the
		// full table sweeps at most every second).
		time.Sleep(synTimeout + time.Second)
		if e := step(t, nt, netip.AddrPortFrom(app4.Addr(), 50001), dst4, true, flagSYN); e == nil {
			t.Fatal("no room after the entries expired")
		}
		if nt.active.Load() != 1 || nt.expired.Load() != 3 {
			t.Fatalf("active %d expired %d; want 1 and 3", nt.active.Load(), nt.expired.Load())
		}
	})
}

// TestNATPortWrap: ports wrap around to minNATPort, and a port whose
// entry is still live is skipped.
func TestNATPortWrap(t *testing.T) {
	nt := newNATTable(8, 0)
	nt.next = 0xffff
	nt.mu.Lock()
	defer nt.mu.Unlock()
	var ports []uint16
	for i := range 3 {
		e := nt.insertLocked(tuple{ap: uint16(i + 1)}, nt.now())
		if e == nil {
			t.Fatal("insert failed")
		}
		ports = append(ports, e.port)
	}
	if ports[0] != 0xffff || ports[1] != minNATPort || ports[2] != minNATPort+1 {
		t.Fatalf("ports %v", ports)
	}
	nt.next = minNATPort
	if e := nt.insertLocked(tuple{ap: 9}, nt.now()); e == nil || e.port != minNATPort+2 {
		t.Fatalf("live ports not skipped: %+v", e)
	}
}

// TestNATUnanswered: a SYN retransmitted a second after the first, with no
// answer from the listener in between, is counted; one retransmitted
// sooner, or after an answer, is not.
func TestNATUnanswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		nt := newNATTable(16, lnPrt)
		step(t, nt, app4, dst4, true, flagSYN)
		time.Sleep(100 * time.Millisecond)
		step(t, nt, app4, dst4, true, flagSYN)
		if n := nt.unanswered.Load(); n != 0 {
			t.Fatalf("unanswered %d after a quick retransmit", n)
		}
		time.Sleep(time.Second)
		step(t, nt, app4, dst4, true, flagSYN)
		if n := nt.unanswered.Load(); n != 1 {
			t.Fatalf("unanswered %d, want 1", n)
		}
		other := netip.AddrPortFrom(app4.Addr(), 50000)
		step(t, nt, other, dst4, true, flagSYN)
		step(t, nt, other, dst4, false, flagSYN|flagACK)
		time.Sleep(2 * time.Second)
		step(t, nt, other, dst4, true, flagSYN)
		if n := nt.unanswered.Load(); n != 1 {
			t.Fatalf("unanswered %d after an answered SYN's retransmit, want 1", n)
		}
	})
}
