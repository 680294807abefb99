//go:build !linux

package tun

import (
	"errors"
	"net/netip"
	"testing"
)

func TestUnsupported(t *testing.T) {
	_, _, err := Create("roam0", 1400)
	check := func(name string, err error) {
		if !errors.Is(err, ErrUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("%s = %v, want ErrUnsupported", name, err)
		}
	}
	check("Create", err)
	check("ConfigureLink", ConfigureLink("roam0", []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}, 1400))
	_, err = EnableForwarding()
	check("EnableForwarding", err)
	_, err = NewMasquerade(MasqueradeConfig{TunName: "roam0"})
	check("NewMasquerade", err)
	_, err = InstallRouting(RoutingConfig{TunName: "roam0"})
	check("InstallRouting", err)
	check("ControlMark", ControlMark(1)("udp", "", nil))
	if err := ControlMark(0)("udp", "", nil); err != nil {
		t.Errorf("ControlMark(0) = %v", err)
	}
}
