package tunnel

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// Failed-authentication rate limit: a source (an IPv4 address, an IPv6
// /64) with authLimitFailures failed authentications within one window is
// answered 429 without verifying for the rest of that window.
const (
	authLimitFailures = 10
	authLimitWindow   = 10 * time.Second
	// authLimitSources bounds the table of sources. When it is full,
	// sources not in it are not limited (they are still counted and
	// logged): the limit saves the server work and log lines, and a table
	// that refused every new source would let an attacker with many
	// addresses lock everybody out.
	authLimitSources = 4096
)

// authLimiter counts failed authentications per source in fixed windows.
// A window starts with its first failure; when it ends (one timer per
// window, no goroutine per source) the table is reset and one summary line
// is logged. It is safe for concurrent use.
type authLimiter struct {
	log      *slog.Logger
	limit    int
	window   time.Duration
	capacity int

	mu        sync.Mutex
	fails     map[netip.Addr]int // guarded by mu: failures per source key this window
	rejected  int                // guarded by mu: 401s this window
	limited   int                // guarded by mu: 429s this window
	untracked int                // guarded by mu: failures of sources the full table could not take
	timer     *time.Timer        // guarded by mu: ends the current window; nil between windows
}

func newAuthLimiter(log *slog.Logger) *authLimiter {
	return &authLimiter{log: log, limit: authLimitFailures, window: authLimitWindow, capacity: authLimitSources,
		fails: make(map[netip.Addr]int)}
}

// sourceKey is the rate-limit key of a remote address ("ip:port"): the
// IPv4 address, or the IPv6 /64. ok is false if it does not parse.
func sourceKey(remote string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	a := ap.Addr().Unmap().WithZone("")
	if a.Is6() {
		a = netip.PrefixFrom(a, 64).Masked().Addr()
	}
	return a, true
}

// blocked reports whether remote is over the limit; if so the request is
// counted as rate-limited (and the caller answers 429 without verifying).
func (l *authLimiter) blocked(remote string) bool {
	key, ok := sourceKey(remote)
	if !ok {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fails[key] < l.limit {
		return false
	}
	l.limited++
	l.armLocked()
	return true
}

// failed counts a failed authentication from remote.
func (l *authLimiter) failed(remote string) {
	key, ok := sourceKey(remote)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rejected++
	switch _, tracked := l.fails[key]; {
	case !ok:
		l.untracked++
	case tracked || len(l.fails) < l.capacity:
		l.fails[key]++
	default:
		l.untracked++
	}
	l.armLocked()
}

// armLocked starts a window if none is running. Caller holds l.mu.
func (l *authLimiter) armLocked() {
	if l.timer == nil {
		l.timer = time.AfterFunc(l.window, l.flush)
	}
}

// flush ends the window: one summary line, then a fresh table.
func (l *authLimiter) flush() {
	l.mu.Lock()
	rejected, limited, sources, untracked := l.rejected, l.limited, len(l.fails), l.untracked
	blockedSources := 0
	for _, n := range l.fails {
		if n >= l.limit {
			blockedSources++
		}
	}
	clear(l.fails)
	l.rejected, l.limited, l.untracked = 0, 0, 0
	l.timer = nil
	l.mu.Unlock()
	if rejected == 0 && limited == 0 {
		return
	}
	l.log.Warn(fmt.Sprintf("rejected %d requests from %d sources: bad credentials", rejected, sources),
		"untracked_failures", untracked, "rate_limited", limited, "limited_sources", blockedSources, "window", l.window)
}

// stop ends the current window early, logging its summary (Serve's end).
func (l *authLimiter) stop() {
	l.mu.Lock()
	t := l.timer
	l.mu.Unlock()
	if t != nil && t.Stop() {
		l.flush()
	}
}
