package flowstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/tuntest"
	"github.com/roamvpn/roam/tunnel/flow"
)

// waitFor polls cond until it holds; the test's own timeout bounds it. It
// is for waiting on other goroutines, not for asserting speed.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// pattern returns the deterministic byte stream of one direction of one
// connection.
func pattern(conn int, dir byte) io.Reader {
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], uint64(conn))
	seed[8] = dir
	return rand.NewChaCha8(seed)
}

// expectStream reads r to EOF and checks it is exactly n bytes of want.
func expectStream(r io.Reader, want io.Reader, n int64) error {
	got, exp := make([]byte, 32<<10), make([]byte, 32<<10)
	var total int64
	for {
		k, err := r.Read(got)
		if k > 0 {
			if total+int64(k) > n {
				return fmt.Errorf("more than the %d bytes expected", n)
			}
			io.ReadFull(want, exp[:k])
			if !bytes.Equal(got[:k], exp[:k]) {
				return fmt.Errorf("bytes %d..%d differ", total, total+int64(k))
			}
			total += int64(k)
		}
		if err == io.EOF {
			if total != n {
				return fmt.Errorf("EOF after %d bytes, want %d", total, n)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", total, err)
		}
	}
}

// TestTransfer runs 50 concurrent connections, half over IPv4 and half
// over IPv6, each sending 1 MB and receiving 1 MB, byte-exact.
func TestTransfer(t *testing.T) {
	conns, size := 50, int64(1<<20)
	if testing.Short() {
		conns, size = 8, 256<<10
	}
	addr := listen(t, func(c *net.TCPConn) {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Errorf("server: header: %v", err)
			return
		}
		i := int(binary.BigEndian.Uint64(hdr[:]))
		done := make(chan struct{})
		go func() {
			defer close(done)
			if _, err := io.Copy(c, io.LimitReader(pattern(i, 'd'), size)); err != nil {
				t.Errorf("server %d: write: %v", i, err)
			}
			c.CloseWrite()
		}()
		if err := expectStream(c, pattern(i, 'u'), size); err != nil {
			t.Errorf("server %d: upload: %v", i, err)
		}
		<-done
	})
	h := newHarness(t, Config{Connect: connectTo(func(netip.AddrPort) string { return addr })})

	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := netip.AddrPortFrom(remote4, 80)
			if i%2 == 1 {
				dst = netip.AddrPortFrom(remote6, 443)
			}
			c, err := h.hnet.DialContextTCPAddrPort(context.Background(), dst)
			if err != nil {
				t.Errorf("conn %d: dial %v: %v", i, dst, err)
				return
			}
			defer c.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				var hdr [8]byte
				binary.BigEndian.PutUint64(hdr[:], uint64(i))
				c.Write(hdr[:])
				if _, err := io.Copy(c, io.LimitReader(pattern(i, 'u'), size)); err != nil {
					t.Errorf("conn %d: write: %v", i, err)
				}
				c.CloseWrite()
			}()
			if err := expectStream(c, pattern(i, 'd'), size); err != nil {
				t.Errorf("conn %d: download: %v", i, err)
			}
			<-done
		}()
	}
	wg.Wait()
	// The counters are final once the flows' Splices have returned.
	waitFor(t, "flows to end", func() bool { return h.stack.Stats().FlowsActive == 0 })
	st := h.stack.Stats()
	if st.FlowsOpened != uint64(conns) {
		t.Errorf("FlowsOpened = %d, want %d", st.FlowsOpened, conns)
	}
	if want := uint64(conns) * uint64(size+8); st.BytesUp != want || st.BytesDown != uint64(conns)*uint64(size) {
		t.Errorf("BytesUp/Down = %d/%d, want %d/%d", st.BytesUp, st.BytesDown, want, uint64(conns)*uint64(size))
	}
	if st.FlowErrors != 0 {
		t.Errorf("FlowErrors = %d, want 0 (every flow ends with two FINs)", st.FlowErrors)
	}
	t.Logf("stats: %+v", st)
}

