package addrpool

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustNew(t testing.TB, prefix string) *Pool {
	t.Helper()
	p, err := New(netip.MustParsePrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNew(t *testing.T) {
	tests := []struct {
		prefix  netip.Prefix
		wantErr string // substring; empty = success
		gateway string
	}{
		{netip.MustParsePrefix("100.96.0.0/16"), "", "100.96.0.1"},
		{netip.MustParsePrefix("fd00:96::/64"), "", "fd00:96::1"},
		{netip.MustParsePrefix("10.0.0.0/30"), "", "10.0.0.1"},
		{netip.MustParsePrefix("fd00::/126"), "", "fd00::1"},
		{netip.MustParsePrefix("fd00::/48"), "", "fd00::1"},
		{netip.MustParsePrefix("0.0.0.0/0"), "", "0.0.0.1"},
		{netip.MustParsePrefix("::/0"), "", "::1"},
		{netip.Prefix{}, "invalid prefix", ""},
		{netip.PrefixFrom(ip("10.0.0.0"), 33), "invalid prefix", ""},
		{netip.MustParsePrefix("100.96.0.5/16"), "host bits set: want 100.96.0.0/16", ""},
		{netip.MustParsePrefix("fd00::1/64"), "host bits set: want fd00::/64", ""},
		{netip.MustParsePrefix("10.0.0.0/31"), "no address for a client: want /30 or shorter", ""},
		{netip.MustParsePrefix("10.0.0.0/32"), "want /30 or shorter", ""},
		{netip.MustParsePrefix("fd00::/127"), "want /126 or shorter", ""},
		{netip.MustParsePrefix("fd00::/128"), "want /126 or shorter", ""},
		{netip.MustParsePrefix("::ffff:10.0.0.0/120"), "IPv4-mapped", ""},
	}
	for _, tt := range tests {
		t.Run(tt.prefix.String(), func(t *testing.T) {
			p, err := New(tt.prefix)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "addrpool:") {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Prefix() != tt.prefix || p.Gateway() != ip(tt.gateway) || p.Leased() != 0 {
				t.Fatalf("Prefix %v Gateway %v Leased %d", p.Prefix(), p.Gateway(), p.Leased())
			}
		})
	}
}

func TestAllocateAll(t *testing.T) {
	tests := []struct {
		prefix string
		want   []string
	}{
		{"192.0.2.0/29", []string{"192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6"}},
		{"192.0.2.8/30", []string{"192.0.2.10"}},
		{"2001:db8::/125", []string{"2001:db8::2", "2001:db8::3", "2001:db8::4", "2001:db8::5", "2001:db8::6", "2001:db8::7"}},
		{"2001:db8::/126", []string{"2001:db8::2", "2001:db8::3"}},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			p := mustNew(t, tt.prefix)
			var got []string
			for i := range len(tt.want) {
				a, err := p.Allocate(fmt.Sprint("owner", i))
				if err != nil {
					t.Fatalf("Allocate %d: %v", i, err)
				}
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			if _, err := p.Allocate("one more"); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), tt.prefix) {
				t.Fatalf("err = %v, want ErrExhausted naming the prefix", err)
			}
			if p.Leased() != len(tt.want) {
				t.Fatalf("Leased = %d", p.Leased())
			}
			// freeing one makes exactly that one available
			p.Release(ip(tt.want[0]), "owner0")
			if a, err := p.Allocate("late"); err != nil || a != ip(tt.want[0]) {
				t.Fatalf("after release: %v, %v", a, err)
			}
		})
	}
}

// Allocation rotates: a released address is not reused by another owner
// while fresh ones remain.
func TestAllocateRotates(t *testing.T) {
	p := mustNew(t, "10.0.0.0/24")
	a, _ := p.Allocate("a")
	p.Release(a, "a")
	b, _ := p.Allocate("b")
	if b == a {
		t.Fatalf("reused %v at once", a)
	}
	// wraps around past the broadcast address
	p.mu.Lock()
	p.cursor = 254
	p.mu.Unlock()
	c, _ := p.Allocate("c")
	d, _ := p.Allocate("d")
	if c != ip("10.0.0.254") || d != a {
		t.Fatalf("wrap: got %v then %v, want 10.0.0.254 then %v", c, d, a)
	}
}

