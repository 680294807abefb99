package flow

import (
	"context"
	"fmt"
	"sync/atomic"
)

// Limiter bounds a session's concurrent flows. A flow takes a slot with
// Acquire or TryAcquire before it dials and gives it back with Release when
// it ends. While all slots are taken, Acquire waits: the client's new flow
// (its CONNECT stream) simply stays unanswered, so a client that opens flows
// faster than they finish is slowed down, and the server spends nothing but
// the waiting request. Beyond maxWaiting waiters Acquire fails at once with
// LimitReached, the hard cap. The zero Limiter is not usable; use
// NewLimiter. A Limiter is safe for concurrent use.
type Limiter struct {
	slots      chan struct{}
	maxWaiting int64
	waiting    atomic.Int64
}

// NewLimiter returns a Limiter with maxFlows slots (at least 1) that lets at
// most maxWaiting callers (0: none, Acquire then behaves like TryAcquire)
// wait for a slot at once.
func NewLimiter(maxFlows, maxWaiting int) *Limiter {
	return &Limiter{slots: make(chan struct{}, max(maxFlows, 1)), maxWaiting: int64(max(maxWaiting, 0))}
}

// TryAcquire takes a slot if one is free, without waiting.
func (l *Limiter) TryAcquire() bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// Acquire takes a slot, waiting while none is free. It returns nil with the
// slot taken, or an *Error of Kind LimitReached and no slot taken: at once
// if maxWaiting callers are already waiting, or when ctx is done (Err is
// then context.Cause(ctx)). A caller should bound the wait through ctx.
func (l *Limiter) Acquire(ctx context.Context) error {
	if l.TryAcquire() {
		return nil
	}
	if l.waiting.Add(1) > l.maxWaiting {
		l.waiting.Add(-1)
		return &Error{Kind: LimitReached, Err: fmt.Errorf("%d flows open and %d waiting", cap(l.slots), l.maxWaiting)}
	}
	defer l.waiting.Add(-1)
	select {
	case l.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return &Error{Kind: LimitReached, Err: fmt.Errorf("waiting for one of %d flow slots: %w", cap(l.slots), context.Cause(ctx))}
	}
}

// Release gives back a slot taken by Acquire or TryAcquire. Releasing more
// slots than were taken panics.
func (l *Limiter) Release() {
	select {
	case <-l.slots:
	default:
		panic("flow: Limiter.Release without a matching Acquire")
	}
}

// InUse returns the number of slots taken.
func (l *Limiter) InUse() int { return len(l.slots) }

// Waiting returns the number of callers waiting in Acquire.
func (l *Limiter) Waiting() int { return int(l.waiting.Load()) }

// Max returns the number of slots.
func (l *Limiter) Max() int { return cap(l.slots) }
