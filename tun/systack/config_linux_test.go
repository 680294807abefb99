package systack

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/roamvpn/roam/tun/tuntest"
	"github.com/roamvpn/roam/tunnel/flow"
)

// TestNewErrors: bad configurations name the field; a failed New leaves
// Dev open (so the caller can fall back to flowstack).
func TestNewErrors(t *testing.T) {
	connect := func(context.Context, netip.AddrPort, netip.AddrPort) (flow.Stream, error) { return nil, nil }
	for _, tt := range []struct {
		name string
		cfg  func(*Config)
		want string
	}{
		{"no device", func(c *Config) { c.Dev = nil }, "Config.Dev"},
		{"no interface", func(c *Config) { c.IfName = "" }, "Config.IfName"},
		{"no Connect", func(c *Config) { c.Connect = nil }, "Config.Connect"},
		{"MaxFlows too large", func(c *Config) { c.MaxFlows = MaxMaxFlows + 1 }, "Config.MaxFlows"},
		{"negative MaxPending", func(c *Config) { c.MaxPending = -1 }, "Config.MaxPending"},
		{"negative timeout", func(c *Config) { c.ConnectTimeout = -1 }, "Config.ConnectTimeout"},
		{"bad mode", func(c *Config) { c.Mode = ModeRewrite + 1 }, "Config.Mode"},
		{"no such interface", func(c *Config) { c.IfName = "roamnosuch0" }, `interface "roamnosuch0"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dev := tuntest.NewChannelDevice(1400, 8)
			defer dev.Close()
			cfg := Config{Dev: dev, IfName: "roamnosuch0", Connect: connect}
			tt.cfg(&cfg)
			s, err := New(cfg)
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not name %q", err, tt.want)
			}
			select {
			case <-dev.Done():
				t.Fatal("New closed Dev")
			default:
			}
		})
	}
}
