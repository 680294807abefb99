package flowstack

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/tuntest"
	"github.com/roamvpn/roam/tunnel/flow"
	"github.com/roamvpn/roam/tunnel/flow/flowtest"
)

// Test addresses: the host (the machine whose TUN the Stack reads) and the
// destinations its applications connect to. Nothing is sent to them:
// Connect maps every destination to a loopback listener.
var (
	hostAddr4 = netip.MustParseAddr("10.9.0.2")
	hostAddr6 = netip.MustParseAddr("fd09::2")
	remote4   = netip.MustParseAddr("192.0.2.80")
	remote6   = netip.MustParseAddr("2001:db8::80")
)

const (
	testMTU   = 1400
	testBatch = 16
)

// harness wires a Stack, whose device is a tuntest.ChannelDevice, to a
// second gVisor stack playing the host's applications (wireguard's
// netstack): host packets go into the device's Inbound, what the Stack
// writes to the device goes from Outbound to the host. A reader goroutine
// plays the pump: it calls Stack.Read and collects the non-TCP packets.
type harness struct {
	tb    testing.TB
	dev   *tuntest.ChannelDevice
	stack *Stack
	hdev  tun.Device
	hnet  *netstack.Net

	nonTCP  chan []byte // packets Stack.Read returned (copies), unless pump is set
	readErr error       // the error that ended the reader; set before readerWG.Done

	// tap, if set before traffic, sees every packet the Stack writes to
	// the device; returning false keeps it from the host.
	tapMu sync.Mutex
	tap   func(pkt []byte) bool
	// pump, if set, receives (copies of) the packets Stack.Read returns
	// instead of nonTCP: the tunnel side (see tunnelPeer).
	pump func(pkt []byte)

	stop     chan struct{}
	hostWG   sync.WaitGroup
	readerWG sync.WaitGroup
	once     sync.Once
}

// connectTo returns a Connect func that dials target over loopback TCP
// whatever the destination, and adapts the conn as the flow's stream.
func connectTo(target func(dst netip.AddrPort) string) func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
	return func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", target(dst))
		if err != nil {
			return nil, &flow.Error{Kind: flow.Classify(err), Dst: dst.String(), Err: err}
		}
		return flowtest.NewConnStream(c), nil
	}
}

func newHarness(tb testing.TB, cfg Config) *harness {
	tb.Helper()
	return newHarnessBase(tb, nil, cfg)
}

