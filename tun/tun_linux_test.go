package tun

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestCreateConfigureClose(t *testing.T) {
	ns := newNetns(t)
	before := runtime.NumGoroutine()
	inNetns(t, ns, func() {
		dev, name, err := Create("roamt%d", 1400)
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		if name != "roamt0" {
			t.Errorf("real name = %q, want roamt0", name)
		}
		if got := dev.BatchSize(); got != 128 {
			t.Errorf("BatchSize = %d, want 128 (vnet header offloads)", got)
		}
		if mtu, err := dev.MTU(); err != nil || mtu != 1400 {
			t.Errorf("MTU = %d, %v; want 1400", mtu, err)
		}
		addrs := []netip.Prefix{
			netip.MustParsePrefix("10.99.0.1/24"),
			netip.MustParsePrefix("fd00:99::1/64"),
		}
		if err := ConfigureLink(name, addrs, 1380); err != nil {
			t.Fatalf("ConfigureLink: %v", err)
		}
		// Idempotent: a second run keeps the addresses and succeeds.
		if err := ConfigureLink(name, addrs, 1380); err != nil {
			t.Fatalf("ConfigureLink again: %v", err)
		}
		link, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := link.Attrs().MTU; got != 1380 {
			t.Errorf("link MTU = %d, want 1380", got)
		}
		if mtu, _ := dev.MTU(); mtu != 1380 {
			t.Errorf("Device.MTU = %d, want 1380", mtu)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("link is not up: %v", link.Attrs().Flags)
		}
		got, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for _, a := range got {
			found = append(found, a.IPNet.String())
			if a.IP.IsLinkLocalUnicast() {
				t.Errorf("link-local address %s present; addr_gen_mode=1 should prevent it", a.IPNet)
			}
			if a.IP.To4() == nil {
				if a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&unix.IFA_F_TENTATIVE != 0 {
					t.Errorf("IPv6 address %s flags %#x: want NODAD, not tentative", a.IPNet, a.Flags)
				}
			}
		}
		for _, want := range []string{"10.99.0.1/24", "fd00:99::1/64"} {
			if !strings.Contains(strings.Join(found, " "), want) {
				t.Errorf("address %s missing; have %v", want, found)
			}
		}
		if err := dev.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := dev.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		waitFor(t, "link removed after Close", func() bool {
			_, err := netlink.LinkByName(name)
			return err != nil
		})
	})
	waitFor(t, "goroutines of the device to end", func() bool {
		return runtime.NumGoroutine() <= before
	})
}

// waitFor polls cond (a safety-net deadline, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReadWrite(t *testing.T) {
	tests := []struct {
		name       string
		local      netip.Addr // the TUN's address
		remote     netip.Addr // routed to the TUN
		remotePort uint16
	}{
		{"ipv4", netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2"), 9999},
		{"ipv6", netip.MustParseAddr("fd00:99::1"), netip.MustParseAddr("fd00:99::2"), 9999},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newNetns(t)
			inNetns(t, ns, func() {
				dev, name := mustCreate(t, "roamt0", 1400)
				err := ConfigureLink(name, []netip.Prefix{
					netip.MustParsePrefix("10.99.0.1/24"),
					netip.MustParsePrefix("fd00:99::1/64"),
				}, 0)
				if err != nil {
					t.Fatal(err)
				}
				pkts := startReader(dev)

				// Kernel -> TUN: a UDP datagram to an address routed to the TUN.
				remote := netip.AddrPortFrom(tt.remote, tt.remotePort)
				c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(remote))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				u := waitUDP(t, pkts, remote)
				if string(u.payload) != "ping" || u.src.Addr() != tt.local {
					t.Fatalf("read %v -> %v %q; want from %v, payload ping", u.src, u.dst, u.payload, tt.local)
				}

				// TUN -> kernel: the reply, written at offset 16, reaches the
				// socket. A packet written into a TUN goes through the CPU's
				// input backlog, which other tests' traffic on this host can
				// overflow: resend once a second, as a UDP peer would.
				reply := buildUDP(remote, u.src, []byte("pong"))
				got, from := retryRecv(t, c, func() { writePacket(t, dev, reply) })
				if string(got) != "pong" || from.(*net.UDPAddr).AddrPort() != remote {
					t.Fatalf("socket got %q from %v; want pong from %v", got, from, remote)
				}
			})
		})
	}
}

