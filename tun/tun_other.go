//go:build !linux

package tun

import (
	"fmt"
	"net/netip"
	"syscall"
)

// Create needs Linux; here it returns an error wrapping ErrUnsupported.
func Create(name string, mtu int) (dev Device, realName string, err error) {
	return nil, "", fmt.Errorf("tun: create %q: %w", name, ErrUnsupported)
}

// ConfigureLink needs Linux; here it returns an error wrapping ErrUnsupported.
func ConfigureLink(name string, addrs []netip.Prefix, mtu int) error {
	return fmt.Errorf("tun: configure %s: %w", name, ErrUnsupported)
}

// EnableForwarding needs Linux; here it returns an error wrapping
// ErrUnsupported.
func EnableForwarding() (restore func() error, err error) {
	return nil, fmt.Errorf("tun: enable forwarding: %w", ErrUnsupported)
}

// Masquerade is the server's nftables NAT table; it needs Linux.
type Masquerade struct{}

// NewMasquerade needs Linux; here it returns an error wrapping ErrUnsupported.
func NewMasquerade(cfg MasqueradeConfig) (*Masquerade, error) {
	return nil, fmt.Errorf("tun: masquerade: %w", ErrUnsupported)
}

// Table returns "".
func (m *Masquerade) Table() string { return "" }

// Close does nothing.
func (m *Masquerade) Close() error { return nil }

// Routing is the client's policy routing; it needs Linux.
type Routing struct{}

// InstallRouting needs Linux; here it returns an error wrapping
// ErrUnsupported.
func InstallRouting(cfg RoutingConfig) (*Routing, error) {
	return nil, fmt.Errorf("tun: routing: %w", ErrUnsupported)
}

// Close does nothing.
func (r *Routing) Close() error { return nil }

// ControlMark returns a Control func that fails with an error wrapping
// ErrUnsupported: socket marks are Linux-only. For mark 0 it does nothing.
func ControlMark(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		if mark == 0 {
			return nil
		}
		return fmt.Errorf("tun: set socket mark on %s socket: %w", network, ErrUnsupported)
	}
}

// Monitor watches the host's network; it needs Linux.
type Monitor struct{}

// NewMonitor needs Linux; here it returns an error wrapping ErrUnsupported.
func NewMonitor(mark uint32) (*Monitor, error) {
	return nil, fmt.Errorf("tun: network monitor: %w", ErrUnsupported)
}

// Changes returns nil.
func (m *Monitor) Changes() <-chan struct{} { return nil }

// PathTo returns an error wrapping ErrUnsupported.
func (m *Monitor) PathTo(dst netip.Addr) (netip.Addr, int, error) {
	return netip.Addr{}, 0, fmt.Errorf("tun: route to %v: %w", dst, ErrUnsupported)
}

// Close does nothing.
func (m *Monitor) Close() error { return nil }