// newHarnessBase is newHarness that also stores in *base (if not nil) the
// number of goroutines just before the Stack is created.
func newHarnessBase(tb testing.TB, base *int, cfg Config) *harness {
	tb.Helper()
	h := &harness{
		tb:     tb,
		dev:    tuntest.NewChannelDevice(testMTU, testBatch),
		nonTCP: make(chan []byte, 256),
		stop:   make(chan struct{}),
	}
	// Goroutines inherit profiler labels: the host's stack and pumps are
	// side=host, the Stack's (gVisor's workers, the forwarder's handlers,
	// the device writer, the reader) side=flowstack (see the benchmark).
	var err error
	pprof.Do(context.Background(), pprof.Labels("side", "host"), func(context.Context) {
		h.hdev, h.hnet, err = netstack.CreateNetTUN([]netip.Addr{hostAddr4, hostAddr6}, nil, testMTU)
		if err != nil {
			return
		}
		h.hostWG.Add(2)
		go h.hostToDev()
		go h.devToHost()
	})
	if err != nil {
		tb.Fatalf("CreateNetTUN: %v", err)
	}
	cfg.Dev = h.dev
	if cfg.MTU == 0 {
		cfg.MTU = testMTU
	}
	if base != nil {
		*base = runtime.NumGoroutine()
	}
	pprof.Do(context.Background(), pprof.Labels("side", "flowstack"), func(context.Context) {
		h.stack, err = New(cfg)
		if err != nil {
			return
		}
		h.readerWG.Add(1)
		go h.reader()
	})
	if err != nil {
		h.closeHost()
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(h.close)
	return h
}

func (h *harness) hostToDev() {
	defer h.hostWG.Done()
	bufs, sizes := [][]byte{make([]byte, 65536)}, []int{0}
	for {
		n, err := h.hdev.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		for i := range n {
			h.dev.Inbound <- append([]byte(nil), bufs[i][:sizes[i]]...)
		}
	}
}

func (h *harness) devToHost() {
	defer h.hostWG.Done()
	for {
		select {
		case <-h.stop:
			return
		case p := <-h.dev.Outbound:
			h.tapMu.Lock()
			tap := h.tap
			h.tapMu.Unlock()
			if tap != nil && !tap(p) {
				continue
			}
			h.hdev.Write([][]byte{p}, 0)
		}
	}
}

// reader plays the pump: Stack.Read in batches at offset Headroom.
func (h *harness) reader() {
	defer h.readerWG.Done()
	bufs, sizes := make([][]byte, testBatch), make([]int, testBatch)
	for i := range bufs {
		bufs[i] = make([]byte, datagram.BufSize)
	}
	for {
		n, err := h.stack.Read(bufs, sizes, datagram.Headroom)
		for i := range n {
			p := append([]byte(nil), bufs[i][datagram.Headroom:datagram.Headroom+sizes[i]]...)
			h.tapMu.Lock()
			pump := h.pump
			h.tapMu.Unlock()
			if pump != nil {
				pump(p)
				continue
			}
			select {
			case h.nonTCP <- p:
			default:
			}
		}
		if err != nil {
			h.readErr = err
			return
		}
	}
}

func (h *harness) setTap(f func([]byte) bool) {
	h.tapMu.Lock()
	h.tap = f
	h.tapMu.Unlock()
}

func (h *harness) setPump(f func([]byte)) {
	h.tapMu.Lock()
	h.pump = f
	h.tapMu.Unlock()
}

// tunnelPeer is the tunnel side of the Stack for inbound connections: a
// gVisor stack (wireguard's netstack) with the remote addresses, playing
// the server or another client. What it sends goes into Stack.Write; its
// deliver method takes the packets Stack.Read returns (set it as the
// harness's pump).
type tunnelPeer struct {
	dev tun.Device
	net *netstack.Net
	wg  sync.WaitGroup
}

func newTunnelPeer(tb testing.TB, s *Stack) *tunnelPeer {
	tb.Helper()
	p := &tunnelPeer{}
	var err error
	p.dev, p.net, err = netstack.CreateNetTUN([]netip.Addr{remote4, remote6}, nil, testMTU)
	if err != nil {
		tb.Fatalf("CreateNetTUN: %v", err)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		// Large buffers at Headroom: a Linux TUN's Write may coalesce
		// into them.
		bufs, sizes := [][]byte{make([]byte, datagram.LargeBufSize)}, []int{0}
		for {
			n, err := p.dev.Read(bufs, sizes, datagram.Headroom)
			if err != nil {
				return
			}
			for i := range n {
				s.Write([][]byte{bufs[i][:datagram.Headroom+sizes[i]]}, datagram.Headroom)
			}
		}
	}()
	tb.Cleanup(func() {
		p.dev.Close()
		p.wg.Wait()
	})
	return p
}

// deliver gives the peer a packet from the Stack.
func (p *tunnelPeer) deliver(pkt []byte) { p.dev.Write([][]byte{pkt}, 0) }

// closeStack closes the Stack and waits for the reader.
func (h *harness) closeStack() {
	if err := h.stack.Close(); err != nil {
		h.tb.Errorf("Stack.Close: %v", err)
	}
	h.readerWG.Wait()
}

func (h *harness) closeHost() {
	close(h.stop)
	h.hdev.Close()
	h.hostWG.Wait()
}

func (h *harness) close() {
	h.once.Do(func() {
		h.closeStack()
		h.closeHost()
	})
}

// listen starts a loopback TCP server running serve for each connection
// and returns its address.
func listen(tb testing.TB, serve func(c *net.TCPConn)) string {
	tb.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(tb testing.TB) string {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// isRefused reports whether a host dial failed with a RST: gonet's dial
// errors carry only the text of gVisor's error ("connection was refused").
func isRefused(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "refused")
}
