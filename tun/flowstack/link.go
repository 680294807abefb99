package flowstack

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/roamvpn/roam/datagram"
)

// outItem is one packet waiting for the device writer: a gVisor packet
// (one reference held) or a packet the Stack built (an ICMP error).
type outItem struct {
	pkb *stack.PacketBuffer
	raw []byte
}

func (it outItem) release() {
	if it.pkb != nil {
		it.pkb.DecRef()
	}
}

// size returns the packet's length.
func (it outItem) size() int {
	if it.pkb != nil {
		return it.pkb.Size()
	}
	return len(it.raw)
}

// copyTo copies the whole packet to dst, which must be large enough.
func (it outItem) copyTo(dst []byte) int {
	if it.pkb == nil {
		return copy(dst, it.raw)
	}
	views, off := it.pkb.AsViewList()
	n := 0
	for v := views.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// link is the gVisor link endpoint: Stack.Read hands packets read from the
// device to the dispatcher, and the stack's output is queued for the
// device writer goroutine. No link header and no TX offloads: every packet
// the stack writes is a whole IP packet of at most mtu bytes with its
// checksums computed.
//
// The link does not drop packets when the writer falls behind: a gVisor
// goroutine that finds the queue full waits for room (backpressure), up to
// queueWait per WritePackets call (not per packet: the caller may hold a
// TCP endpoint's lock, or be Stack.Read's goroutine). Dropping instead (a lossy link) stalled flows for minutes:
// under load, RTT samples that include the queue and a slow application
// raise gVisor's RTO to tens of seconds, and each retransmission that is
// dropped again doubles it, up to 120 s; a lost tail (the last segments or
// the FIN, which no later data recovers by SACK) then waits for that RTO
// (TestFlowMode/50x1MB). The wait is bounded because the writer can depend
// on the goroutine that waits: gVisor answers some packets (a RST for an
// unknown connection) inline on Stack.Read's goroutine, and a device whose
// Write delivers into a userspace stack that in turn waits for Read to take
// its output (wireguard's netstack, as the tests use) would then deadlock.
// A call whose wait runs out drops the rest of its batch at once (counted),
// and the link stays in drop mode, where every enqueue that finds the queue
// full drops without waiting, until the writer takes a packet again: a
// stuck writer costs each caller at most one wait, and once one wait has
// run out, none at all (Close's aborts, Stack.Read's inline answers).
type link struct {
	mtu       uint32
	q         chan outItem
	queueWait time.Duration
	done      chan struct{} // closed by close: the writer exits
	drops     *atomic.Uint64
	dropping  atomic.Bool // drop mode: a wait ran out and the writer has not taken a packet since

	closed  atomic.Bool                   // set by close: WritePackets refuses
	stopped atomic.Bool                   // set by stopInbound: nothing more is delivered
	disp    atomic.Pointer[dispatcherRef] // nil when detached
}

type dispatcherRef struct{ d stack.NetworkDispatcher }

var _ stack.LinkEndpoint = (*link)(nil)

func newLink(mtu uint32, queueLen int, queueWait time.Duration, drops *atomic.Uint64) *link {
	return &link{mtu: mtu, q: make(chan outItem, queueLen), queueWait: queueWait, done: make(chan struct{}), drops: drops}
}

// dispatcher returns the stack's dispatcher, or nil when packets must not
// be delivered (detached, or the Stack is closing).
func (l *link) dispatcher() stack.NetworkDispatcher {
	if l.stopped.Load() {
		return nil
	}
	if r := l.disp.Load(); r != nil {
		return r.d
	}
	return nil
}

// stopInbound makes dispatcher return nil from now on (Close).
func (l *link) stopInbound() { l.stopped.Store(true) }

// enqueue queues it for the writer: one packet, with its own wait (see
// enqueueWait).
func (l *link) enqueue(it outItem) {
	var w queueDeadline
	defer w.stop()
	l.enqueueWait(it, &w)
}

// queueDeadline is the deadline that the packets of one call to enqueueBatch
// share: its timer starts at the first packet that finds the queue full.
type queueDeadline struct {
	t *time.Timer
}

func (w *queueDeadline) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}

// enqueueWait queues it for the writer. If the queue is full it waits for
// room until w's deadline (started now if this is w's first wait), and if
// none came drops the packet (counted), puts the link in drop mode and
// returns false. In drop mode a packet that finds the queue full is
// dropped (counted) at once; on a closed link every packet is.
func (l *link) enqueueWait(it outItem, w *queueDeadline) bool {
	if l.closed.Load() {
		it.release()
		return true
	}
	select {
	case l.q <- it:
		return true
	default:
	}
	if l.dropping.Load() {
		l.drops.Add(1)
		it.release()
		return false
	}
	if w.t == nil {
		w.t = time.NewTimer(l.queueWait)
	}
	select {
	case l.q <- it:
		return true
	case <-l.done:
		it.release()
		return true
	case <-w.t.C:
		l.dropping.Store(true)
		l.drops.Add(1)
		it.release()
		return false
	}
}

