package flow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	tests := []struct {
		name string
		err  error
		want ErrorKind
	}{
		{"nil", nil, Other},
		{"refused", opErr(syscall.ECONNREFUSED), Refused},
		{"net unreachable", opErr(syscall.ENETUNREACH), Unreachable},
		{"host unreachable", opErr(syscall.EHOSTUNREACH), Unreachable},
		{"host down", opErr(syscall.EHOSTDOWN), Unreachable},
		{"net down", opErr(syscall.ENETDOWN), Unreachable},
		{"permission (firewall)", opErr(syscall.EPERM), Prohibited},
		{"access (prohibit route)", opErr(syscall.EACCES), Prohibited},
		{"etimedout", opErr(syscall.ETIMEDOUT), Timeout},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), Timeout},
		{"net timeout", &net.OpError{Op: "dial", Err: timeoutErr{}}, Timeout},
		{"canceled", context.Canceled, Other},
		{"other errno", opErr(syscall.EADDRNOTAVAIL), Other},
		{"plain", errors.New("boom"), Other},
		{"flow error wins", fmt.Errorf("wrapped: %w", &Error{Kind: Prohibited, Err: opErr(syscall.ECONNREFUSED)}), Prohibited},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestKindMappings(t *testing.T) {
	tests := []struct {
		kind   ErrorKind
		ps     string
		status int
	}{
		{Other, "proxy_internal_error", 500},
		{Refused, "connection_refused", 502},
		{Unreachable, "destination_ip_unroutable", 502},
		{Timeout, "connection_timeout", 504},
		{Prohibited, "destination_ip_prohibited", 502},
		{LimitReached, "connection_limit_reached", 503},
		{ErrorKind(200), "proxy_internal_error", 500},
	}
	for _, tt := range tests {
		t.Run(tt.kind.String(), func(t *testing.T) {
			e := &Error{Kind: tt.kind}
			if got := e.ProxyStatus(); got != tt.ps {
				t.Errorf("ProxyStatus = %q, want %q", got, tt.ps)
			}
			if got := e.HTTPStatus(); got != tt.status {
				t.Errorf("HTTPStatus = %d, want %d", got, tt.status)
			}
			if tt.kind <= LimitReached {
				got, ok := ParseProxyStatus(ProxyStatusField("", tt.kind, "x"))
				if !ok || got != tt.kind {
					t.Errorf("ParseProxyStatus(ProxyStatusField(%v)) = %v, %v", tt.kind, got, ok)
				}
			}
		})
	}
}

func TestKindForStatus(t *testing.T) {
	for code, want := range map[int]ErrorKind{403: Prohibited, 429: LimitReached, 503: LimitReached, 504: Timeout, 502: Other, 500: Other, 404: Other} {
		if got := KindForStatus(code); got != want {
			t.Errorf("KindForStatus(%d) = %v, want %v", code, got, want)
		}
	}
}

func TestErrorString(t *testing.T) {
	inner := errors.New("dial tcp 192.0.2.1:80: connect: connection refused")
	tests := []struct {
		e    *Error
		want string
	}{
		{&Error{Kind: Refused, Dst: "192.0.2.1:80", Err: inner}, "flow to 192.0.2.1:80: connection refused: " + inner.Error()},
		{&Error{Kind: Timeout}, "flow: connection timed out"},
		{&Error{Kind: LimitReached, Dst: "[2001:db8::1]:443"}, "flow to [2001:db8::1]:443: flow limit reached"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	e := &Error{Kind: Refused, Err: inner}
	if !errors.Is(e, inner) {
		t.Error("errors.Is(e, inner) = false; Unwrap broken")
	}
}
