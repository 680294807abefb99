package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/flowstack"
)

// TestFlowMode: TCP through flow mode (client flowstack, one HTTP/3 CONNECT
// stream per connection, server dial and splice): 50 concurrent
// connections of 1 MB each way byte-exact, each half-closing its sending
// side and still reading the reply; a refused port is refused at once;
// ping (a datagram) still works in the same session.
func TestFlowMode(t *testing.T) {
	ts := startTestServerWith(t, testServerOpts{gatewayLoopback: true})
	var fs *flowstack.Stack
	tc, err := startTestClient(t, ts, func(c *ClientConfig) {
		c.FlowDevice = func(dev datagram.Device, mtu int, open OpenFlow) (datagram.Device, error) {
			s, err := flowstack.New(flowstack.Config{Dev: dev, MTU: mtu, Connect: open, Logger: c.Logger})
			fs = s
			return s, err
		}
	})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	gw := netip.MustParseAddr("100.96.0.1")

	// An echo service on the server host's loopback, reached through the
	// gateway address: it returns every byte, then closes after the
	// client's FIN.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)

	t.Run("50x1MB", func(t *testing.T) {
		// The deadline is a safety net for a stalled flow, not a timing
		// assertion: 100 MB through two gVisor stacks and QUIC take ~2 s,
		// ~35 s with -race, and minutes with -race on a busy 2-core host.
		// A flow that moves no byte for two minutes is stalled (under that
		// load gVisor's RTO reaches tens of seconds; its cap is 120 s): the
		// test then reports where the unfinished flows' bytes are and ends
		// them. So it does 15 s before the deadline if flows are still
		// running.
		const flows, size, deadline, stallAfter = 50, 1 << 20, 5 * time.Minute, 2 * time.Minute
		const chunk = 64 << 10
		var wg sync.WaitGroup
		errs := make(chan error, flows)
		ended := make([]time.Duration, flows) // when each flow ended, from start
		progress := make([]*flowProgress, flows)
		conns := make([]net.Conn, flows)
		var connsMu sync.Mutex
		for i := range progress {
			progress[i] = &flowProgress{}
		}
		watchDone, watchExited := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(watchExited)
			watchFlows(progress, stallAfter, time.Now().Add(deadline-15*time.Second), watchDone, func(why string) {
				t.Errorf("%s:\n%s", why, stallReport(progress, netstackStack(tc.net), fs, ts.srv))
				connsMu.Lock()
				for _, c := range conns {
					if c != nil {
						c.SetDeadline(time.Now())
					}
				}
				connsMu.Unlock()
			})
		}()
		start := time.Now()
		for i := range flows {
			p := progress[i]
			wg.Go(func() {
				defer p.closed.Store(true)
				defer func() { ended[i] = time.Since(start) }()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				c, err := tc.net.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(gw, port))
				if err != nil {
					errs <- fmt.Errorf("flow %d: dial: %w", i, err)
					return
				}
				defer c.Close()
				local := netip.MustParseAddrPort(c.LocalAddr().String())
				p.addr.Store(&local)
				connsMu.Lock()
				conns[i] = c
				connsMu.Unlock()
				c.SetDeadline(time.Now().Add(deadline))
				payload := make([]byte, size)
				rand.Read(payload)
				wrote := make(chan error, 1)
				go func() {
					defer p.writeDone.Store(true)
					for off := 0; off < size; off += chunk {
						n, err := c.Write(payload[off : off+chunk])
						p.written.Add(int64(n))
						if err != nil {
							p.writeErr.Store(&err)
							wrote <- fmt.Errorf("write: %w", err)
							return
						}
					}
					if err := c.CloseWrite(); err != nil { // half-close: the reply still comes
						wrote <- fmt.Errorf("close-write: %w", err)
						return
					}
					wrote <- nil
				}()
				got := make([]byte, 0, size)
				for {
					if len(got) == cap(got) {
						got = append(got, 0)[:len(got)]
					}
					n, err := c.Read(got[len(got):cap(got)])
					got = got[:len(got)+n]
					p.read.Add(int64(n))
					if err == io.EOF {
						break
					}
					if err != nil {
						errs <- fmt.Errorf("flow %d (%v): read after %d bytes: %w", i, local, len(got), err)
						return
					}
				}
				if err := <-wrote; err != nil {
					errs <- fmt.Errorf("flow %d (%v): %w", i, local, err)
					return
				}
				if !bytes.Equal(got, payload) {
					errs <- fmt.Errorf("flow %d (%v): echo differs (%d bytes back)", i, local, len(got))
				}
			})
		}
		wg.Wait()
		close(watchDone)
		<-watchExited // its report (t.Errorf) is done
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		slices.Sort(ended)
		t.Logf("%d flows × 1 MB each way in %v (flows ended after: half %v, 90%% %v, all %v)", flows, time.Since(start),
			ended[flows/2].Round(time.Millisecond), ended[flows*9/10].Round(time.Millisecond), ended[flows-1].Round(time.Millisecond))
		t.Logf("flowstack: %+v", fs.Stats())
		if n := ts.srv.Stats().FlowsTotal.Load(); n < flows {
			t.Errorf("server counted %d flows, want %d", n, flows)
		}
	})

	t.Run("refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := uint16(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = tc.net.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(gw, closed))
		if !errors.Is(err, syscall.ECONNREFUSED) && (err == nil || !bytes.Contains([]byte(err.Error()), []byte("refused"))) {
			t.Fatalf("dial to a closed port: %v, want connection refused", err)
		}
	})

	t.Run("ping", func(t *testing.T) { pingOnce(t, tc.net, gw) })
}

// TestFlowPolicy: the server refuses flows it must not dial, with the
// status and Proxy-Status the client maps to a local outcome.
func TestFlowPolicy(t *testing.T) {
	ts := startTestServerWith(t, testServerOpts{routes: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("100.96.0.0/24")}})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := linkOn(t, pc, ts.addr, ts.pin)
	for _, tt := range []struct {
		name, authority, token string
		status                 int
		proxyStatus            string
	}{
		{"outside the routes", "192.0.2.1:80", testToken, 502, "error=destination_ip_prohibited"},
		{"loopback", "127.0.0.1:22", testToken, 502, "error=destination_ip_prohibited"},
		{"link-local metadata", "169.254.169.254:80", testToken, 502, "error=destination_ip_prohibited"},
		{"not host:port", "example.com", testToken, 400, ""},
		{"bad port", "10.99.0.1:http", testToken, 400, ""},
		// A name is resolved on the server (from /etc/hosts here: no DNS
		// traffic) and the policy applies to each address.
		{"name resolving to loopback", "localhost:22", testToken, 502, "error=destination_ip_prohibited"},
		{"wrong token", "10.99.0.1:80", "wrong", 401, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			str, err := l.cc.OpenRequestStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer str.CancelRead(0)
			req := &http.Request{Method: http.MethodConnect, Host: tt.authority, URL: &url.URL{Host: tt.authority},
				Header: http.Header{"Authorization": {"Bearer " + tt.token}}}
			if err := str.SendRequestHeader(req); err != nil {
				t.Fatal(err)
			}
			resp, err := str.ReadResponse()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || !strings.Contains(resp.Header.Get("Proxy-Status"), tt.proxyStatus) {
				t.Fatalf("HTTP %d, Proxy-Status %q; want %d and %q", resp.StatusCode, resp.Header.Get("Proxy-Status"), tt.status, tt.proxyStatus)
			}
		})
	}
	if n := ts.srv.Stats().FlowsTotal.Load(); n != 0 {
		t.Fatalf("FlowsTotal = %d", n)
	}
}