// enqueueBatch queues pkts for the writer (taking a reference to each),
// their waits sharing one deadline of queueWait; once it has run out, the
// rest of the batch is dropped (counted) without waiting.
func (l *link) enqueueBatch(pkts []*stack.PacketBuffer) {
	var w queueDeadline
	defer w.stop()
	for i, pkb := range pkts {
		if !l.enqueueWait(outItem{pkb: pkb.IncRef()}, &w) {
			if rest := len(pkts) - i - 1; rest > 0 {
				l.drops.Add(uint64(rest))
			}
			return
		}
	}
}

// progress ends drop mode: the writer took a packet off the queue.
func (l *link) progress() {
	if l.dropping.Load() {
		l.dropping.Store(false)
	}
}

// close stops the writer and drops what is queued; it is idempotent.
func (l *link) close() {
	if l.closed.Swap(true) {
		return
	}
	close(l.done)
}

// drain releases the queued packets (called by the exiting writer).
func (l *link) drain() {
	for {
		select {
		case it := <-l.q:
			it.release()
		default:
			return
		}
	}
}

// WritePackets implements stack.LinkWriter: it queues a reference to each
// packet, waiting while the queue is full, at most queueWait for the whole
// call (see link). Packets it drops count as written (a lossy link).
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if l.closed.Load() {
		return 0, &tcpip.ErrClosedForSend{}
	}
	all := pkts.AsSlice()
	l.enqueueBatch(all)
	return len(all), nil
}

// MTU implements stack.NetworkLinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu }

// SetMTU implements stack.NetworkLinkEndpoint; the MTU is fixed.
func (l *link) SetMTU(uint32) {}

// MaxHeaderLength implements stack.NetworkLinkEndpoint: no link header.
func (l *link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint: no link address.
func (l *link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint (no-op).
func (l *link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint: no neighbour
// resolution, and gVisor computes the checksums of what it sends. It claims
// RX checksum offload, which gVisor's GRO needs (see Stack.divert).
func (l *link) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityRXChecksumOffload
}

// Attach implements stack.NetworkLinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		l.disp.Store(nil)
		return
	}
	l.disp.Store(&dispatcherRef{d})
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (l *link) IsAttached() bool { return l.disp.Load() != nil }

// Wait implements stack.NetworkLinkEndpoint; the writer goroutine belongs
// to the Stack, which waits for it.
func (l *link) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint (no link header).
func (l *link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint (no link header).
func (l *link) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint (NIC removal); the Stack
// stops the writer itself.
func (l *link) Close() {}

// SetOnCloseAction implements stack.NetworkLinkEndpoint (unused).
func (l *link) SetOnCloseAction(func()) {}

// deviceWriter is the goroutine that writes gVisor's packets to the
// device: it waits for one, takes whatever else is queued up to
// BatchSize, copies them at offset datagram.Headroom into large buffers
// (so a Linux TUN can coalesce them) and writes them with one Dev.Write,
// under devMu.
func (s *Stack) deviceWriter() {
	defer s.writerWG.Done()
	s.log.Debug("device writer started")
	defer s.log.Debug("device writer stopped")
	l := s.link
	defer l.drain()

	batch := max(s.dev.BatchSize(), 1)
	arrs := make([]*[datagram.LargeBufSize]byte, batch)
	for i := range arrs {
		arrs[i] = datagram.GetLargeBuf()
	}
	defer func() {
		for _, a := range arrs {
			datagram.PutLargeBuf(a)
		}
	}()
	bufs := make([][]byte, batch)
	for {
		var it outItem
		select {
		case <-l.done:
			return
		case it = <-l.q:
		}
		l.progress()
		n := 0
		for {
			if it.size() <= datagram.LargeBufSize-datagram.Headroom {
				a := arrs[n]
				clear(a[:datagram.Headroom])
				k := it.copyTo(a[datagram.Headroom:])
				bufs[n] = a[:datagram.Headroom+k]
				n++
			}
			it.release()
			if n == batch {
				break
			}
			var more bool
			select {
			case it, more = <-l.q:
			default:
			}
			if !more {
				break
			}
		}
		if n == 0 {
			continue
		}
		s.devMu.Lock()
		_, err := s.dev.Write(bufs[:n], datagram.Headroom)
		s.devMu.Unlock()
		clear(bufs[:n])
		s.cnt.out.Add(uint64(n))
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
				l.close() // nothing waits for room that will not come
				return
			}
			s.cnt.writeErr.Add(1)
		}
	}
}
