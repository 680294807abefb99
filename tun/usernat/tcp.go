package usernat

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Copy buffers. Every flow direction owns a small buffer; while data keeps
// coming it borrows a large one from bigPool and gives it back when reads get
// small again, so idle flows hold only the small ones.
const (
	smallBufSize = 2 << 10
	bigBufSize   = 64 << 10
)

var bigPool = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}

// handleTCP is the TCP forwarder's callback for one SYN. gVisor already runs
// it on a goroutine of its own (tcp.Forwarder.HandlePacket does `go
// handler(...)`), so dialing here does not block the stack; while it runs,
// retransmitted SYNs of the same connection are ignored.
func (s *Stack) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	f := &tcpFlow{s: s, client: addrOf(id.RemoteAddress)}
	if !s.enterFlow(f) {
		r.Complete(true)
		return
	}
	defer s.leaveFlow(f)
	if !s.reserve() {
		r.Complete(true)
		return
	}
	defer s.release()

	network, address := s.target("tcp", addrOf(id.LocalAddress), id.LocalPort)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	hc, err := s.dial(ctx, network, address)
	cancel()
	if err != nil {
		s.cnt.dialFail.Add(1)
		if s.log.Enabled(context.Background(), slog.LevelDebug) {
			s.log.Debug("TCP dial failed; resetting client", "client", f.client, "dst", address, "err", err)
		}
		r.Complete(true) // RST, whatever the reason (refused, timeout, unreachable)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	r.Complete(false)
	if terr != nil {
		// The client went away (or sent a RST) during the dial.
		hc.Close()
		return
	}
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(tcpKeepaliveIdle)
	intvl := tcpip.KeepaliveIntervalOption(tcpKeepaliveInterval)
	_ = ep.SetSockOpt(&idle)
	_ = ep.SetSockOpt(&intvl)
	_ = ep.SetSockOptInt(tcpip.KeepaliveCountOption, tcpKeepaliveCount)

	f.set(ep, gonet.NewTCPConn(&wq, ep), hc)
	s.cnt.tcpOpened.Add(1)
	s.cnt.tcpActive.Add(1)
	defer s.cnt.tcpActive.Add(-1)
	f.run()
}

// tcpFlow is one client TCP connection spliced to a host TCP connection.
type tcpFlow struct {
	s      *Stack
	client netip.Addr

	mu      sync.Mutex
	ep      tcpip.Endpoint // guarded by mu until set; then read-only
	gc      *gonet.TCPConn // client side
	hc      net.Conn       // host side
	aborted bool           // guarded by mu

	small [2][smallBufSize]byte
}

func (f *tcpFlow) clientAddr() netip.Addr { return f.client }

func (f *tcpFlow) set(ep tcpip.Endpoint, gc *gonet.TCPConn, hc net.Conn) {
	f.mu.Lock()
	f.ep, f.gc, f.hc = ep, gc, hc
	aborted := f.aborted
	f.mu.Unlock()
	if aborted {
		f.abort()
	}
}

// abort resets both connections: the client gets a RST from the stack, the
// host peer a RST from the kernel (linger 0).
func (f *tcpFlow) abort() {
	f.mu.Lock()
	f.aborted = true
	ep, hc := f.ep, f.hc
	f.mu.Unlock()
	if ep == nil {
		return // still dialing; set will abort, and Close cancels the dial
	}
	ep.Abort()
	if tc, ok := hc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	hc.Close()
}

// run copies both ways until both directions are finished, then closes both
// connections.
func (f *tcpFlow) run() {
	done := make(chan struct{})
	f.s.wg.Add(1) // this goroutine is counted, so the counter is > 0
	go func() {
		defer f.s.wg.Done()
		defer close(done)
		f.hostToClient()
	}()
	f.clientToHost()
	<-done
	f.gc.Close()
	f.hc.Close()
}

// clientToHost copies client bytes to the host connection; the client's FIN
// becomes CloseWrite on the host connection.
func (f *tcpFlow) clientToHost() {
	rerr, werr := pump(f.hc, f.gc, f.small[0][:])
	switch {
	case werr != nil: // host peer gone
		f.abort()
	case errors.Is(rerr, io.EOF):
		if cw, ok := f.hc.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() != nil {
				f.abort()
			}
		}
	default: // client reset, or the flow was aborted
		f.abort()
	}
}

// hostToClient copies host bytes to the client; the host's FIN becomes a FIN
// to the client.
func (f *tcpFlow) hostToClient() {
	rerr, werr := pump(f.gc, f.hc, f.small[1][:])
	switch {
	case werr != nil: // client gone
		f.abort()
	case errors.Is(rerr, io.EOF):
		if f.gc.CloseWrite() != nil {
			f.abort()
		}
	default: // host reset, or the flow was aborted
		f.abort()
	}
}

// pump copies src to dst until src reports an error (io.EOF for a clean end)
// or a write fails. It starts with the small buffer and switches to a pooled
// large one while reads fill the buffer, and back when they get small again.
func pump(dst io.Writer, src io.Reader, small []byte) (readErr, writeErr error) {
	buf := small
	var big *[]byte
	defer func() {
		if big != nil {
			bigPool.Put(big)
		}
	}()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return nil, werr
			}
		}
		if err != nil {
			return err, nil
		}
		switch {
		case big == nil && n == len(buf):
			big = bigPool.Get().(*[]byte)
			buf = *big
		case big != nil && n <= len(small):
			bigPool.Put(big)
			big = nil
			buf = small
		}
	}
}