func TestReadGSOBurst(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() {
		dev, name := mustCreate(t, "roamt0", 1400)
		if err := ConfigureLink(name, []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24")}, 0); err != nil {
			t.Fatal(err)
		}
		remote := netip.MustParseAddrPort("10.99.0.2:9998")
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(remote))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 500) })
		if serr != nil {
			t.Skipf("UDP_SEGMENT unsupported: %v", serr)
		}
		payload := bytes.Repeat([]byte("0123456789"), 160) // 1600 bytes: 4 segments
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}

		// Read directly to see the batch; a watchdog closes the device if
		// the packets never come.
		watchdog := time.AfterFunc(testTimeout, func() { dev.Close() })
		defer watchdog.Stop()
		bufs := make([][]byte, dev.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, 16+1400)
		}
		sizes := make([]int, len(bufs))
		var got []byte
		maxBatch := 0
		for len(got) < len(payload) {
			n, err := dev.Read(bufs, sizes, 16)
			if err != nil {
				t.Fatalf("Read: %v (after %d of %d bytes)", err, len(got), len(payload))
			}
			maxBatch = max(maxBatch, n)
			for i := range n {
				u, ok := parseUDP(bufs[i][16 : 16+sizes[i]])
				if !ok || u.dst != remote {
					continue
				}
				if len(u.payload) > 500 {
					t.Fatalf("segment of %d bytes, want <= 500", len(u.payload))
				}
				got = append(got, u.payload...)
			}
		}
		if !bytes.Equal(got, payload) {
			t.Fatal("segments do not add up to the payload")
		}
		t.Logf("largest batch from one Read: %d packets", maxBatch)
	})
}

func TestDeviceArgs(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() {
		dev, _ := mustCreate(t, "roamt0", 1400)
		tests := []struct {
			name string
			bufs [][]byte
			off  int
		}{
			{"offset below 10", [][]byte{make([]byte, 40)}, 9},
			{"empty packet", [][]byte{make([]byte, 16)}, 16},
		}
		for _, tt := range tests {
			if _, err := dev.Write(tt.bufs, tt.off); err == nil {
				t.Errorf("Write %s: no error", tt.name)
			}
		}
		if n, err := dev.Write(nil, 16); n != 0 || err != nil {
			t.Errorf("Write(nil) = %d, %v", n, err)
		}
		if _, err := dev.Read(nil, nil, 16); err == nil {
			t.Error("Read with no buffers: no error")
		}
		if _, err := dev.Read([][]byte{make([]byte, 10)}, []int{0}, 16); err == nil {
			t.Error("Read with offset beyond buffer: no error")
		}
	})
}

func TestCloseUnblocksRead(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() {
		dev, _, err := Create("roamt0", 1400)
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			bufs := [][]byte{make([]byte, 2000)}
			_, err := dev.Read(bufs, []int{0}, 16)
			errc <- err
		}()
		time.Sleep(50 * time.Millisecond) // let Read block; the test passes either way
		if err := dev.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			if !errors.Is(err, os.ErrClosed) {
				t.Fatalf("Read after Close = %v, want os.ErrClosed", err)
			}
		case <-time.After(testTimeout):
			t.Fatal("Read still blocked after Close")
		}
		if _, err := dev.Write([][]byte{make([]byte, 40)}, 16); !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Write after Close = %v, want os.ErrClosed", err)
		}
	})
}

