package main

import (
	"log/slog"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/flowstack"
	"github.com/roamvpn/roam/tun/systack"
	"github.com/roamvpn/roam/tunnel"
)

// systemStackModes are the --stack values of the system stack and their
// systack modes.
var systemStackModes = map[string]systack.Mode{
	"system":          systack.ModeAuto,
	"system-redirect": systack.ModeRedirect,
	"system-rewrite":  systack.ModeRewrite,
}

// newFlowStack wraps the tunnel device dev in flow mode's TCP terminator:
// the system stack (package systack) if stack is one of
// systemStackModes and it starts, else gVisor (package flowstack). The
// returned device owns dev.
func newFlowStack(stack string, dev datagram.Device, mtu int, open tunnel.OpenFlow, log *slog.Logger) (datagram.Device, error) {
	if mode, ok := systemStackModes[stack]; ok {
		hd, ok := dev.(*hostDevice)
		if !ok {
			log.Warn("system stack unavailable: the tunnel device is not the host's TUN; using gvisor")
		} else {
			s, err := systack.New(systack.Config{Dev: dev, IfName: hd.name, Mode: mode, Connect: open, Logger: log})
			if err == nil {
				return s, nil
			}
			log.Warn("system stack failed to start; using gvisor", "err", err)
		}
	}
	return flowstack.New(flowstack.Config{Dev: dev, MTU: mtu, Connect: open, Logger: log})
}