// Large IPv6 pools use a map and a cursor instead of a bitmap.
func TestAllocateLargeIPv6(t *testing.T) {
	p := mustNew(t, "fd00:96::/64")
	if p.used != nil {
		t.Fatal("bitmap for a /64")
	}
	seen := map[netip.Addr]bool{}
	for i := range 1000 {
		a, err := p.Allocate(fmt.Sprint(i))
		if err != nil || seen[a] || !p.Prefix().Contains(a) || a == p.Gateway() || a == p.Prefix().Addr() {
			t.Fatalf("Allocate: %v %v", a, err)
		}
		seen[a] = true
	}
	// wrap at the end of the space skips leased and reserved addresses
	if _, err := p.Request(ip("fd00:96::2"), "x"); err == nil {
		t.Fatal("requested a leased address")
	}
	p.mu.Lock()
	p.cursor = p.last
	p.mu.Unlock()
	a1, _ := p.Allocate("w1")
	a2, _ := p.Allocate("w2")
	// ::2..::3e9 are leased, so after the wrap comes ::3ea
	if a1 != ip("fd00:96::ffff:ffff:ffff:ffff") || a2 != ip("fd00:96::3ea") {
		t.Fatalf("wrap: %v %v", a1, a2)
	}

	// a /48 allocates from its first /64 but accepts requests anywhere
	q := mustNew(t, "fd00:1::/48")
	if a, _ := q.Allocate("o"); a != ip("fd00:1::2") {
		t.Fatalf("got %v", a)
	}
	if _, err := q.Request(ip("fd00:1:0:ffff::5"), "o"); err != nil || q.Leased() != 2 {
		t.Fatalf("Request: %v", err)
	}
	q.Release(ip("fd00:1:0:ffff::5"), "o")
	if q.Leased() != 1 || q.inSpace != 1 {
		t.Fatalf("Leased %d inSpace %d", q.Leased(), q.inSpace)
	}
}

func TestAllocateConcurrent(t *testing.T) {
	p := mustNew(t, "10.9.0.0/24")
	var mu sync.Mutex
	var all []netip.Addr
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			var mine []netip.Addr
			for i := 0; ; i++ {
				a, err := p.Allocate(fmt.Sprintf("g%d-%d", g, i))
				if errors.Is(err, ErrExhausted) {
					break
				}
				if err != nil {
					t.Error(err)
					return
				}
				mine = append(mine, a)
				if i%3 == 0 { // some churn
					p.Release(a, fmt.Sprintf("g%d-%d", g, i))
					mine = mine[:len(mine)-1]
				}
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.SortFunc(all, netip.Addr.Compare)
	if len(all) != 253 || len(slices.Compact(slices.Clone(all))) != 253 {
		t.Fatalf("%d addresses leased, %d distinct; want 253", len(all), len(slices.Compact(all)))
	}
	if p.Leased() != 253 {
		t.Fatalf("Leased = %d", p.Leased())
	}
}

func TestRequest(t *testing.T) {
	p := mustNew(t, "100.96.0.0/24")
	if _, err := p.Request(ip("100.96.0.10"), "alice"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		addr     netip.Addr
		owner    string
		takeover bool
		err      error
	}{
		{"outside", ip("100.96.1.10"), "bob", false, ErrOutside},
		{"other family", ip("fd00::a"), "bob", false, ErrOutside},
		{"IPv4-mapped", ip("::ffff:100.96.0.20"), "bob", false, ErrOutside},
		{"invalid", netip.Addr{}, "bob", false, ErrOutside},
		{"network", ip("100.96.0.0"), "bob", false, ErrReserved},
		{"gateway", ip("100.96.0.1"), "bob", false, ErrReserved},
		{"broadcast", ip("100.96.0.255"), "bob", false, ErrReserved},
		{"held by another", ip("100.96.0.10"), "bob", false, ErrInUse},
		{"held by same owner", ip("100.96.0.10"), "alice", true, nil},
		{"free", ip("100.96.0.11"), "bob", false, nil},
		{"last host", ip("100.96.0.254"), "bob", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			takeover, err := p.Request(tt.addr, tt.owner)
			if !errors.Is(err, tt.err) || takeover != tt.takeover {
				t.Fatalf("Request = %v, %v; want %v, %v", takeover, err, tt.takeover, tt.err)
			}
			if err != nil && !strings.Contains(err.Error(), tt.addr.String()) {
				t.Fatalf("error %q does not name the address", err)
			}
		})
	}
	if p.Leased() != 3 {
		t.Fatalf("Leased = %d", p.Leased())
	}
	// Allocate never hands out a requested address
	for {
		a, err := p.Allocate("carol")
		if err != nil {
			break
		}
		if a == ip("100.96.0.10") || a == ip("100.96.0.11") || a == ip("100.96.0.254") {
			t.Fatalf("Allocate returned requested %v", a)
		}
	}

	// IPv6: no broadcast address
	q := mustNew(t, "fd00::/120")
	if _, err := q.Request(ip("fd00::ff"), "o"); err != nil {
		t.Fatalf("IPv6 last address: %v", err)
	}
	if _, err := q.Request(ip("fd00::1"), "o"); !errors.Is(err, ErrReserved) || !strings.Contains(err.Error(), "gateway") {
		t.Fatalf("gateway: %v", err)
	}
}