func TestCreateBadInput(t *testing.T) {
	tests := []struct {
		name, dev string
		mtu       int
		want      string
	}{
		{"long name", "roam-name-too-long", 1400, "longer than 15"},
		{"slash", "roam/0", 1400, "not a valid interface name"},
		{"mtu low", "roam0", 67, "MTU 67"},
		{"mtu high", "roam0", 65536, "MTU 65536"},
	}
	// In a namespace, so that a validation bug cannot create a host device.
	ns := newNetns(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t, ns, func() {
				dev, _, err := Create(tt.dev, tt.mtu)
				if err == nil {
					dev.Close()
				}
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Create(%q, %d) = %v, want error containing %q", tt.dev, tt.mtu, err, tt.want)
				}
			})
		})
	}
}

func TestConfigureLinkErrors(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() { mustCreate(t, "roamt0", 1400) })
	tests := []struct {
		name  string
		link  string
		addrs []netip.Prefix
		mtu   int
		want  string
	}{
		{"invalid prefix", "roamt0", []netip.Prefix{{}}, 0, "addrs[0] is not a valid prefix"},
		{"missing link", "roamt9", nil, 0, "roamt9"},
		{"ipv6 with small MTU", "roamt0", []netip.Prefix{netip.MustParsePrefix("fd00::1/64")}, 1200, "below 1280"},
		{"bad MTU", "roamt0", nil, 20, "MTU 20"},
	}
	for _, tt := range tests {
		// t.Run starts a new goroutine, so each subtest enters the namespace
		// itself: never call t.Run inside inNetns.
		t.Run(tt.name, func(t *testing.T) {
			inNetns(t, ns, func() {
				err := ConfigureLink(tt.link, tt.addrs, tt.mtu)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("ConfigureLink = %v, want error containing %q", err, tt.want)
				}
			})
		})
	}
}

func TestEnableForwarding(t *testing.T) {
	hostV4, hostV6 := readSysctl(t, sysctlIPv4Forward), readSysctl(t, sysctlIPv6Forward)
	a, b := newNetns(t), newNetns(t)
	for _, ns := range []string{a, b} {
		inNetns(t, ns, func() {
			writeSysctl(t, sysctlIPv4Forward, "0")
			writeSysctl(t, sysctlIPv6Forward, "0")
		})
	}
	var restore func() error
	inNetns(t, a, func() {
		var err error
		restore, err = EnableForwarding()
		if err != nil {
			t.Fatal(err)
		}
		if v4, v6 := readSysctl(t, sysctlIPv4Forward), readSysctl(t, sysctlIPv6Forward); v4 != "1" || v6 != "1" {
			t.Fatalf("after EnableForwarding: ipv4 %s, ipv6 %s; want 1, 1", v4, v6)
		}
	})
	// restore acts on namespace a even when called from namespace b.
	inNetns(t, b, func() {
		if err := restore(); err != nil {
			t.Fatal(err)
		}
		if err := restore(); err != nil {
			t.Fatalf("second restore: %v", err)
		}
		if v4, v6 := readSysctl(t, sysctlIPv4Forward), readSysctl(t, sysctlIPv6Forward); v4 != "0" || v6 != "0" {
			t.Fatalf("namespace b changed: ipv4 %s, ipv6 %s", v4, v6)
		}
	})
	inNetns(t, a, func() {
		if v4, v6 := readSysctl(t, sysctlIPv4Forward), readSysctl(t, sysctlIPv6Forward); v4 != "0" || v6 != "0" {
			t.Fatalf("after restore: ipv4 %s, ipv6 %s; want 0, 0", v4, v6)
		}
		// Only what it changed is restored: ipv4 was already 1.
		writeSysctl(t, sysctlIPv4Forward, "1")
		restore, err := EnableForwarding()
		if err != nil {
			t.Fatal(err)
		}
		writeSysctl(t, sysctlIPv4Forward, "0") // someone else changes it meanwhile
		if err := restore(); err != nil {
			t.Fatal(err)
		}
		if v4, v6 := readSysctl(t, sysctlIPv4Forward), readSysctl(t, sysctlIPv6Forward); v4 != "0" || v6 != "0" {
			t.Fatalf("after second restore: ipv4 %s, ipv6 %s; want 0 (untouched), 0", v4, v6)
		}
	})
	if v4, v6 := readSysctl(t, sysctlIPv4Forward), readSysctl(t, sysctlIPv6Forward); v4 != hostV4 || v6 != hostV6 {
		t.Fatalf("host namespace changed: ipv4 %s->%s, ipv6 %s->%s", hostV4, v4, hostV6, v6)
	}
}

