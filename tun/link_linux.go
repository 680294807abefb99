package tun

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE (net.ipv6.conf.<if>.addr_gen_mode=1):
// the kernel creates no link-local address on the link.
const in6AddrGenModeNone = 1

// ConfigureLink prepares the link called name: it sets the MTU (if mtu is not
// zero), turns off IPv6 link-local address generation (addr_gen_mode=1, so the
// link gets no fe80:: address and sends no router solicitations), adds addrs
// (IPv6 ones with IFA_F_NODAD, so they are usable at once; an address that is
// already there is kept), and brings the link up. Addresses already on the
// link stay. Each addrs element is an address with its prefix length, such as
// 10.77.0.1/16: the kernel adds the prefix route.
//
// IPv6 addresses need an MTU of at least 1280 (the kernel disables IPv6 on
// links below it). Errors name the link and the address.
func ConfigureLink(name string, addrs []netip.Prefix, mtu int) error {
	if err := checkIfName("link name", name, true); err != nil {
		return err
	}
	if mtu != 0 && (mtu < 68 || mtu > 65535) {
		return fmt.Errorf("tun: configure %s: MTU %d out of range 68..65535", name, mtu)
	}
	hasV6 := false
	nladdrs := make([]*netlink.Addr, 0, len(addrs))
	for i, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("tun: configure %s: addrs[%d] is not a valid prefix: want a form like 10.77.0.1/16 or fd00::1/64", name, i)
		}
		ip := a.Addr()
		bits := a.Bits()
		if ip.Is4In6() {
			if bits < 96 {
				return fmt.Errorf("tun: configure %s: addrs[%d] %s: an IPv4-mapped address needs at least /96", name, i, a)
			}
			ip, bits = ip.Unmap(), bits-96
		}
		na := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(bits, ip.BitLen())}}
		if ip.Is6() {
			hasV6 = true
			na.Flags = unix.IFA_F_NODAD
		}
		nladdrs = append(nladdrs, na)
	}

	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("tun: configure %s: find link: %w", name, err)
	}
	effective := mtu
	if effective == 0 {
		effective = link.Attrs().MTU
	}
	if hasV6 && effective < 1280 {
		return fmt.Errorf("tun: configure %s: MTU %d is below 1280, the IPv6 minimum, but IPv6 addresses were given", name, effective)
	}
	if mtu != 0 && link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("tun: configure %s: set MTU %d: %w", name, mtu, err)
		}
	}
	// Must happen while the link is down: the kernel makes the link-local
	// address when the link comes up. It fails when IPv6 is disabled, which
	// only matters if we want IPv6 addresses.
	if err := netlink.LinkSetIP6AddrGenMode(link, in6AddrGenModeNone); err != nil && hasV6 {
		return fmt.Errorf("tun: configure %s: set IPv6 addr_gen_mode=1: %w", name, err)
	}
	for _, na := range nladdrs {
		if err := netlink.AddrReplace(link, na); err != nil {
			return fmt.Errorf("tun: configure %s: add address %s: %w", name, na.IPNet, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("tun: configure %s: set link up: %w", name, err)
	}
	return nil
}

// Forwarding sysctls set by EnableForwarding.
const (
	sysctlIPv4Forward = "/proc/sys/net/ipv4/ip_forward"
	sysctlIPv6Forward = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// EnableForwarding sets net.ipv4.ip_forward=1 and
// net.ipv6.conf.all.forwarding=1 (the latter only if the kernel has IPv6). The
// returned restore func writes back the previous value of each setting that
// EnableForwarding changed and leaves the others alone; it is idempotent and
// acts on the network namespace EnableForwarding ran in, whichever thread
// calls it. Until restore is called, two file descriptors stay open.
//
// Note that IPv6 forwarding makes the kernel ignore router advertisements on
// interfaces with accept_ra=1: a server that gets its own IPv6 address or
// default route by SLAAC needs accept_ra=2 on its uplink.
func EnableForwarding() (restore func() error, err error) {
	var changed []*sysctlSetting
	restoreAll := func() error {
		var errs []error
		for _, s := range changed {
			errs = append(errs, s.restore())
		}
		return errors.Join(errs...)
	}
	for _, path := range []string{sysctlIPv4Forward, sysctlIPv6Forward} {
		s, err := setSysctl(path, "1")
		if errors.Is(err, fs.ErrNotExist) && path == sysctlIPv6Forward {
			continue // kernel without IPv6
		}
		if err != nil {
			return nil, errors.Join(fmt.Errorf("tun: enable forwarding: %w", err), restoreAll())
		}
		if s != nil {
			changed = append(changed, s)
		}
	}
	return sync.OnceValue(restoreAll), nil
}

// sysctlSetting is a sysctl that setSysctl changed. The file stays open
// because a /proc/sys/net file belongs to the network namespace of the
// thread that opened it: writing through it later restores the right one.
type sysctlSetting struct {
	f   *os.File
	old []byte
}

// setSysctl writes value to the sysctl file at path unless it already holds
// it. It returns nil, nil when nothing had to change. The file is read first
// and opened for writing only when the value must change, so a preset value
// works where /proc/sys is read-only (a container, ProtectKernelTunables).
func setSysctl(path, value string) (*sysctlSetting, error) {
	cur, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if string(bytes.TrimSpace(cur)) == value {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 64)
	n, err := f.ReadAt(buf, 0)
	if n == 0 && err != nil {
		f.Close()
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	old := bytes.TrimSpace(buf[:n])
	if string(old) == value {
		f.Close()
		return nil, nil
	}
	if _, err := f.WriteAt([]byte(value+"\n"), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s=%s: %w", path, value, err)
	}
	return &sysctlSetting{f: f, old: old}, nil
}

// restore writes the old value back and closes the file.
func (s *sysctlSetting) restore() error {
	_, err := s.f.WriteAt(append(s.old, '\n'), 0)
	if err != nil {
		err = fmt.Errorf("tun: restore %s=%s: %w", s.f.Name(), s.old, err)
	}
	s.f.Close()
	return err
}