func TestOwnerPreference(t *testing.T) {
	p := mustNew(t, "10.0.0.0/24")
	a, _ := p.Allocate("alice")
	b, _ := p.Allocate("bob")
	p.Release(a, "alice")
	p.Release(b, "bob")
	for range 5 {
		p.Allocate("someone else") // moves the cursor on
	}
	if got, _ := p.Allocate("bob"); got != b {
		t.Fatalf("bob got %v, want %v", got, b)
	}
	if got, _ := p.Allocate("alice"); got != a {
		t.Fatalf("alice got %v, want %v", got, a)
	}

	// the remembered address was taken: a fresh one
	p.Release(a, "alice")
	if _, err := p.Request(a, "mallory"); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.Allocate("alice"); got == a {
		t.Fatalf("alice got mallory's %v", got)
	}

	// memory is bounded
	q := mustNew(t, "10.1.0.0/16")
	for i := range RememberOwners + 10 {
		o := fmt.Sprint(i)
		a, _ := q.Allocate(o)
		q.Release(a, o)
	}
	if len(q.recent) != RememberOwners || q.lru.Len() != RememberOwners {
		t.Fatalf("remembers %d owners", len(q.recent))
	}
	if _, ok := q.recent["0"]; ok {
		t.Fatal("oldest owner not forgotten")
	}
}

func TestRelease(t *testing.T) {
	p := mustNew(t, "10.0.0.0/24")
	a, _ := p.Allocate("alice")
	p.Release(a, "bob")               // wrong owner
	p.Release(ip("10.0.0.99"), "bob") // not leased
	p.Release(ip("10.0.0.1"), "bob")  // gateway
	p.Release(ip("192.0.2.1"), "bob") // outside
	p.Release(netip.Addr{}, "bob")
	if p.Leased() != 1 {
		t.Fatalf("Leased = %d", p.Leased())
	}
	if _, err := p.Request(a, "bob"); !errors.Is(err, ErrInUse) {
		t.Fatalf("Request after wrong-owner release: %v", err)
	}
	p.Release(a, "alice")
	p.Release(a, "alice") // twice is harmless
	if p.Leased() != 0 {
		t.Fatalf("Leased = %d", p.Leased())
	}
	if _, err := p.Request(a, "bob"); err != nil {
		t.Fatal(err)
	}
}

func TestReleaseAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, "10.0.0.0/24")
		a, _ := p.Allocate("alice")
		p.ReleaseAfter(a, "mallory", time.Second, nil) // wrong owner: no-op
		expired := 0
		p.ReleaseAfter(a, "alice", 30*time.Second, func() { expired++ })
		time.Sleep(29 * time.Second)
		if _, err := p.Request(a, "bob"); !errors.Is(err, ErrInUse) {
			t.Fatalf("during grace: %v", err)
		}
		if p.Leased() != 1 {
			t.Fatalf("Leased = %d", p.Leased())
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if p.Leased() != 0 || expired != 1 {
			t.Fatalf("not released after grace: Leased = %d, expired called %d times", p.Leased(), expired)
		}
		// remembered after the grace release
		if got, _ := p.Allocate("alice"); got != a {
			t.Fatalf("alice got %v, want %v", got, a)
		}

		// Allocate by the owner during grace reclaims the lease for good
		p.ReleaseAfter(a, "alice", 10*time.Second, func() { t.Error("expired called for a reclaimed lease") })
		b, _ := p.Allocate("bob")
		if got, _ := p.Allocate("alice"); got != a {
			t.Fatalf("reclaim got %v, want %v", got, a)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if p.Leased() != 2 {
			t.Fatalf("reclaimed lease released by the old timer: Leased = %d", p.Leased())
		}

		// Request by the owner during grace: no live session to take over
		p.ReleaseAfter(b, "bob", 10*time.Second, nil)
		if takeover, err := p.Request(b, "bob"); err != nil || takeover {
			t.Fatalf("Request during grace = %v, %v", takeover, err)
		}
		if takeover, _ := p.Request(b, "bob"); !takeover {
			t.Fatal("Request of a live lease is not a takeover")
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if p.Leased() != 2 {
			t.Fatalf("Leased = %d", p.Leased())
		}

		// Release during grace is immediate; restart replaces the period
		p.ReleaseAfter(b, "bob", 10*time.Second, nil)
		p.Release(b, "bob")
		if p.Leased() != 1 {
			t.Fatalf("Leased = %d", p.Leased())
		}
		p.ReleaseAfter(a, "alice", 10*time.Second, nil)
		time.Sleep(5 * time.Second)
		p.ReleaseAfter(a, "alice", 10*time.Second, nil)
		time.Sleep(6 * time.Second)
		synctest.Wait()
		if p.Leased() != 1 {
			t.Fatal("first grace period not replaced")
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if p.Leased() != 0 || len(p.grace) != 0 {
			t.Fatalf("Leased %d, grace %d", p.Leased(), len(p.grace))
		}

		// d <= 0 releases now
		c, _ := p.Allocate("carol")
		p.ReleaseAfter(c, "carol", 0, nil)
		if p.Leased() != 0 {
			t.Fatal("ReleaseAfter(0) did not release")
		}
	})
}

func BenchmarkAllocateRelease(b *testing.B) {
	for _, prefix := range []string{"100.96.0.0/16", "fd00:96::/64"} {
		b.Run(prefix, func(b *testing.B) {
			p := mustNew(b, prefix)
			// a realistically busy pool
			for i := range 1000 {
				p.Allocate(fmt.Sprint("bg", i))
			}
			b.ReportAllocs()
			for b.Loop() {
				a, err := p.Allocate("bench")
				if err != nil {
					b.Fatal(err)
				}
				p.Release(a, "bench")
			}
		})
	}
}
