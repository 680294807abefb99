package flow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
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
	// Timeout bounds each dial, and each host name lookup of DialHostPort.
	// If zero, DefaultDialTimeout (10 s).
	Timeout time.Duration
	// Resolve looks up the addresses of a host name for DialHostPort; its
	// ctx carries the timeout. If nil, net.DefaultResolver.LookupNetIP(ctx,
	// "ip", host) is used. Tests inject fixed answers.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
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

// ErrBadAuthority is wrapped by the error ParseHostPort and DialHostPort
// return for a destination that is not a valid "host:port".
var ErrBadAuthority = errors.New("flow: destination must be host:port")

// ParseHostPort splits a flow destination "host:port" (an HTTP authority:
// an IPv6 literal in brackets, a port 0..65535 in decimal) into a host and
// a port, and checks the host: an IP address without zone, or a DNS name of
// at most 253 bytes of letters, digits, '-', '_' and '.'. Errors wrap
// ErrBadAuthority and name the input.
func ParseHostPort(hostport string) (host string, port uint16, err error) {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %q: %v", ErrBadAuthority, hostport, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || p == "" || p[0] == '+' {
		return "", 0, fmt.Errorf("%w: %q: port %q is not a number 0-65535", ErrBadAuthority, hostport, p)
	}
	if a, aerr := netip.ParseAddr(h); aerr == nil {
		if a.Zone() != "" {
			return "", 0, fmt.Errorf("%w: %q: addresses with a zone are not allowed", ErrBadAuthority, hostport)
		}
		return h, uint16(n), nil
	}
	if strings.HasPrefix(hostport, "[") {
		return "", 0, fmt.Errorf("%w: %q: %q is not an IPv6 address", ErrBadAuthority, hostport, h)
	}
	if !validHostName(h) {
		return "", 0, fmt.Errorf("%w: %q: %q is neither an IP address nor a host name", ErrBadAuthority, hostport, h)
	}
	return h, uint16(n), nil
}

func validHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// DialHostPort dials a flow destination given as "host:port", as a client
// names it (an HTTP CONNECT authority, a browser's URL). An IP literal is
// dialed as DialFlow does. A host name is looked up (Resolve, bounded by
// Timeout) on the server, Allow is applied to every address it resolves
// to, and the allowed ones are dialed in the resolver's order until one
// answers (sharing Timeout); if none is allowed the flow is refused with
// Kind Prohibited, so a name never reaches what its address could not. It returns the connection and
// the address dialed, or an *Error: Kind Other wrapping ErrBadAuthority
// for a malformed destination; for a failed lookup, Unreachable if the
// name does not exist, Timeout if the lookup timed out, else Other; and
// DialFlow's kinds for the dial itself.
func (d *Dialer) DialHostPort(ctx context.Context, hostport string) (net.Conn, netip.AddrPort, error) {
	host, port, err := ParseHostPort(hostport)
	if err != nil {
		return nil, netip.AddrPort{}, &Error{Kind: Other, Err: err}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		dst := netip.AddrPortFrom(a.Unmap(), port)
		c, err := d.DialFlow(ctx, dst)
		return c, dst, err
	}
	if port == 0 {
		return nil, netip.AddrPort{}, &Error{Kind: Refused, Dst: hostport, Err: errors.New("destination port 0")}
	}
	addrs, err := d.lookup(ctx, host)
	if err != nil {
		kind := Other
		var dnsErr *net.DNSError
		switch {
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			kind = Unreachable
		case Classify(err) == Timeout:
			kind = Timeout
		}
		return nil, netip.AddrPort{}, &Error{Kind: kind, Dst: hostport, Err: fmt.Errorf("looking up %s: %w", host, err)}
	}
	var allowed []netip.AddrPort
	var firstDenial error
	for _, a := range addrs {
		dst := netip.AddrPortFrom(a.Unmap(), port)
		if !dst.Addr().IsValid() {
			continue
		}
		if d.Allow != nil {
			if err := d.Allow(dst); err != nil {
				if firstDenial == nil {
					firstDenial = err
				}
				continue
			}
		}
		allowed = append(allowed, dst)
	}
	if len(allowed) == 0 {
		if firstDenial == nil {
			return nil, netip.AddrPort{}, &Error{Kind: Unreachable, Dst: hostport, Err: fmt.Errorf("%s has no addresses", host)}
		}
		return nil, netip.AddrPort{}, &Error{Kind: Prohibited, Dst: hostport, Err: fmt.Errorf("%s resolves to no allowed address: %w", host, firstDenial)}
	}
	// Try the allowed addresses in order, as net.Dialer does: the dial
	// timeout is shared, each address gets an equal part of what is left
	// (at least minAttempt), and a refused or unreachable address moves on
	// to the next. The last failure is returned.
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		lastErr error
		last    netip.AddrPort
	)
	for i, dst := range allowed {
		last = dst
		actx, acancel := dctx, context.CancelFunc(func() {})
		if left := len(allowed) - i; left > 1 {
			if dl, ok := dctx.Deadline(); ok {
				part := max(time.Until(dl)/time.Duration(left), minAttempt)
				actx, acancel = context.WithTimeout(dctx, part)
			}
		}
		c, err := d.DialFlow(actx, dst)
		acancel()
		if err == nil {
			return c, dst, nil
		}
		lastErr = err
		if dctx.Err() != nil || ctx.Err() != nil {
			break
		}
	}
	return nil, last, lastErr
}

// minAttempt is the least time DialHostPort gives one address of a name
// before it moves on to the next.
const minAttempt = 2 * time.Second

// lookup resolves host with Resolve (or the default resolver) within the
// dial timeout.
func (d *Dialer) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if d.Resolve != nil {
		return d.Resolve(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
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
