package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// cloneDevice is the TUN clone device.
const cloneDevice = "/dev/net/tun"

// Create creates a kernel TUN device named name, or attaches to an existing
// persistent TUN device of that name, and sets its MTU (68..65535). name may
// be empty or contain "%d" to let the kernel pick; the real name is returned.
// The device is not up and has no addresses: see ConfigureLink.
//
// The device is wireguard-go's Linux TUN with a virtio-net header, so TCP
// segmentation/checksum offload and UDP GSO/GRO are on and BatchSize is 128:
// one Read may return a whole GSO burst split into many packets, and Write
// coalesces packets of one flow. Write therefore needs offset >= MinWriteOffset
// (datagram.Headroom is 16). Close removes the device (unless it was created
// persistent by someone else) and makes blocked Reads return os.ErrClosed.
func Create(name string, mtu int) (dev Device, realName string, err error) {
	if err := checkIfName("TUN name", name, false); err != nil {
		return nil, "", err
	}
	if mtu < 68 || mtu > 65535 {
		return nil, "", fmt.Errorf("tun: create %q: MTU %d out of range 68..65535", name, mtu)
	}
	fd, err := unix.Open(cloneDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, "", fmt.Errorf("tun: create %q: %s does not exist (load the tun module, or pass the device into the container): %w", name, cloneDevice, err)
		}
		return nil, "", fmt.Errorf("tun: create %q: open %s: %w", name, cloneDevice, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tun: create %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.EPERM):
			return nil, "", fmt.Errorf("tun: create %q: needs root or CAP_NET_ADMIN: %w", name, err)
		case errors.Is(err, unix.EBUSY):
			return nil, "", fmt.Errorf("tun: create %q: the device is open in another process: %w", name, err)
		case errors.Is(err, unix.EINVAL):
			return nil, "", fmt.Errorf("tun: create %q: name taken by a device that is not a TUN, or invalid name: %w", name, err)
		}
		return nil, "", fmt.Errorf("tun: create %q: TUNSETIFF: %w", name, err)
	}
	// Nonblocking before os.NewFile, so the fd goes into the runtime poller
	// and Close can interrupt a blocked Read.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, "", fmt.Errorf("tun: create %q: set nonblocking: %w", name, err)
	}
	file := os.NewFile(uintptr(fd), cloneDevice)
	wg, err := wgtun.CreateTUNFromFile(file, mtu)
	if err != nil {
		file.Close()
		return nil, "", fmt.Errorf("tun: create %q: %w", name, err)
	}
	realName, err = wg.Name()
	if err != nil {
		wg.Close()
		return nil, "", fmt.Errorf("tun: create %q: read back name: %w", name, err)
	}
	d := &linuxDevice{dev: wg, eventsDone: make(chan struct{})}
	go d.drainEvents()
	return d, realName, nil
}

// linuxDevice wraps wireguard-go's NativeTun to fix up its rough edges: it
// drains the Events channel (whose producers block forever when nobody reads
// it), turns every error after Close into os.ErrClosed (NativeTun may report
// its internal "netlink socket closed" instead), makes Write return a packet
// count rather than a byte count, and checks arguments instead of panicking.
type linuxDevice struct {
	dev        wgtun.Device
	closing    atomic.Bool
	closeOnce  sync.Once
	closeErr   error
	eventsDone chan struct{} // closed when dev.Events() is closed
}

// drainEvents discards link up/down/MTU events: Roam reads the MTU when it
// needs it. It ends when NativeTun closes the channel after Close.
func (d *linuxDevice) drainEvents() {
	defer close(d.eventsDone)
	for range d.dev.Events() {
	}
}

func (d *linuxDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if d.closing.Load() {
		return 0, fmt.Errorf("tun: read: %w", os.ErrClosed)
	}
	if len(bufs) == 0 || len(sizes) < len(bufs) || offset < 0 || offset >= len(bufs[0]) {
		return 0, fmt.Errorf("tun: read: bad arguments: %d bufs, %d sizes, offset %d", len(bufs), len(sizes), offset)
	}
	n, err := d.dev.Read(bufs, sizes, offset)
	if err == nil {
		return n, nil
	}
	if d.closing.Load() || errors.Is(err, os.ErrClosed) {
		return 0, fmt.Errorf("tun: read: %w", os.ErrClosed)
	}
	if errors.Is(err, wgtun.ErrTooManySegments) {
		// NativeTun reports one packet fewer than it filled; the last one is
		// dropped with the rest of the burst.
		return max(n, 0), ErrTooManySegments
	}
	return 0, fmt.Errorf("tun: read: %w", err)
}

func (d *linuxDevice) Write(bufs [][]byte, offset int) (int, error) {
	if d.closing.Load() {
		return 0, fmt.Errorf("tun: write: %w", os.ErrClosed)
	}
	if offset < MinWriteOffset {
		return 0, fmt.Errorf("tun: write: offset %d < %d: Linux TUN writes a virtio-net header in front of each packet", offset, MinWriteOffset)
	}
	for i, b := range bufs {
		if len(b) <= offset {
			return 0, fmt.Errorf("tun: write: packet %d is empty (len %d, offset %d)", i, len(b), offset)
		}
	}
	if len(bufs) == 0 {
		return 0, nil
	}
	// NativeTun returns bytes written and joins per-packet errors; the
	// packets without an error were written.
	_, err := d.dev.Write(bufs, offset)
	if err == nil {
		return len(bufs), nil
	}
	if d.closing.Load() || errors.Is(err, os.ErrClosed) {
		return 0, fmt.Errorf("tun: write: %w", os.ErrClosed)
	}
	return 0, fmt.Errorf("tun: write: %w", err)
}

func (d *linuxDevice) BatchSize() int { return d.dev.BatchSize() }

func (d *linuxDevice) MTU() (int, error) {
	mtu, err := d.dev.MTU()
	if err != nil {
		return 0, fmt.Errorf("tun: %w", err)
	}
	return mtu, nil
}

// Close closes the TUN file descriptor, which removes a non-persistent device,
// and waits for NativeTun's monitoring goroutines to end.
func (d *linuxDevice) Close() error {
	d.closeOnce.Do(func() {
		d.closing.Store(true)
		if err := d.dev.Close(); err != nil {
			d.closeErr = fmt.Errorf("tun: close: %w", err)
		}
		<-d.eventsDone
	})
	return d.closeErr
}
