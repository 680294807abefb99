package datagram

import (
	"sync/atomic"
	"time"
)

// errLogInterval is the minimum time between two logged hot-path errors of
// one kind; the counters in Stats record every occurrence.
const errLogInterval = 10 * time.Second

// rateLimit allows one event per errLogInterval. The zero value allows the
// first event. It is only consulted on error paths, never per packet.
type rateLimit struct {
	next atomic.Int64 // unix nanoseconds before which allow returns false
}

func (r *rateLimit) allow() bool {
	now := time.Now().UnixNano()
	next := r.next.Load()
	return now >= next && r.next.CompareAndSwap(next, now+int64(errLogInterval))
}
