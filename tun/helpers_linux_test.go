package tun

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testTimeout bounds waits for packets; it is a safety net against hangs, not
// a timing assertion.
const testTimeout = 20 * time.Second

// needRoot skips the test when not root, or fails it when CI=true.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root (TUN, network namespaces, nftables), and CI=true")
	}
	t.Skip("needs root")
}

var netnsCounter atomic.Int64

// newNetns creates a named network namespace "roamt-tun-<pid>-<n>" and
// deletes it when the test ends. The calling thread's namespace is unchanged.
func newNetns(t *testing.T) string {
	t.Helper()
	needRoot(t)
	name := fmt.Sprintf("roamt-tun-%d-%d", os.Getpid(), netnsCounter.Add(1))
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name) // switches this thread into it
	if err != nil {
		if serr := netns.Set(orig); serr != nil {
			t.Fatalf("create netns %s: %v; restore: %v (thread stays locked and dies)", name, err, serr)
		}
		runtime.UnlockOSThread()
		t.Fatalf("create netns %s: %v", name, err)
	}
	ns.Close()
	if err := netns.Set(orig); err != nil {
		// Keep the thread locked: the runtime discards it when the test
		// goroutine ends, so no goroutine runs in the wrong namespace.
		t.Fatalf("restore netns: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return name
}

// inNetns runs fn on this goroutine's OS thread switched into the named
// namespace, then switches back. Goroutines fn starts run in the original
// namespace; only file descriptors created inside fn belong to the new one.
func inNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("enter netns %s: %v", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("restore netns: %v (thread stays locked and dies)", err)
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	}()
	fn()
}

// nsRun runs a command inside the named namespace and returns its output.
func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// needTool skips (or fails under CI) when a CLI used for checking is missing.
func needTool(t *testing.T, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (apt-get install -y nftables iproute2)", tool)
		}
		t.Skipf("%s not installed (apt-get install -y nftables iproute2)", tool)
	}
}

// mustCreate creates a TUN device inside the current namespace and closes it
// at cleanup.
func mustCreate(t *testing.T, name string, mtu int) (Device, string) {
	t.Helper()
	dev, real, err := Create(name, mtu)
	if err != nil {
		t.Fatalf("Create(%q, %d): %v", name, mtu, err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev, real
}

// startReader reads dev at offset 16 (datagram.Headroom) in a goroutine and
// delivers copies of the packets until dev is closed.
func startReader(dev Device) <-chan []byte {
	ch := make(chan []byte, 1024)
	go func() {
		defer close(ch)
		bufs := make([][]byte, dev.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, 16+65535)
		}
		sizes := make([]int, len(bufs))
		for {
			n, err := dev.Read(bufs, sizes, 16)
			for i := range n {
				ch <- append([]byte(nil), bufs[i][16:16+sizes[i]]...)
			}
			if err != nil && n == 0 {
				if !strings.Contains(err.Error(), "closed") {
					fmt.Fprintf(os.Stderr, "reader: %v\n", err)
				}
				return
			}
		}
	}()
	return ch
}

// waitUDP returns the next packet from ch that is UDP to dst.
func waitUDP(t *testing.T, ch <-chan []byte, dst netip.AddrPort) udpPacket {
	t.Helper()
	timeout := time.After(testTimeout)
	for {
		select {
		case p, ok := <-ch:
			if !ok {
				t.Fatalf("device closed while waiting for UDP to %s", dst)
			}
			u, ok := parseUDP(p)
			if ok && u.dst == dst {
				return u
			}
		case <-timeout:
			t.Fatalf("no UDP packet to %s within %v", dst, testTimeout)
		}
	}
}

// udpPacket is a parsed IPv4/IPv6 UDP packet.
type udpPacket struct {
	src, dst netip.AddrPort
	payload  []byte
}

func parseUDP(p []byte) (udpPacket, bool) {
	var (
		src, dst netip.Addr
		l4       []byte
	)
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		ihl := int(p[0]&0xf) * 4
		if p[9] != 17 || len(p) < ihl+8 {
			return udpPacket{}, false
		}
		src = netip.AddrFrom4([4]byte(p[12:16]))
		dst = netip.AddrFrom4([4]byte(p[16:20]))
		l4 = p[ihl:]
	case len(p) >= 48 && p[0]>>4 == 6:
		if p[6] != 17 {
			return udpPacket{}, false
		}
		src = netip.AddrFrom16([16]byte(p[8:24]))
		dst = netip.AddrFrom16([16]byte(p[24:40]))
		l4 = p[40:]
	default:
		return udpPacket{}, false
	}
	return udpPacket{
		src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(l4[0:])),
		dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:])),
		payload: l4[8:],
	}, true
}

