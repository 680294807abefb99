package tunnel

import (
	"sync"

	"github.com/roamvpn/roam/datagram"
)

// sendQueueMin is the ring a session's send queue starts with. An idle
// session then costs 8 x 16 B instead of the whole bound (1024 x 16 B by
// default); the ring doubles as a burst needs it, up to the bound.
const sendQueueMin = 8

// sendQueue is a session's queue of packets from the device to its
// client: a bounded FIFO of outPkt that grows on demand. Producers (the
// device reader, many sessions' worth) push without blocking; the
// session's sender pops. The queue owns the buffers of the packets it
// holds until they are popped or drained.
type sendQueue struct {
	mu    sync.Mutex
	ring  []outPkt // guarded by mu; len is a power of two
	head  int      // guarded by mu; index of the oldest packet
	count int      // guarded by mu
	max   int      // bound on count
	// wake holds a token when the queue may have become non-empty since
	// the sender last looked.
	wake chan struct{}
}

func newSendQueue(max int) *sendQueue {
	n := min(sendQueueMin, max)
	return &sendQueue{ring: make([]outPkt, n), max: max, wake: make(chan struct{}, 1)}
}

// push queues op, or returns false when the queue holds its bound; the
// caller then keeps op's buffer.
func (q *sendQueue) push(op outPkt) bool {
	q.mu.Lock()
	if q.count == len(q.ring) {
		if q.count >= q.max {
			q.mu.Unlock()
			return false
		}
		q.grow()
	}
	q.ring[(q.head+q.count)%len(q.ring)] = op
	q.count++
	first := q.count == 1
	q.mu.Unlock()
	if first {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// grow doubles the ring (capped at max), keeping the order. Called with mu
// held and the ring full.
func (q *sendQueue) grow() {
	ring := make([]outPkt, min(2*len(q.ring), q.max))
	n := copy(ring, q.ring[q.head:])
	copy(ring[n:], q.ring[:q.head])
	q.ring, q.head = ring, 0
}

// pop takes the oldest packet; ok is false when the queue is empty.
func (q *sendQueue) pop() (op outPkt, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.count == 0 {
		return outPkt{}, false
	}
	op = q.ring[q.head]
	q.ring[q.head] = outPkt{}
	q.head = (q.head + 1) % len(q.ring)
	q.count--
	return op, true
}

// drain returns the buffers of every queued packet to the pool.
func (q *sendQueue) drain() {
	for {
		op, ok := q.pop()
		if !ok {
			return
		}
		datagram.PutBuf(op.buf)
	}
}
