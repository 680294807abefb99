package flowstack

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/roamvpn/roam/tunnel/flow"
)

// handleSYN is the TCP forwarder's callback for one new connection. gVisor
// runs it on a goroutine of its own (tcp.Forwarder.HandlePacket does `go
// handler(req)`) and ignores retransmitted SYNs of the connection while it
// runs, so Connect may block here without stalling the stack. Complete is
// called exactly once on every path.
func (s *Stack) handleSYN(r *tcp.ForwarderRequest) {
	id := r.ID()
	key := synKey{
		src: netip.AddrPortFrom(addrOf(id.RemoteAddress), id.RemotePort),
		dst: netip.AddrPortFrom(addrOf(id.LocalAddress), id.LocalPort),
	}
	if !s.enter() {
		r.Complete(false) // closing: drop silently
		return
	}
	defer s.flows.Done()

	if s.flowCnt.Add(1) > int64(s.cfg.MaxFlows) {
		s.flowCnt.Add(-1)
		s.syns.forget(key)
		s.cnt.overLimit.Add(1)
		r.Complete(true)
		return
	}
	defer s.flowCnt.Add(-1)

	s.cnt.pending.Add(1)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ConnectTimeout)
	stream, err := s.cfg.Connect(ctx, key.src, key.dst)
	if err == nil && stream == nil {
		err = errors.New("Connect returned no stream and no error")
	}
	if err == nil && s.ctx.Err() != nil {
		stream.Abort()
		err = s.ctx.Err()
	}
	cancel()
	s.cnt.pending.Add(-1)
	if err != nil {
		s.connectFailed(r, key, err)
		return
	}
	s.syns.forget(key)

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq) // blocks until the handshake completes or fails
	r.Complete(false)
	if terr != nil {
		// The application went away (or sent a RST) while we connected,
		// or Close aborted the handshake.
		stream.Abort()
		s.cnt.failed.Add(1)
		s.debug("local handshake failed", "src", key.src, "dst", key.dst, "err", terr.String())
		return
	}
	conn := &tcpConn{TCPConn: gonet.NewTCPConn(&wq, ep), ep: ep}
	s.cnt.opened.Add(1)
	s.cnt.active.Add(1)
	defer s.cnt.active.Add(-1)
	up, down, err := flow.Splice(s.ctx, stream, conn, flow.WithCounters(&s.cnt.up, &s.cnt.down))
	if err != nil {
		s.cnt.flowErr.Add(1)
	}
	s.debug("flow ended", "src", key.src, "dst", key.dst, "up", up, "down", down, "err", err)
}

// connectFailed answers the application's SYN after Connect failed.
func (s *Stack) connectFailed(r *tcp.ForwarderRequest, key synKey, err error) {
	kind := flow.Classify(err) // a Connect that ran out of time: Timeout
	s.debug("connect failed", "src", key.src, "dst", key.dst, "kind", kind.String(), "err", err)
	quote := s.syns.take(key)
	switch kind {
	case flow.Unreachable:
		s.cnt.unreach.Add(1)
		if pkt, ok := appendUnreachable(nil, quote); ok {
			r.Complete(false) // drop the SYN; the ICMP error answers it
			s.link.enqueue(outItem{raw: pkt})
			return
		}
		r.Complete(true)
	case flow.Refused, flow.Prohibited, flow.LimitReached:
		s.cnt.refused.Add(1)
		r.Complete(true)
	default:
		s.cnt.failed.Add(1)
		r.Complete(true)
	}
}

func (s *Stack) debug(msg string, args ...any) {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug(msg, args...)
	}
}

func addrOf(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// tcpConn is the local (application-side) end of a flow: gVisor's net.Conn
// plus SetLinger, so that flow.Splice can reset it (Close with linger 0
// sends a RST).
type tcpConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

// SetLinger sets SO_LINGER on the endpoint: sec < 0 disables it, 0 makes
// Close send a RST.
func (c *tcpConn) SetLinger(sec int) error {
	c.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: sec >= 0, Timeout: time.Duration(max(sec, 0)) * time.Second})
	return nil
}

// synKey identifies a connection by its application-side address (src) and
// the address the application connected to (dst).
type synKey struct{ src, dst netip.AddrPort }

// maxQuote is how much of a SYN the table keeps for quoting in an ICMP
// error: more than the largest IPv4 header plus 8 bytes of TCP that RFC 792
// asks for, and enough of an IPv6 SYN with a few extension headers.
const maxQuote = 256

// synTable remembers the start of recent SYNs, so that an ICMP unreachable
// can quote the SYN it answers (Linux matches an ICMP error to a socket in
// SYN-SENT by the quoted sequence number). Read records every SYN; the
// handler takes its entry when done. Entries of SYNs that never reach a
// handler (forwarder full) are evicted when the table is full.
type synTable struct {
	mu  sync.Mutex
	m   map[synKey][]byte // guarded by mu
	max int
}

func (t *synTable) put(k synKey, pkt []byte) {
	n := min(len(pkt), maxQuote)
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.m[k]
	if !ok && len(t.m) >= t.max {
		for old := range t.m { // evict an arbitrary entry
			delete(t.m, old)
			break
		}
	}
	if cap(b) < n {
		b = make([]byte, n, maxQuote)
	}
	b = b[:n]
	copy(b, pkt)
	t.m[k] = b
}

// take removes and returns k's SYN (nil if none).
func (t *synTable) take(k synKey) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.m[k]
	delete(t.m, k)
	return b
}

func (t *synTable) forget(k synKey) { t.take(k) }

// has reports whether k's SYN is in the table.
func (t *synTable) has(k synKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.m[k]
	return ok
}