// buildUDP returns an IPv4 or IPv6 UDP packet with valid checksums.
func buildUDP(src, dst netip.AddrPort, payload []byte) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	// Pseudo-header: addresses, protocol, UDP length.
	pseudo := append(append(append([]byte{}, s...), d...), 0, 17, byte(len(udp)>>8), byte(len(udp)))
	sum := checksum(append(pseudo, udp...))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], sum)
	if src.Addr().Is4() {
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		ip[8] = 64
		ip[9] = 17
		copy(ip[12:], s)
		copy(ip[16:], d)
		binary.BigEndian.PutUint16(ip[10:], checksum(ip))
		return append(ip, udp...)
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	ip[6] = 17
	ip[7] = 64
	copy(ip[8:], s)
	copy(ip[24:], d)
	return append(ip, udp...)
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// writePacket writes one packet to dev with 16 bytes of headroom.
func writePacket(t *testing.T, dev Device, pkt []byte) {
	t.Helper()
	buf := append(make([]byte, 16), pkt...)
	n, err := dev.Write([][]byte{buf}, 16)
	if err != nil || n != 1 {
		t.Fatalf("Write = %d, %v; want 1, nil", n, err)
	}
}

// readSysctl reads a /proc/sys file in the calling thread's namespace.
func readSysctl(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(b))
}

func writeSysctl(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(v), 0); err != nil {
		t.Fatal(err)
	}
}

// addVethPair creates veth a (in the current namespace, with addrs) and its
// peer b, moved into namespace peerNS with peerAddrs. Both end up up.
func addVethPair(t *testing.T, a, b, peerNS string, addrs, peerAddrs []netip.Prefix) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s/%s: %v", a, b, err)
	}
	peer, err := netlink.LinkByName(b)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromName(peerNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatalf("move %s to %s: %v", b, peerNS, err)
	}
	if err := ConfigureLink(a, addrs, 0); err != nil {
		t.Fatal(err)
	}
	inNetns(t, peerNS, func() {
		if err := ConfigureLink(b, peerAddrs, 0); err != nil {
			t.Fatal(err)
		}
		setLoUp(t)
	})
}

func setLoUp(t *testing.T) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
}

// udpEcho serves UDP echo on a socket created in the current namespace until
// the test ends.
func udpEcho(t *testing.T, addr string) {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			c.WriteTo(buf[:n], from)
		}
	}()
}

// recvFrom waits for one datagram on c and returns its payload and source.
// retryRecv calls send, then reads from c, and calls send again every
// second until something arrives or testTimeout passes.
func retryRecv(t *testing.T, c net.PacketConn, send func()) ([]byte, net.Addr) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	buf := make([]byte, 2048)
	for {
		send()
		next := time.Now().Add(time.Second)
		if next.After(deadline) {
			next = deadline
		}
		c.SetReadDeadline(next)
		n, from, err := c.ReadFrom(buf)
		if err == nil {
			return buf[:n], from
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() || time.Now().After(deadline) {
			t.Fatalf("receive on %s: %v", c.LocalAddr(), err)
		}
	}
}

func recvFrom(t *testing.T, c net.PacketConn) ([]byte, net.Addr) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 2048)
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("receive on %s: %v", c.LocalAddr(), err)
	}
	return buf[:n], from
}
