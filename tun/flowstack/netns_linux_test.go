package flowstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun"
	"github.com/roamvpn/roam/tunnel/flow"
)

// The kernel test runs the Stack on a real TUN device in a network namespace
// the test creates: applications there are the kernel's TCP (with the TUN's
// segmentation and coalescing offloads), which is what flow mode serves. It
// checks what connect(2) reports for each Connect outcome, which a gVisor
// host cannot (gVisor ignores ICMP errors for connecting sockets).

// needRoot skips the test when not root, or fails it when CI=true.
func needRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("needs root (TUN device, network namespace), and CI=true")
	}
	tb.Skip("needs root (TUN device, network namespace)")
}

var netnsCounter atomic.Int64

// inNetns runs fn on this goroutine's OS thread switched into ns. Sockets
// and devices fn creates belong to ns; goroutines it starts do not.
func inNetns(tb testing.TB, ns netns.NsHandle, fn func()) {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("get netns: %v", err)
	}
	if err := netns.Set(ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		tb.Fatalf("enter netns: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			tb.Errorf("restore netns: %v (the thread stays locked and dies)", err)
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	}()
	fn()
}

// kernelHarness is a Stack on a TUN "roamf0" in namespace "roamt-<pid>-<n>"
// (10.9.0.2/24, fd09::2/64; routes to 192.0.2.0/24 and 2001:db8::/64 into
// the TUN), with a reader goroutine that discards the packets Stack.Read
// returns, or gives them to pump once it is set.
type kernelHarness struct {
	ns    netns.NsHandle
	stack *Stack
	wg    sync.WaitGroup
	pump  atomic.Pointer[func(pkt []byte)]
}

func newKernelHarness(tb testing.TB, cfg Config) *kernelHarness {
	tb.Helper()
	needRoot(tb)
	name := fmt.Sprintf("roamt-%d-%d", os.Getpid(), netnsCounter.Add(1))
	h := &kernelHarness{}
	var dev tun.Device
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			tb.Fatalf("get netns: %v", err)
		}
		defer orig.Close()
		h.ns, err = netns.NewNamed(name) // switches this thread into it
		if err != nil {
			tb.Fatalf("create netns %s: %v", name, err)
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				panic(fmt.Sprintf("restore netns: %v", err))
			}
		}()
		tb.Cleanup(func() {
			h.ns.Close()
			if err := netns.DeleteNamed(name); err != nil {
				tb.Errorf("delete netns %s: %v", name, err)
			}
		})
		var real string
		dev, real, err = tun.Create("roamf0", testMTU)
		if err != nil {
			tb.Fatalf("create TUN: %v", err)
		}
		if err := tun.ConfigureLink(real, []netip.Prefix{netip.MustParsePrefix("10.9.0.2/24"), netip.MustParsePrefix("fd09::2/64")}, testMTU); err != nil {
			dev.Close()
			tb.Fatal(err)
		}
		link, err := netlink.LinkByName(real)
		if err != nil {
			dev.Close()
			tb.Fatal(err)
		}
		for _, p := range []string{"192.0.2.0/24", "2001:db8::/64"} {
			_, ipnet, _ := net.ParseCIDR(p)
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipnet}); err != nil {
				dev.Close()
				tb.Fatalf("route %s: %v", p, err)
			}
		}
	}()
	cfg.Dev = dev
	cfg.MTU = testMTU // Dev.MTU() looks the device up in the caller's namespace
	var err error
	pprof.Do(context.Background(), pprof.Labels("side", "flowstack"), func(context.Context) {
		h.stack, err = New(cfg)
		if err != nil {
			return
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			bufs, sizes := make([][]byte, dev.BatchSize()), make([]int, dev.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, datagram.BufSize)
			}
			for {
				n, err := h.stack.Read(bufs, sizes, datagram.Headroom)
				if pump := h.pump.Load(); pump != nil {
					for i := range n {
						(*pump)(append([]byte(nil), bufs[i][datagram.Headroom:datagram.Headroom+sizes[i]]...))
					}
				}
				if err != nil {
					return
				}
			}
		}()
	})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() {
		h.stack.Close()
		h.wg.Wait()
	})
	return h
}

