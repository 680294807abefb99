package flow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// DefaultDialTimeout is the Dialer's timeout when Dialer.Timeout is zero.
const DefaultDialTimeout = 10 * time.Second

// Dialer opens the destination side of a flow on the server. The zero value
// dials anything with net.Dialer and a 10 s timeout; a server always sets
// Allow. A Dialer is safe for concurrent use and must not be changed after
// first use.
type Dialer struct {
	// Allow is the destination policy. It is called with the destination
	// (an IPv4-mapped IPv6 address already unmapped to IPv4) before
	// dialing; a non-nil error refuses the flow with Kind Prohibited and
	// that error as Err. A server combines DenySpecial with its route and
	// ACL checks here. If nil, every destination is allowed.
	Allow func(netip.AddrPort) error
	// Dial opens the connection, network being "tcp4" or "tcp6" and
	// address a literal "ip:port"; its ctx carries the timeout. If nil, a
	// zero net.Dialer's DialContext is used. A server may bind an egress
	// address or set a socket mark here; tests inject failures.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Timeout bounds each dial. If zero, DefaultDialTimeout (10 s).
	Timeout time.Duration
}

// DialFlow checks dst against Allow and dials it. On failure it returns an
// *Error whose Kind says why (see Classify): Prohibited for a policy
// refusal, Refused, Unreachable, Timeout (Dialer.Timeout elapsed, or ctx's
// deadline), or Other (including ctx being cancelled). Port 0 is refused
// (Refused) without dialing. The returned net.Conn belongs to the caller.
func (d *Dialer) DialFlow(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if !dst.Addr().IsValid() {
		return nil, &Error{Kind: Other, Err: errors.New("invalid destination address")}
	}
	if dst.Port() == 0 {
		return nil, &Error{Kind: Refused, Dst: dst.String(), Err: errors.New("destination port 0")}
	}
	if d.Allow != nil {
		if err := d.Allow(dst); err != nil {
			return nil, &Error{Kind: Prohibited, Dst: dst.String(), Err: err}
		}
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	dial := d.Dial
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
	}
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dial(dctx, network, dst.String())
	if err != nil {
		kind := Classify(err)
		if kind == Other && dctx.Err() == context.DeadlineExceeded {
			// A Dial func that returned some other error once the
			// timeout fired.
			kind = Timeout
		}
		return nil, &Error{Kind: kind, Dst: dst.String(), Err: err}
	}
	if c == nil {
		return nil, &Error{Kind: Other, Dst: dst.String(), Err: errors.New("Dialer.Dial returned no connection and no error")}
	}
	return c, nil
}

// DenySpecial is the part of a server's destination policy that holds for
// every deployment: it returns an error (naming the address and why) for
// addresses a flow must never reach, and nil otherwise. Refused are:
// unspecified (0.0.0.0, ::), IPv4 "this network" 0.0.0.0/8, loopback
// (127.0.0.0/8, ::1), link-local unicast (169.254.0.0/16, which holds the
// 169.254.169.254 cloud metadata service, and fe80::/10), multicast
// (224.0.0.0/4, ff00::/8, link-local multicast included), and the IPv4
// broadcast address 255.255.255.255; IPv4-mapped IPv6 addresses are judged
// as the IPv4 address they carry. It does not know the server's own
// non-loopback addresses: a server that must not be reachable through its
// own public or tunnel addresses adds them to its Allow check.
func DenySpecial(a netip.Addr) error {
	a = a.Unmap()
	var why string
	switch {
	case !a.IsValid():
		why = "is not a valid address"
	case a.IsUnspecified():
		why = "is unspecified"
	case a.Is4() && a.As4()[0] == 0:
		why = `is in 0.0.0.0/8 ("this network")`
	case a.IsLoopback():
		why = "is loopback"
	case a.IsLinkLocalUnicast():
		why = "is link-local"
	case a.IsMulticast():
		why = "is multicast"
	case a.Is4() && a.As4() == [4]byte{255, 255, 255, 255}:
		why = "is the IPv4 broadcast address"
	default:
		return nil
	}
	return fmt.Errorf("destination %v %s", a, why)
}
