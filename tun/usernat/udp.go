package usernat

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleUDP is the UDP forwarder's callback for a datagram that matches no
// flow yet. gVisor calls it synchronously on the delivering goroutine (inside
// Write), so it only creates the stack endpoint and leaves the dial to the
// flow's goroutine; datagrams arriving meanwhile wait in the endpoint.
func (s *Stack) handleUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	f := &udpFlow{s: s, client: addrOf(id.RemoteAddress), done: make(chan struct{})}
	if !s.enterFlow(f) {
		return
	}
	if !s.reserve() {
		s.leaveFlow(f)
		return
	}
	ep, terr := r.CreateEndpoint(&f.wq)
	if terr != nil {
		s.cnt.udpDrp.Add(1)
		s.release()
		s.leaveFlow(f)
		return
	}
	f.touch()
	f.mu.Lock()
	f.ep = ep
	aborted := f.aborted
	f.mu.Unlock()
	if aborted {
		ep.Close()
		s.release()
		s.leaveFlow(f)
		return
	}
	go f.run(addrOf(id.LocalAddress), id.LocalPort)
}

// udpFlow is one (client address:port, destination address:port) pair with
// its connected host socket.
type udpFlow struct {
	s      *Stack
	client netip.Addr
	wq     waiter.Queue
	last   atomic.Int64  // monotonic ns since s.epoch of the last datagram either way
	done   chan struct{} // closed by abort

	mu      sync.Mutex
	ep      tcpip.Endpoint // guarded by mu
	hc      net.Conn       // guarded by mu
	aborted bool           // guarded by mu

	// Used only by the goroutine of each direction; fields so that no
	// per-datagram allocation is needed.
	w  tcpip.SliceWriter
	rd bytes.Reader
}

func (f *udpFlow) clientAddr() netip.Addr { return f.client }

func (f *udpFlow) touch() { f.last.Store(int64(time.Since(f.s.epoch))) }

// abort closes both sides; the copy loops then end.
func (f *udpFlow) abort() {
	f.mu.Lock()
	if f.aborted {
		f.mu.Unlock()
		return
	}
	f.aborted = true
	ep, hc := f.ep, f.hc
	f.mu.Unlock()
	close(f.done)
	if ep != nil {
		ep.Close()
	}
	if hc != nil {
		hc.Close()
	}
}

// run dials the host socket and copies datagrams both ways until the flow is
// idle or aborted.
func (f *udpFlow) run(dst netip.Addr, port uint16) {
	s := f.s
	defer s.leaveFlow(f)
	defer s.release()
	defer f.abort()

	network, address := s.target("udp", dst, port)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	hc, err := s.dial(ctx, network, address)
	cancel()
	if err != nil {
		s.cnt.dialFail.Add(1)
		if s.log.Enabled(context.Background(), slog.LevelDebug) {
			s.log.Debug("UDP dial failed", "client", f.client, "dst", address, "err", err)
		}
		return
	}
	f.mu.Lock()
	aborted := f.aborted
	if !aborted {
		f.hc = hc
	}
	f.mu.Unlock()
	if aborted {
		hc.Close()
		return
	}
	s.cnt.udpOpened.Add(1)
	s.cnt.udpActive.Add(1)
	defer s.cnt.udpActive.Add(-1)

	hostDone := make(chan struct{})
	s.wg.Add(1) // this goroutine is counted, so the counter is > 0
	go func() {
		defer s.wg.Done()
		defer close(hostDone)
		f.hostToClient(hc)
	}()
	f.clientToHost(hc)
	f.abort()
	<-hostDone
}

// clientToHost sends the client's datagrams on the host socket. It borrows a
// pooled buffer only while a datagram is ready.
func (f *udpFlow) clientToHost(hc net.Conn) {
	entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	f.wq.EventRegister(&entry)
	defer f.wq.EventUnregister(&entry)
	for {
		bp := bigPool.Get().(*[]byte)
		f.w = tcpip.SliceWriter(*bp)
		res, terr := f.ep.Read(&f.w, tcpip.ReadOptions{})
		switch terr.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			bigPool.Put(bp)
			select {
			case <-ready:
				continue
			case <-f.done:
				return
			}
		default: // closed
			bigPool.Put(bp)
			return
		}
		f.touch()
		if res.Total > res.Count {
			f.s.cnt.udpDrp.Add(1) // cannot happen with 64 KiB buffers
			bigPool.Put(bp)
			continue
		}
		_, err := hc.Write((*bp)[:res.Count])
		bigPool.Put(bp)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED from an earlier port unreachable, ENOBUFS, ...
			f.s.cnt.udpDrp.Add(1)
		}
	}
}

// hostToClient passes datagrams from the host socket to the client and ends
// the flow after UDPIdleTimeout without traffic either way.
func (f *udpFlow) hostToClient(hc net.Conn) {
	idle := f.s.cfg.UDPIdleTimeout
	arm := func() { hc.SetReadDeadline(f.s.epoch.Add(time.Duration(f.last.Load()) + idle)) }
	arm()
	r := newPacketReader(hc)
	for {
		bp, n, err := r.readPacket()
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				if time.Since(f.s.epoch)-time.Duration(f.last.Load()) >= idle {
					f.abort()
					return
				}
				arm()
				continue
			case errors.Is(err, syscall.ECONNREFUSED):
				continue // an ICMP port unreachable for an earlier datagram
			default: // closed, or a socket error: end the flow
				f.abort()
				return
			}
		}
		f.touch()
		f.rd.Reset((*bp)[:n])
		_, terr := f.ep.Write(&f.rd, tcpip.WriteOptions{})
		bigPool.Put(bp)
		switch terr.(type) {
		case nil:
		case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive, *tcpip.ErrInvalidEndpointState:
			f.abort()
			return
		default: // send buffer full, too large, no route: drop the datagram
			f.s.cnt.udpDrp.Add(1)
		}
	}
}

// packetReader reads one datagram at a time into a buffer from bigPool; the
// caller puts the buffer back.
type packetReader interface {
	readPacket() (bp *[]byte, n int, err error)
}

// plainPacketReader holds a pooled buffer across the blocking Read. It is
// used where the socket cannot be polled (non-Unix systems, or a Config.Dial
// that returns something other than an OS socket).
type plainPacketReader struct{ c net.Conn }

func (r plainPacketReader) readPacket() (*[]byte, int, error) {
	bp := bigPool.Get().(*[]byte)
	n, err := r.c.Read(*bp)
	if err != nil {
		bigPool.Put(bp)
		return nil, 0, err
	}
	return bp, n, nil
}