// dial connects from inside the namespace.
func (h *kernelHarness) dial(tb testing.TB, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	var err error
	inNetns(tb, h.ns, func() {
		d := net.Dialer{Timeout: 30 * time.Second}
		c, err = d.Dial("tcp", dst.String())
	})
	return c, err
}

func TestKernelTUN(t *testing.T) {
	echo := listen(t, func(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() })
	dial := connectTo(func(netip.AddrPort) string { return echo })
	h := newKernelHarness(t, Config{Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		switch dst.Port() {
		case 1:
			return nil, &flow.Error{Kind: flow.Refused}
		case 2:
			return nil, &flow.Error{Kind: flow.Unreachable}
		case 3:
			return nil, &flow.Error{Kind: flow.Prohibited}
		}
		return dial(ctx, src, dst)
	}})
	for _, remote := range []netip.Addr{remote4, remote6} {
		t.Run(fmt.Sprintf("echo 4MB %v", remote), func(t *testing.T) {
			c, err := h.dial(t, netip.AddrPortFrom(remote, 7))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			data := make([]byte, 4<<20)
			io.ReadFull(pattern(1, 'k'), data)
			go func() {
				c.Write(data)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("echo: %d bytes, %v; want the %d bytes sent and EOF", len(got), err, len(data))
			}
		})
		for _, tt := range []struct {
			name  string
			port  uint16
			errno syscall.Errno
		}{
			{"refused", 1, syscall.ECONNREFUSED},
			{"unreachable", 2, syscall.EHOSTUNREACH},
			{"prohibited", 3, syscall.ECONNREFUSED},
		} {
			t.Run(fmt.Sprintf("%s %v", tt.name, remote), func(t *testing.T) {
				c, err := h.dial(t, netip.AddrPortFrom(remote, tt.port))
				if err == nil {
					c.Close()
					t.Fatal("dial succeeded")
				}
				if !errors.Is(err, tt.errno) {
					t.Fatalf("dial: %v; want %v", err, tt.errno)
				}
			})
		}
	}
	if st := h.stack.Stats(); st.FlowsUnreachable != 2 || st.FlowsRefused != 4 || st.FlowsOpened != 2 {
		t.Errorf("stats %+v; want 2 opened, 4 refused, 2 unreachable", st)
	}
}

