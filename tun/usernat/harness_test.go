package usernat

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// Addresses of the test tunnel.
var (
	testGW4     = netip.MustParseAddr("10.77.0.1")
	testGW6     = netip.MustParseAddr("fd77::1")
	testClient4 = netip.MustParseAddr("10.77.0.2")
	testClient6 = netip.MustParseAddr("fd77::2")
	testPool4   = netip.MustParsePrefix("10.77.0.0/24")
	testPool6   = netip.MustParsePrefix("fd77::/64")
)

// testHeadroom mimics datagram.Headroom: packets sit at this offset.
const testHeadroom = 16

func testConfig() Config {
	return Config{
		MTU:      1400,
		Gateway4: testGW4,
		Gateway6: testGW6,
		Prefixes: []netip.Prefix{testPool4, testPool6},
	}
}

// harness is a client-side gVisor stack (wireguard's netstack) wired to a
// Stack by two goroutines copying packets both ways, as the tunnel would.
type harness struct {
	nat  *Stack
	cdev tun.Device
	cnet *netstack.Net
	wg   sync.WaitGroup
	once sync.Once

	dbgMu  sync.Mutex
	dbgIn  [][]byte
	dbgOut [][]byte
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	nat, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	cdev, cnet, err := netstack.CreateNetTUN([]netip.Addr{testClient4, testClient6}, nil, cfg.MTU)
	if err != nil {
		nat.Close()
		tb.Fatalf("CreateNetTUN: %v", err)
	}
	h := &harness{nat: nat, cdev: cdev, cnet: cnet}
	h.wg.Add(2)
	go h.clientToNAT()
	go h.natToClient()
	tb.Cleanup(h.close)
	return h
}

func (h *harness) clientToNAT() {
	defer h.wg.Done()
	buf := make([]byte, testHeadroom+65536)
	bufs, sizes := [][]byte{buf}, []int{0}
	for {
		n, err := h.cdev.Read(bufs, sizes, testHeadroom)
		if err != nil {
			return
		}
		if n == 1 {
			if p := buf[testHeadroom : testHeadroom+sizes[0]]; p[0]>>4 == 6 && p[6] == 58 {
				h.dbgMu.Lock()
				h.dbgIn = append(h.dbgIn, append([]byte(nil), p...))
				h.dbgMu.Unlock()
			}
			// After the NAT is closed Write fails; keep draining the
			// client until it is closed too.
			h.nat.Write([][]byte{buf[:testHeadroom+sizes[0]]}, testHeadroom)
		}
	}
}

func (h *harness) natToClient() {
	defer h.wg.Done()
	bufs := make([][]byte, h.nat.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, testHeadroom+65536)
	}
	sizes := make([]int, len(bufs))
	one := make([][]byte, 1)
	for {
		n, err := h.nat.Read(bufs, sizes, testHeadroom)
		if err != nil {
			return
		}
		for i := range n {
			one[0] = bufs[i][:testHeadroom+sizes[i]]
			if p := bufs[i][testHeadroom : testHeadroom+sizes[i]]; p[0]>>4 == 6 && p[6] == 58 {
				h.dbgMu.Lock()
				h.dbgOut = append(h.dbgOut, append([]byte(nil), p...))
				h.dbgMu.Unlock()
			}
			h.cdev.Write(one, testHeadroom)
		}
	}
}

// close stops the NAT, then the client stack, then waits for the pumps.
func (h *harness) close() {
	h.once.Do(func() {
		h.nat.Close()
		h.cdev.Close()
		h.wg.Wait()
	})
}

// checkGoroutines waits (bounded) for the goroutine count to fall back to
// base and fails with a dump if it does not.
func checkGoroutines(tb testing.TB, base int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			tb.Fatalf("goroutines: %d after close, %d before\n%s", n, base, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requireRoot is the project's helper for tests that need root.
func requireRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("needs root (%s); CI=true", why)
	}
	tb.Skipf("needs root (%s)", why)
}

// isClosed reports whether err says the device is closed.
func isClosed(err error) bool { return errors.Is(err, os.ErrClosed) }
