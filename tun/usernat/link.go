package usernat

import (
	"os"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// outQueueLen is the number of packets that may wait between the stack and
// Stack.Read. When it is full, further packets are dropped and counted, like a
// full TUN transmit queue; TCP treats that as loss and slows down.
const outQueueLen = 1024

// outItem is one packet waiting for Stack.Read: either a gVisor packet buffer
// (holding one reference) or an already built packet (ICMP echo replies).
type outItem struct {
	pkt *stack.PacketBuffer
	raw []byte
}

// link is the gVisor link endpoint behind the Stack: packets written by the
// stack are queued for Stack.Read; packets from Stack.Write are delivered to
// the attached dispatcher. It has no link-layer header and no offloads, so
// every outbound packet is a complete IP packet of at most mtu bytes with
// correct checksums.
type link struct {
	mtu uint32

	q      chan outItem
	done   chan struct{} // closed by close
	closed atomic.Bool

	drops *atomic.Uint64 // outbound packets dropped because q was full

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher // guarded by mu
}

var _ stack.LinkEndpoint = (*link)(nil)

func newLink(mtu int, drops *atomic.Uint64) *link {
	return &link{
		mtu:   uint32(mtu),
		q:     make(chan outItem, outQueueLen),
		done:  make(chan struct{}),
		drops: drops,
	}
}

// enqueue queues an item for Read without blocking. It reports false (and
// releases the packet) when the queue is full or the link is closed.
func (l *link) enqueue(it outItem) bool {
	if l.closed.Load() {
		it.release()
		return false
	}
	select {
	case l.q <- it:
		return true
	default:
		l.drops.Add(1)
		it.release()
		return false
	}
}

func (it outItem) release() {
	if it.pkt != nil {
		it.pkt.DecRef()
	}
}

// deliver hands one inbound IP packet to the stack. The packet is copied;
// data is not retained.
func (l *link) deliver(proto tcpip.NetworkProtocolNumber, data []byte) {
	l.mu.RLock()
	d := l.dispatcher
	l.mu.RUnlock()
	if d == nil {
		return
	}
	pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(data)})
	d.DeliverNetworkPacket(proto, pkb)
	pkb.DecRef()
}

// read blocks until at least one packet is queued (or the link is closed) and
// then moves up to len(bufs) packets into bufs[i][offset:], without
// allocating. Packets that do not fit their buffer are dropped and counted in
// tooSmall.
func (l *link) read(bufs [][]byte, sizes []int, offset int, tooSmall *atomic.Uint64) (int, error) {
	for {
		var it outItem
		select {
		case <-l.done:
			return 0, os.ErrClosed
		case it = <-l.q:
		}
		n := 0
		for {
			if sz, ok := it.copyTo(bufs[n][offset:]); ok {
				sizes[n] = sz
				n++
			} else {
				tooSmall.Add(1)
			}
			it.release()
			if n == len(bufs) {
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
		if n > 0 {
			return n, nil
		}
	}
}

// copyTo copies the whole packet into dst, reporting false if it does not fit.
func (it outItem) copyTo(dst []byte) (int, bool) {
	if it.raw != nil {
		if len(it.raw) > len(dst) {
			return 0, false
		}
		return copy(dst, it.raw), true
	}
	if it.pkt.Size() > len(dst) {
		return 0, false
	}
	views, off := it.pkt.AsViewList()
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
	return n, true
}

// close makes read return os.ErrClosed and drops whatever is still queued.
func (l *link) close() {
	if l.closed.Swap(true) {
		return
	}
	close(l.done)
	for {
		select {
		case it := <-l.q:
			it.release()
		default:
			return
		}
	}
}

// WritePackets implements stack.LinkWriter: it queues clones of the packets
// for Read. Packets that do not fit the queue are dropped and counted, as a
// lossy link would; the stack is told they were sent (TCP recovers them).
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if l.closed.Load() {
		return 0, &tcpip.ErrClosedForSend{}
	}
	all := pkts.AsSlice()
	for _, pkt := range all {
		l.enqueue(outItem{pkt: pkt.Clone()})
	}
	return len(all), nil
}

// MTU implements stack.NetworkLinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu }

// SetMTU implements stack.NetworkLinkEndpoint; the MTU is fixed, so it is a no-op.
func (l *link) SetMTU(uint32) {}

// MaxHeaderLength implements stack.NetworkLinkEndpoint: there is no link header.
func (l *link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint: there is no link address.
func (l *link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint (no-op).
func (l *link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint: no offloads, no neighbour
// resolution; the stack computes and verifies every checksum.
func (l *link) Capabilities() stack.LinkEndpointCapabilities { return 0 }

// Attach implements stack.NetworkLinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.dispatcher = d
	l.mu.Unlock()
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (l *link) IsAttached() bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.dispatcher != nil
}

// Wait implements stack.NetworkLinkEndpoint: the link owns no goroutines.
func (l *link) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint (no link header).
func (l *link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint (no link header).
func (l *link) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.NetworkLinkEndpoint; called when the NIC is removed.
func (l *link) Close() { l.close() }

// SetOnCloseAction implements stack.NetworkLinkEndpoint (unused).
func (l *link) SetOnCloseAction(func()) {}