// TestKernelTUNInbound: TCP connections opened from the tunnel side (a
// gVisor stack with the remote addresses, playing the server or another
// client) to listeners of the namespace's kernel cross the flow-mode Stack
// as packets and carry 4 MB each way byte-exact, over IPv4 and IPv6; a
// flow the kernel opens still goes through gVisor beside them.
func TestKernelTUNInbound(t *testing.T) {
	echo := listen(t, func(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() })
	h := newKernelHarness(t, Config{Connect: connectTo(func(netip.AddrPort) string { return echo })})
	peer := newTunnelPeer(t, h.stack)
	deliver := peer.deliver
	h.pump.Store(&deliver)
	const size = 4 << 20
	for i, host := range []netip.Addr{netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("fd09::2")} {
		t.Run(host.String(), func(t *testing.T) {
			var ln net.Listener
			var err error
			inNetns(t, h.ns, func() { ln, err = net.Listen("tcp", netip.AddrPortFrom(host, 0).String()) })
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			served := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					served <- err
					return
				}
				defer c.Close()
				wrote := make(chan struct{})
				go func() {
					defer close(wrote)
					io.Copy(c, io.LimitReader(pattern(i, 'd'), size))
					c.(*net.TCPConn).CloseWrite()
				}()
				err = expectStream(c, pattern(i, 'u'), size)
				<-wrote // before Close
				served <- err
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := peer.net.DialContextTCPAddrPort(ctx, netip.MustParseAddrPort(ln.Addr().String()))
			if err != nil {
				t.Fatalf("dial from the tunnel side: %v", err)
			}
			defer c.Close()
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				io.Copy(c, io.LimitReader(pattern(i, 'u'), size))
				c.CloseWrite()
			}()
			if err := expectStream(c, pattern(i, 'd'), size); err != nil {
				t.Errorf("tunnel side read: %v", err)
			}
			<-wrote
			if err := <-served; err != nil {
				t.Errorf("host side read: %v", err)
			}
		})
	}
	c, err := h.dial(t, netip.AddrPortFrom(remote4, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("flow"))
	if b := make([]byte, 4); func() error { _, err := io.ReadFull(c, b); return err }() != nil || string(b) != "flow" {
		t.Errorf("echo over a flow beside the inbound connections: %q", b)
	}
	st := h.stack.Stats()
	if st.InboundTracked != 2 || st.InboundDropped != 0 || st.PacketsInbound == 0 || st.FlowsOpened != 1 {
		t.Errorf("stats %+v; want 2 inbound connections tracked, none dropped, their packets passed, 1 flow", st)
	}
	t.Logf("stats: %+v", st)
}

// BenchmarkKernelTUN is BenchmarkThroughput with the kernel's TCP on a real
// TUN as the application side (root only): this is the Stack's cost as flow
// mode sees it. The process CPU includes the application's and the
// loopback server's socket calls; profile labels split it (side=flowstack,
// app, server).
func BenchmarkKernelTUN(b *testing.B) {
	const chunk = 1 << 20
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			addr := listen(b, func(c *net.TCPConn) {
				pprof.Do(context.Background(), pprof.Labels("side", "server"), func(context.Context) {
					var hdr [8]byte
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					if n := int(hdr[0])<<24 | int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]); n > 0 {
						buf := make([]byte, chunk)
						for range n {
							if _, err := c.Write(buf); err != nil {
								return
							}
						}
						c.CloseWrite()
						return
					}
					io.Copy(io.Discard, c)
					c.Write([]byte{1})
				})
			})
			h := newKernelHarness(b, Config{Connect: connectTo(func(netip.AddrPort) string { return addr })})
			c, err := h.dial(b, netip.AddrPortFrom(remote4, 5201))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ReportAllocs()
			b.SetBytes(chunk)
			pprof.Do(context.Background(), pprof.Labels("side", "app"), func(context.Context) {
				var hdr [8]byte
				if dir == "download" {
					hdr[0], hdr[1], hdr[2], hdr[3] = byte(b.N>>24), byte(b.N>>16), byte(b.N>>8), byte(b.N)
				}
				buf := make([]byte, chunk)
				cpu0, t0 := cpuTime(), time.Now()
				b.ResetTimer()
				c.Write(hdr[:])
				if dir == "upload" {
					for range b.N {
						if _, err := c.Write(buf); err != nil {
							b.Fatal(err)
						}
					}
					c.(*net.TCPConn).CloseWrite()
					if _, err := io.ReadFull(c, buf[:1]); err != nil {
						b.Fatal(err)
					}
				} else if n, err := io.CopyBuffer(io.Discard, c, buf); err != nil || n != int64(b.N)*chunk {
					b.Fatalf("downloaded %d bytes, %v; want %d", n, err, int64(b.N)*chunk)
				}
				b.StopTimer()
				cpu, wall := cpuTime()-cpu0, time.Since(t0)
				gbit := float64(b.N) * chunk * 8 / 1e9
				b.ReportMetric(cpu.Seconds()/gbit, "cpu-s/Gbit")
				b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
			})
			b.ReportMetric(float64(h.stack.Stats().DropOutQueue), "queue-drops")
		})
	}
}
