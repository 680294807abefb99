package flow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

func TestDialFlow(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	open := netip.MustParseAddrPort(ln.Addr().String())
	closed := closedPort(t)
	errNoRoute := errors.New("no route to 203.0.113.0/24")

	blackhole := func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	}
	failWith := func(errno syscall.Errno) func(context.Context, string, string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", errno)}
		}
	}
	tests := []struct {
		name    string
		d       Dialer
		dst     netip.AddrPort
		wantErr bool
		kind    ErrorKind
		errIs   error
	}{
		{name: "open port", dst: open},
		{name: "closed port refused", dst: closed, wantErr: true, kind: Refused},
		{name: "mapped address unmapped for policy and dial", dst: netip.AddrPortFrom(netip.AddrFrom16(open.Addr().As16()), open.Port()),
			d: Dialer{Allow: func(a netip.AddrPort) error {
				if !a.Addr().Is4() {
					return errors.New("not unmapped")
				}
				return nil
			}}},
		{name: "policy denial prohibited", dst: open, d: Dialer{Allow: func(a netip.AddrPort) error { return DenySpecial(a.Addr()) }},
			wantErr: true, kind: Prohibited},
		{name: "policy error kept", dst: netip.MustParseAddrPort("203.0.113.5:80"),
			d:       Dialer{Allow: func(netip.AddrPort) error { return errNoRoute }, Dial: blackhole},
			wantErr: true, kind: Prohibited, errIs: errNoRoute},
		{name: "blackhole times out", dst: netip.MustParseAddrPort("203.0.113.5:80"),
			d: Dialer{Dial: blackhole, Timeout: 20 * time.Millisecond}, wantErr: true, kind: Timeout},
		{name: "dial func ignoring ctx error type", dst: netip.MustParseAddrPort("203.0.113.5:80"),
			d: Dialer{Timeout: time.Millisecond, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
				<-ctx.Done()
				return nil, errors.New("gave up")
			}}, wantErr: true, kind: Timeout},
		{name: "host unreachable", dst: netip.MustParseAddrPort("203.0.113.5:80"), d: Dialer{Dial: failWith(syscall.EHOSTUNREACH)},
			wantErr: true, kind: Unreachable},
		{name: "net unreachable v6", dst: netip.MustParseAddrPort("[2001:db8::5]:80"), d: Dialer{Dial: failWith(syscall.ENETUNREACH)},
			wantErr: true, kind: Unreachable},
		{name: "port zero", dst: netip.MustParseAddrPort("127.0.0.1:0"), wantErr: true, kind: Refused},
		{name: "invalid address", dst: netip.AddrPort{}, wantErr: true, kind: Other},
		{name: "nil conn from Dial", dst: open, d: Dialer{Dial: func(context.Context, string, string) (net.Conn, error) { return nil, nil }},
			wantErr: true, kind: Other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.d.DialFlow(context.Background(), tt.dst)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("DialFlow: %v", err)
				}
				c.Close()
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("DialFlow succeeded, want error")
			}
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("error %T %v is not *Error", err, err)
			}
			if fe.Kind != tt.kind {
				t.Errorf("Kind = %v, want %v (err %v)", fe.Kind, tt.kind, err)
			}
			if tt.errIs != nil && !errors.Is(err, tt.errIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.errIs)
			}
		})
	}
}

func TestDialFlowNetworkAndCancel(t *testing.T) {
	var gotNet, gotAddr string
	d := Dialer{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		gotNet, gotAddr = network, addr
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := d.DialFlow(ctx, netip.MustParseAddrPort("[2001:db8::7]:443"))
	if gotNet != "tcp6" || gotAddr != "[2001:db8::7]:443" {
		t.Errorf("Dial(%q, %q), want tcp6 [2001:db8::7]:443", gotNet, gotAddr)
	}
	if k := Classify(err); k != Other || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled dial: kind %v err %v; want Other wrapping context.Canceled", k, err)
	}
}

func TestDenySpecial(t *testing.T) {
	tests := []struct {
		addr string
		deny bool
	}{
		{"127.0.0.1", true},
		{"127.255.0.9", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true},
		{"169.254.169.254", true},
		{"::ffff:169.254.169.254", true},
		{"fe80::1", true},
		{"fe80::1%eth0", true},
		{"224.0.0.1", true},
		{"239.1.2.3", true},
		{"ff02::1", true},
		{"ff0e::1", true},
		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"::", true},
		{"255.255.255.255", true},
		{"10.0.0.1", false},
		{"192.0.2.1", false},
		{"8.8.8.8", false},
		{"2001:db8::1", false},
		{"fd00::1", false},
		{"::ffff:192.0.2.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := DenySpecial(netip.MustParseAddr(tt.addr))
			if (err != nil) != tt.deny {
				t.Errorf("DenySpecial(%s) = %v, want deny=%v", tt.addr, err, tt.deny)
			}
		})
	}
	if DenySpecial(netip.Addr{}) == nil {
		t.Error("DenySpecial(invalid) = nil")
	}
}

