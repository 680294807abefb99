package tun

import (
	"errors"
	"fmt"
)

// ErrUnsupported is returned (wrapped) by every function of this package that
// needs Linux when it runs on another system. It wraps [errors.ErrUnsupported].
var ErrUnsupported = fmt.Errorf("kernel TUN, netlink and nftables need Linux; use --nat userspace: %w", errors.ErrUnsupported)

// ErrTooManySegments is returned by a Linux Device's Read together with n > 0
// when the kernel handed over a GSO burst with more segments than len(bufs).
// The n packets are valid; the rest of that burst is lost (TCP retransmits it).
// It is not fatal: keep reading. Pass len(bufs) >= BatchSize() to make it rare.
var ErrTooManySegments = errors.New("tun: GSO burst has more segments than buffers")
