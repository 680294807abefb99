package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
)

// Monitor watches the host's links, addresses and routes (netlink
// multicast groups) and answers which path the host would take to a
// destination. Roam's client uses it to notice network changes (Wi-Fi to
// cellular, a new address, a default route that moved) and migrate its
// QUIC connection. It watches, and PathTo asks, the network namespace of
// the thread that called NewMonitor.
type Monitor struct {
	mark    uint32
	h       *netlink.Handle // in the namespace of NewMonitor's caller
	changes chan struct{}
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

// NewMonitor starts watching. mark is the socket mark of the tunnel's own
// UDP sockets (0 if none): PathTo asks the kernel for the route a packet
// with that mark takes, which is the route outside the tunnel. Close stops
// the monitor.
func NewMonitor(mark uint32) (*Monitor, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("tun: netlink: %w", err)
	}
	m := &Monitor{mark: mark, h: h, changes: make(chan struct{}, 1), done: make(chan struct{})}
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	fail := func(err error) {
		// A subscription error (buffer overrun, for example) may have lost
		// events: report a change so the caller looks again.
		m.notify()
	}
	if err := netlink.LinkSubscribeWithOptions(links, m.done, netlink.LinkSubscribeOptions{ErrorCallback: fail}); err != nil {
		m.Close()
		return nil, fmt.Errorf("tun: watching links: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, m.done, netlink.AddrSubscribeOptions{ErrorCallback: fail}); err != nil {
		m.Close()
		return nil, fmt.Errorf("tun: watching addresses: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, m.done, netlink.RouteSubscribeOptions{ErrorCallback: fail}); err != nil {
		m.Close()
		return nil, fmt.Errorf("tun: watching routes: %w", err)
	}
	m.wg.Go(func() { m.watch(links, addrs, routes) })
	return m, nil
}

// watch turns every netlink event into one pending change signal.
func (m *Monitor) watch(links <-chan netlink.LinkUpdate, addrs <-chan netlink.AddrUpdate, routes <-chan netlink.RouteUpdate) {
	for {
		select {
		case _, ok := <-links:
			if !ok {
				links = nil
			}
		case _, ok := <-addrs:
			if !ok {
				addrs = nil
			}
		case _, ok := <-routes:
			if !ok {
				routes = nil
			}
		case <-m.done:
			return
		}
		m.notify()
	}
}

func (m *Monitor) notify() {
	select {
	case m.changes <- struct{}{}:
	default: // one pending signal is enough: the receiver looks at the whole state
	}
}

// Changes delivers a value after the host's links, addresses or routes
// changed. Signals coalesce: a slow receiver sees one for many events, and
// should then look at the current state (PathTo). It is never closed.
func (m *Monitor) Changes() <-chan struct{} { return m.changes }

// PathTo returns the local address and interface index the host would use
// now to send a (marked) packet to dst. It returns an error when there is
// no route.
func (m *Monitor) PathTo(dst netip.Addr) (local netip.Addr, ifindex int, err error) {
	rs, err := m.h.RouteGetWithOptions(dst.AsSlice(), &netlink.RouteGetOptions{Mark: m.mark})
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("tun: route to %v: %w", dst, err)
	}
	if len(rs) == 0 {
		return netip.Addr{}, 0, fmt.Errorf("tun: no route to %v", dst)
	}
	src, ok := netip.AddrFromSlice(rs[0].Src)
	if !ok {
		return netip.Addr{}, 0, errors.New("tun: route to " + dst.String() + " has no source address")
	}
	return src.Unmap(), rs[0].LinkIndex, nil
}

// Close stops watching. It is idempotent.
func (m *Monitor) Close() error {
	m.once.Do(func() {
		close(m.done)
		m.h.Close()
	})
	m.wg.Wait()
	return nil
}
