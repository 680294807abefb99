package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/roamvpn/roam/tun/flowstack"
	"github.com/roamvpn/roam/tun/tuntest"
	"github.com/roamvpn/roam/tunnel/flow"
)

// TestFlowStackFallback: --stack system (and system-redirect,
// system-rewrite) on a device that is not the host's TUN falls back to
// gVisor with a warning; --stack gvisor is gVisor.
func TestFlowStackFallback(t *testing.T) {
	open := func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) {
		return nil, errors.New("unused")
	}
	for _, stack := range []string{"system", "system-redirect", "system-rewrite", "gvisor"} {
		t.Run(stack, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			dev, err := newFlowStack(stack, tuntest.NewChannelDevice(1400, 8), 1400, open, log)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			if _, ok := dev.(*flowstack.Stack); !ok {
				t.Fatalf("got %T, want *flowstack.Stack", dev)
			}
			if warned := strings.Contains(logs.String(), "system stack unavailable"); warned != (stack != "gvisor") {
				t.Fatalf("logs:\n%s", logs.String())
			}
		})
	}
}
