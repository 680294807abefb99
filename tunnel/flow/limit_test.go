package flow

import (
	"context"
	"errors"
	"runtime"
	"testing"
)

func TestLimiter(t *testing.T) {
	l := NewLimiter(2, 1)
	if !l.TryAcquire() || !l.TryAcquire() {
		t.Fatal("TryAcquire failed below the limit")
	}
	if l.TryAcquire() {
		t.Fatal("TryAcquire succeeded at the limit")
	}
	if l.InUse() != 2 || l.Max() != 2 {
		t.Fatalf("InUse %d Max %d, want 2 2", l.InUse(), l.Max())
	}

	// One waiter is allowed; it gets the slot a Release frees.
	got := make(chan error, 1)
	go func() { got <- l.Acquire(context.Background()) }()
	for l.Waiting() != 1 {
		select {
		case err := <-got:
			t.Fatalf("Acquire returned %v while full", err)
		default:
		}
		// Spin until the goroutine is waiting (no sleeps: no timing).
		runtime.Gosched()
	}
	// A second waiter is over the hard cap and fails at once.
	err := l.Acquire(context.Background())
	var fe *Error
	if !errors.As(err, &fe) || fe.Kind != LimitReached {
		t.Fatalf("Acquire over the waiter cap = %v, want LimitReached", err)
	}
	l.Release()
	if err := <-got; err != nil {
		t.Fatalf("waiting Acquire = %v, want nil after Release", err)
	}
	if l.InUse() != 2 || l.Waiting() != 0 {
		t.Fatalf("InUse %d Waiting %d, want 2 0", l.InUse(), l.Waiting())
	}

	// A waiter whose ctx ends gives up with LimitReached and the cause.
	cause := errors.New("client went away")
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() { got <- l.Acquire(ctx) }()
	for l.Waiting() != 1 {
		runtime.Gosched()
	}
	cancel(cause)
	err = <-got
	if !errors.As(err, &fe) || fe.Kind != LimitReached || !errors.Is(err, cause) {
		t.Fatalf("cancelled Acquire = %v, want LimitReached wrapping the cause", err)
	}
	l.Release()
	l.Release()
	if l.InUse() != 0 {
		t.Fatalf("InUse %d after releasing all", l.InUse())
	}
	defer func() {
		if recover() == nil {
			t.Error("Release without Acquire did not panic")
		}
	}()
	l.Release()
}

func TestLimiterNoWaiting(t *testing.T) {
	l := NewLimiter(0, 0) // becomes 1 slot, no waiters
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Acquire(context.Background()); Classify(err) != LimitReached {
		t.Fatalf("Acquire with no waiting allowed = %v, want LimitReached", err)
	}
}