func TestHalfClose(t *testing.T) {
	request, reply := []byte("request"), bytes.Repeat([]byte("reply "), 50000)
	tests := []struct {
		name      string
		hostFirst bool // the host shuts its write side first; else the server does
	}{
		{"host shuts write, reads reply", true},
		{"server shuts write, reads reply", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverGot := make(chan []byte, 1)
			addr := listen(t, func(c *net.TCPConn) {
				if tt.hostFirst {
					b, _ := io.ReadAll(c) // to the host's FIN
					serverGot <- b
					c.Write(reply)
					c.CloseWrite()
					return
				}
				c.Write(request)
				c.CloseWrite()
				b, _ := io.ReadAll(c)
				serverGot <- b
			})
			h := newHarness(t, Config{Connect: connectTo(func(netip.AddrPort) string { return addr })})
			c, err := h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, 80))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.hostFirst {
				c.Write(request)
				c.CloseWrite()
				got, err := io.ReadAll(c)
				if err != nil || !bytes.Equal(got, reply) {
					t.Fatalf("host read %d bytes, %v; want the %d-byte reply and EOF", len(got), err, len(reply))
				}
				if got := <-serverGot; !bytes.Equal(got, request) {
					t.Fatalf("server read %q, want %q", got, request)
				}
				return
			}
			got, err := io.ReadAll(c) // to the server's FIN
			if err != nil || !bytes.Equal(got, request) {
				t.Fatalf("host read %q, %v; want %q and EOF", got, err, request)
			}
			c.Write(reply)
			c.CloseWrite()
			if got := <-serverGot; !bytes.Equal(got, reply) {
				t.Fatalf("server read %d bytes, want the %d-byte reply", len(got), len(reply))
			}
		})
	}
}

// TestConnectFailure: what the application sees when Connect fails.
func TestConnectFailure(t *testing.T) {
	closed := closedPort(t)
	tests := []struct {
		name    string
		connect func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error)
		timeout time.Duration
		stat    func(Stats) uint64
	}{
		{"refused port", connectTo(func(netip.AddrPort) string { return closed }), 0,
			func(s Stats) uint64 { return s.FlowsRefused }},
		{"prohibited", func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
			return nil, &flow.Error{Kind: flow.Prohibited, Err: errors.New("not in the advertised routes")}
		}, 0, func(s Stats) uint64 { return s.FlowsRefused }},
		{"limit reached", func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
			return nil, fmt.Errorf("open flow: %w", &flow.Error{Kind: flow.LimitReached})
		}, 0, func(s Stats) uint64 { return s.FlowsRefused }},
		{"connect timeout", func(ctx context.Context, _, _ netip.AddrPort) (flow.Stream, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, 50 * time.Millisecond, func(s Stats) uint64 { return s.FlowsFailed }},
		{"other error", func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
			return nil, errors.New("stream limit")
		}, 0, func(s Stats) uint64 { return s.FlowsFailed }},
		{"nil stream", func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
			return nil, nil
		}, 0, func(s Stats) uint64 { return s.FlowsFailed }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{Connect: tt.connect, ConnectTimeout: tt.timeout})
			for _, dst := range []netip.AddrPort{netip.AddrPortFrom(remote4, 22), netip.AddrPortFrom(remote6, 22)} {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				c, err := h.hnet.DialContextTCPAddrPort(ctx, dst)
				cancel()
				if err == nil {
					c.Close()
					t.Fatalf("dial %v succeeded", dst)
				}
				if !isRefused(err) {
					t.Errorf("dial %v: %v; want connection refused (RST)", dst, err)
				}
			}
			if got := tt.stat(h.stack.Stats()); got != 2 {
				t.Errorf("counter = %d, want 2; stats %+v", got, h.stack.Stats())
			}
		})
	}
}

// TestUnreachable: Connect says Unreachable, so the SYN is answered with an
// ICMP error quoting it, and no RST.
func TestUnreachable(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"ipv4", netip.AddrPortFrom(hostAddr4, 40000), netip.AddrPortFrom(remote4, 25)},
		{"ipv6", netip.AddrPortFrom(hostAddr6, 40001), netip.AddrPortFrom(remote6, 25)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
				return nil, &flow.Error{Kind: flow.Unreachable}
			}})
			out := make(chan []byte, 16)
			h.setTap(func(p []byte) bool {
				out <- p
				return false
			})
			syn := buildTCP(tt.src, tt.dst, 0x01020304, 0, tcpSYN, nil)
			h.dev.Inbound <- syn
			p := <-out
			var pkt datagram.Packet
			if err := pkt.Decode(p); err != nil {
				t.Fatalf("stack wrote a bad packet: %v", err)
			}
			wantProto, wantType, wantCode := uint8(1), byte(3), byte(1)
			if tt.src.Addr().Is6() {
				wantProto, wantType, wantCode = 58, 1, 3
			}
			if pkt.Proto != wantProto || pkt.Src != tt.dst.Addr() || pkt.Dst != tt.src.Addr() {
				t.Fatalf("got proto %d %v -> %v; want ICMP %v -> %v", pkt.Proto, pkt.Src, pkt.Dst, tt.dst.Addr(), tt.src.Addr())
			}
			m := p[pkt.HdrLen:pkt.Len]
			if m[0] != wantType || m[1] != wantCode {
				t.Errorf("ICMP type %d code %d, want %d %d", m[0], m[1], wantType, wantCode)
			}
			if !bytes.Equal(m[8:], syn) {
				t.Errorf("quote %x, want the SYN %x", m[8:], syn)
			}
			if !icmpChecksumOK(p, &pkt) {
				t.Error("bad ICMP checksum")
			}
			if st := h.stack.Stats(); st.FlowsUnreachable != 1 {
				t.Errorf("FlowsUnreachable = %d, want 1", st.FlowsUnreachable)
			}
		})
	}
}