func TestControlMark(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() {
		lc := net.ListenConfig{Control: ControlMark(0x1234)}
		for _, network := range []string{"udp4", "udp6"} {
			c, err := lc.ListenPacket(t.Context(), network, ":0")
			if err != nil {
				t.Fatalf("%s: %v", network, err)
			}
			rc, err := c.(*net.UDPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var mark int
			var gerr error
			rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
			c.Close()
			if gerr != nil || mark != 0x1234 {
				t.Fatalf("%s: SO_MARK = %#x, %v; want 0x1234", network, mark, gerr)
			}
		}
	})
}

func TestReadTooManySegments(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() {
		dev, name := mustCreate(t, "roamt0", 1400)
		if err := ConfigureLink(name, []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24")}, 0); err != nil {
			t.Fatal(err)
		}
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.99.0.2:9998")))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc, _ := c.SyscallConn()
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 500) })
		if serr != nil {
			t.Skipf("UDP_SEGMENT unsupported: %v", serr)
		}
		if _, err := c.Write(make([]byte, 1600)); err != nil {
			t.Fatal(err)
		}
		watchdog := time.AfterFunc(testTimeout, func() { dev.Close() })
		defer watchdog.Stop()
		bufs := [][]byte{make([]byte, 1500), make([]byte, 1500)}
		sizes := make([]int, 2)
		for {
			n, err := dev.Read(bufs, sizes, 16)
			if errors.Is(err, ErrTooManySegments) {
				// wireguard-go fills both buffers but reports one fewer.
				if n != 1 {
					t.Errorf("n = %d with ErrTooManySegments, want 1", n)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			// Something else (no GSO on this kernel): fine, keep looking.
			if u, ok := parseUDP(bufs[0][16 : 16+sizes[0]]); ok && u.dst.Port() == 9998 && n == 1 && len(u.payload) == 500 {
				t.Skip("the kernel segmented before the TUN; no GSO burst to split")
			}
		}
	})
}

func TestWriteBatch(t *testing.T) {
	ns := newNetns(t)
	inNetns(t, ns, func() {
		dev, name := mustCreate(t, "roamt0", 1400)
		if err := ConfigureLink(name, []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24")}, 0); err != nil {
			t.Fatal(err)
		}
		c, err := net.ListenPacket("udp4", "10.99.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		dst := c.LocalAddr().(*net.UDPAddr).AddrPort()
		src := netip.MustParseAddrPort("10.99.0.2:9997")
		const count = 8
		bufs := make([][]byte, count)
		for i := range bufs {
			// Spare capacity lets wireguard-go coalesce the flow (UDP GRO).
			pkt := buildUDP(src, dst, bytes.Repeat([]byte{byte('a' + i)}, 300))
			b := make([]byte, 16+len(pkt), 16+65535)
			copy(b[16:], pkt)
			bufs[i] = b
		}
		n, err := dev.Write(bufs, 16)
		if err != nil || n != count {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, count)
		}
		t.Logf("after Write, len(bufs[0]) = %d (was %d): GRO coalesced into it", len(bufs[0]), 16+28+300)
		for i := range count {
			got, _ := recvFrom(t, c)
			if len(got) != 300 || got[0] != byte('a'+i) {
				t.Fatalf("datagram %d: %d bytes of %q, want 300 of %q", i, len(got), got[:1], string(rune('a'+i)))
			}
		}
	})
}