func TestParseHostPort(t *testing.T) {
	tests := []struct {
		in   string
		host string
		port uint16
		bad  bool
	}{
		{in: "192.0.2.1:80", host: "192.0.2.1", port: 80},
		{in: "[2001:db8::1]:443", host: "2001:db8::1", port: 443},
		{in: "intranet.example:8080", host: "intranet.example", port: 8080},
		{in: "Host_1.example.:1", host: "Host_1.example.", port: 1},
		{in: "localhost:0", host: "localhost", port: 0},
		{in: "example.com", bad: true},
		{in: "example.com:", bad: true},
		{in: "example.com:65536", bad: true},
		{in: "example.com:+80", bad: true},
		{in: "example.com:http", bad: true},
		{in: "[example.com]:80", bad: true},
		{in: "[fe80::1%eth0]:80", bad: true},
		{in: "a b:80", bad: true},
		{in: "a..b:80", bad: true},
		{in: ":80", bad: true},
		{in: strings.Repeat("a", 64) + ".example:80", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := ParseHostPort(tt.in)
			if tt.bad {
				if err == nil || !errors.Is(err, ErrBadAuthority) || !strings.Contains(err.Error(), strconv.Quote(tt.in)) {
					t.Fatalf("ParseHostPort(%q) = %q, %d, %v; want an ErrBadAuthority naming the input", tt.in, host, port, err)
				}
				return
			}
			if err != nil || host != tt.host || port != tt.port {
				t.Fatalf("ParseHostPort(%q) = %q, %d, %v; want %q, %d", tt.in, host, port, err, tt.host, tt.port)
			}
		})
	}
}

// TestDialHostPort: names are resolved on the server, the policy applies
// to every address, and the first allowed one is dialed.
func TestDialHostPort(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	open := netip.MustParseAddrPort(ln.Addr().String())
	zone := map[string][]netip.Addr{
		"open.test":    {open.Addr()},
		"mixed.test":   {netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("::ffff:192.0.2.7"), netip.MustParseAddr("192.0.2.8")},
		"special.test": {netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		"empty.test":   nil,
		"second.test":  {netip.MustParseAddr("192.0.2.9"), open.Addr()},
	}
	resolve := func(ctx context.Context, host string) ([]netip.Addr, error) {
		if host == "slow.test" {
			<-ctx.Done()
			return nil, &net.DNSError{Err: "i/o timeout", Name: host, IsTimeout: true}
		}
		a, ok := zone[host]
		if !ok {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return a, nil
	}
	var dialed []string
	record := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = append(dialed, addr)
		if addr == open.String() {
			var nd net.Dialer
			return nd.DialContext(ctx, network, addr)
		}
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	}
	allowAll := func(netip.AddrPort) error { return nil }
	policy := func(a netip.AddrPort) error { return DenySpecial(a.Addr()) }
	tests := []struct {
		name    string
		in      string
		allow   func(netip.AddrPort) error
		wantDst string // dialed addresses, space-separated; "" for none
		kind    ErrorKind
		wantErr bool
	}{
		{name: "name resolved and dialed", in: fmt.Sprintf("open.test:%d", open.Port()), allow: allowAll, wantDst: open.String()},
		{name: "literal", in: open.String(), allow: allowAll, wantDst: open.String()},
		{name: "allowed addresses in order, unmapped", in: "mixed.test:80", allow: policy, wantDst: "192.0.2.7:80 192.0.2.8:80", wantErr: true, kind: Refused},
		{name: "refused address, then the next", in: fmt.Sprintf("second.test:%d", open.Port()), allow: allowAll,
			wantDst: fmt.Sprintf("192.0.2.9:%d %s", open.Port(), open)},
		{name: "only special addresses", in: "special.test:80", allow: policy, wantErr: true, kind: Prohibited},
		{name: "policy applies to literal", in: "127.0.0.1:80", allow: policy, wantErr: true, kind: Prohibited},
		{name: "unknown name", in: "nope.test:80", allow: allowAll, wantErr: true, kind: Unreachable},
		{name: "no addresses", in: "empty.test:80", allow: allowAll, wantErr: true, kind: Unreachable},
		{name: "lookup timeout", in: "slow.test:80", allow: allowAll, wantErr: true, kind: Timeout},
		{name: "name with port 0", in: "open.test:0", allow: allowAll, wantErr: true, kind: Refused},
		{name: "malformed", in: "open.test", allow: allowAll, wantErr: true, kind: Other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dialed = nil
			d := Dialer{Allow: tt.allow, Dial: record, Resolve: resolve, Timeout: 50 * time.Millisecond}
			c, dst, err := d.DialHostPort(context.Background(), tt.in)
			if c != nil {
				c.Close()
			}
			if tt.wantDst != "" && strings.Join(dialed, " ") != tt.wantDst {
				t.Errorf("dialed %v, want [%s]", dialed, tt.wantDst)
			}
			if tt.wantDst == "" && len(dialed) != 0 {
				t.Errorf("dialed %v, want nothing", dialed)
			}
			if !tt.wantErr {
				if want := tt.wantDst[strings.LastIndex(tt.wantDst, " ")+1:]; err != nil || dst.String() != want {
					t.Fatalf("DialHostPort(%q) = %v, %v; want %s", tt.in, dst, err, tt.wantDst)
				}
				return
			}
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("DialHostPort(%q) error %T %v, want *Error", tt.in, err, err)
			}
			if fe.Kind != tt.kind {
				t.Errorf("Kind = %v, want %v (err %v)", fe.Kind, tt.kind, err)
			}
			if tt.name == "malformed" && !errors.Is(err, ErrBadAuthority) {
				t.Errorf("err %v does not wrap ErrBadAuthority", err)
			}
		})
	}
}