// TestMaxFlows: with MaxFlows flows connecting, the next SYN gets a RST.
func TestMaxFlows(t *testing.T) {
	addr := listen(t, func(c *net.TCPConn) { io.Copy(c, c) })
	release := make(chan struct{})
	dial := connectTo(func(netip.AddrPort) string { return addr })
	h := newHarness(t, Config{MaxFlows: 2, Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return dial(ctx, src, dst)
	}})
	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result, 2)
	for range 2 {
		go func() {
			c, err := h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, 7))
			res <- result{c, err}
		}()
	}
	waitFor(t, "two pending flows", func() bool { return h.stack.Stats().FlowsPending == 2 })
	_, err := h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, 7))
	if !isRefused(err) {
		t.Fatalf("third dial: %v, want refused", err)
	}
	if st := h.stack.Stats(); st.FlowsOverLimit != 1 {
		t.Errorf("FlowsOverLimit = %d, want 1", st.FlowsOverLimit)
	}
	close(release)
	for range 2 {
		r := <-res
		if r.err != nil {
			t.Fatalf("pending dial: %v", r.err)
		}
		r.c.Write([]byte("x"))
		if _, err := io.ReadFull(r.c, make([]byte, 1)); err != nil {
			t.Errorf("echo: %v", err)
		}
		r.c.Close()
	}
}

// TestReadPassThrough: non-TCP packets come out of Read unchanged, in
// order, at the caller's offset; TCP packets do not.
func TestReadPassThrough(t *testing.T) {
	dev := tuntest.NewChannelDevice(testMTU, 8)
	s, err := New(Config{Dev: dev, Connect: func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
		return nil, &flow.Error{Kind: flow.Refused}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go func() { // swallow the stack's RSTs
		for {
			select {
			case <-dev.Outbound:
			case <-dev.Done():
				return
			}
		}
	}()
	src4, dst4 := netip.AddrPortFrom(hostAddr4, 5000), netip.AddrPortFrom(remote4, 53)
	src6, dst6 := netip.AddrPortFrom(hostAddr6, 5000), netip.AddrPortFrom(remote6, 53)
	udp4 := buildUDP(src4, dst4, []byte("query v4"))
	udp6 := buildUDP(src6, dst6, []byte("query v6"))
	icmp := buildICMPEcho(hostAddr4, remote4)
	garbage := []byte{0x45, 0, 0, 99} // does not parse: the pump drops it
	in := [][]byte{
		udp4,
		buildTCP(src4, netip.AddrPortFrom(remote4, 80), 1, 0, tcpSYN, nil),
		udp6,
		buildTCP(src6, netip.AddrPortFrom(remote6, 80), 7, 9, tcpACK, []byte("data")),
		icmp,
		garbage,
	}
	for _, p := range in {
		dev.Inbound <- p
	}
	bufs, sizes := make([][]byte, 8), make([]int, 8)
	for i := range bufs {
		bufs[i] = make([]byte, datagram.BufSize)
	}
	n, err := s.Read(bufs, sizes, datagram.Headroom)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]byte{udp4, udp6, icmp, garbage}
	if n != len(want) {
		t.Fatalf("Read returned %d packets, want %d", n, len(want))
	}
	for i, w := range want {
		if got := bufs[i][datagram.Headroom : datagram.Headroom+sizes[i]]; !bytes.Equal(got, w) {
			t.Errorf("packet %d = %x, want %x", i, got, w)
		}
	}
	if st := s.Stats(); st.PacketsDiverted != 2 {
		t.Errorf("PacketsDiverted = %d, want 2", st.PacketsDiverted)
	}

	// A batch of only TCP is not returned as 0 packets: Read reads again.
	got := make(chan int, 1)
	go func() {
		n, _ := s.Read(bufs, sizes, datagram.Headroom)
		got <- n
	}()
	dev.Inbound <- buildTCP(src4, netip.AddrPortFrom(remote4, 81), 1, 0, tcpSYN, nil)
	waitFor(t, "the TCP packet to be diverted", func() bool { return s.Stats().PacketsDiverted == 3 })
	dev.Inbound <- udp4
	if n := <-got; n != 1 || !bytes.Equal(bufs[0][datagram.Headroom:datagram.Headroom+sizes[0]], udp4) {
		t.Errorf("Read after an all-TCP batch = %d packets, want the UDP packet", n)
	}
}

// TestClose: Close unblocks Read, resets the application's connections,
// cancels pending Connects, and leaves no goroutine behind.
func TestClose(t *testing.T) {
	addr := listen(t, func(c *net.TCPConn) { io.Copy(c, c) })
	dial := connectTo(func(netip.AddrPort) string { return addr })
	connectCancelled := make(chan error, 1)
	var h *harness
	base := 0
	h = newHarnessBase(t, &base, Config{Connect: func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error) {
		if dst.Port() == 9 { // never answers: Close must cancel it
			<-ctx.Done()
			connectCancelled <- ctx.Err()
			return nil, ctx.Err()
		}
		return dial(ctx, src, dst)
	}})
	var conns []net.Conn
	for i := range 3 {
		c, err := h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, uint16(7+i*1000)))
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hi"))
		io.ReadFull(c, make([]byte, 2))
		conns = append(conns, c)
	}
	go h.hnet.DialContextTCPAddrPort(context.Background(), netip.AddrPortFrom(remote4, 9))
	waitFor(t, "the pending Connect", func() bool { return h.stack.Stats().FlowsPending == 1 })

	h.closeStack()
	if !errors.Is(h.readErr, os.ErrClosed) {
		t.Errorf("blocked Read returned %v, want os.ErrClosed", h.readErr)
	}
	if err := <-connectCancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("pending Connect's ctx: %v, want context.Canceled", err)
	}
	for i, c := range conns {
		if _, err := c.Read(make([]byte, 1)); err == nil || err == io.EOF {
			t.Errorf("conn %d: read after Close: %v, want a reset", i, err)
		}
		c.Close()
	}
	if _, err := h.stack.Write([][]byte{make([]byte, 40)}, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v, want os.ErrClosed", err)
	}
	if n, err := h.stack.Read([][]byte{make([]byte, 100)}, []int{0}, 0); n != 0 || !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close: %d, %v; want 0, os.ErrClosed", n, err)
	}
	if err := h.stack.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	select {
	case <-h.dev.Done():
	default:
		t.Error("Close did not close the device")
	}
	settled := func() bool { return runtime.NumGoroutine() <= base }
	deadline := time.Now().Add(10 * time.Second)
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !settled() {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Close, %d before New:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
	}
}

func TestNewErrors(t *testing.T) {
	connect := func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) { return nil, nil }
	tests := []struct {
		name string
		cfg  func(*tuntest.ChannelDevice) Config
		want string
	}{
		{"no dev", func(*tuntest.ChannelDevice) Config { return Config{Connect: connect} }, "Config.Dev"},
		{"no connect", func(d *tuntest.ChannelDevice) Config { return Config{Dev: d} }, "Config.Connect"},
		{"mtu too small", func(d *tuntest.ChannelDevice) Config { return Config{Dev: d, Connect: connect, MTU: 100} }, "MTU 100"},
		{"negative pending", func(d *tuntest.ChannelDevice) Config { return Config{Dev: d, Connect: connect, MaxPending: -1} }, "Config.MaxPending"},
		{"negative flows", func(d *tuntest.ChannelDevice) Config { return Config{Dev: d, Connect: connect, MaxFlows: -1} }, "Config.MaxFlows"},
		{"negative timeout", func(d *tuntest.ChannelDevice) Config {
			return Config{Dev: d, Connect: connect, ConnectTimeout: -time.Second}
		}, "Config.ConnectTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := tuntest.NewChannelDevice(100, 1)
			_, err := New(tt.cfg(dev))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error naming %q", err, tt.want)
			}
			if tt.name != "no dev" {
				select {
				case <-dev.Done():
				default:
					t.Error("failed New did not close Dev")
				}
			}
		})
	}
}
