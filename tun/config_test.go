package tun

import (
	"net/netip"
	"strings"
	"testing"
)

func TestTableName(t *testing.T) {
	tests := []struct{ tun, want string }{
		{"roam0", "roam_roam0"},
		{"roam-0", "roam_roam_0"},
		{"wg.vpn@x", "roam_wg_vpn_x"},
		{"", "roam_"},
	}
	for _, tt := range tests {
		t.Run(tt.tun, func(t *testing.T) {
			if got := TableName(tt.tun); got != tt.want {
				t.Errorf("TableName(%q) = %q, want %q", tt.tun, got, tt.want)
			}
		})
	}
}

func TestRedirectTableName(t *testing.T) {
	for tun, want := range map[string]string{"roam0": "roamsys_roam0", "roam-0.x": "roamsys_roam_0_x"} {
		if got := RedirectTableName(tun); got != want {
			t.Errorf("RedirectTableName(%q) = %q, want %q", tun, got, want)
		}
	}
}

func FuzzTableName(f *testing.F) {
	for _, s := range []string{"roam0", "roam-0", "a.b", "\x00\xff", "ünï"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := TableName(s)
		if !strings.HasPrefix(got, "roam_") || len(got) != len("roam_")+len(s) {
			t.Fatalf("TableName(%q) = %q", s, got)
		}
		for _, c := range []byte(got) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				t.Fatalf("TableName(%q) = %q contains %q", s, got, c)
			}
		}
	})
}

func TestRoutingConfigValidate(t *testing.T) {
	v4 := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	tests := []struct {
		name    string
		cfg     RoutingConfig
		want    string // error substring; "" = valid
		wantOut []string
	}{
		{name: "defaults", cfg: RoutingConfig{TunName: "roam0", Routes: v4}, wantOut: []string{"0.0.0.0/0"}},
		{name: "masked and deduplicated", cfg: RoutingConfig{TunName: "roam0", Routes: []netip.Prefix{
			netip.MustParsePrefix("10.1.2.3/8"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::ffff:192.0.2.1/120"),
		}}, wantOut: []string{"10.0.0.0/8", "192.0.2.0/24"}},
		{name: "no tun", cfg: RoutingConfig{Routes: v4}, want: "TunName is empty"},
		{name: "long tun", cfg: RoutingConfig{TunName: "abcdefghijklmnop", Routes: v4}, want: "longer than 15"},
		{name: "no routes", cfg: RoutingConfig{TunName: "roam0"}, want: "Routes is empty"},
		{name: "invalid route", cfg: RoutingConfig{TunName: "roam0", Routes: []netip.Prefix{{}}}, want: "Routes[0] is not a valid prefix"},
		{name: "short mapped", cfg: RoutingConfig{TunName: "roam0", Routes: []netip.Prefix{netip.MustParsePrefix("::ffff:0.0.0.0/80")}}, want: "at least /96"},
		{name: "table main", cfg: RoutingConfig{TunName: "roam0", Routes: v4, Table: 254}, want: "reserved"},
		{name: "table negative", cfg: RoutingConfig{TunName: "roam0", Routes: v4, Table: -1}, want: "Table -1"},
		{name: "priority too late", cfg: RoutingConfig{TunName: "roam0", Routes: v4, Priority: 32765}, want: "Priority 32765"},
		{name: "priority negative", cfg: RoutingConfig{TunName: "roam0", Routes: v4, Priority: -5}, want: "Priority -5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg.withDefaults()
			got, err := cfg.validate()
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("validate = %v, want error containing %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			if strings.Join(s, " ") != strings.Join(tt.wantOut, " ") {
				t.Errorf("routes = %v, want %v", s, tt.wantOut)
			}
		})
	}
}

func TestRoutingConfigDefaults(t *testing.T) {
	c := RoutingConfig{}.withDefaults()
	if c.Table != DefaultTable || c.Mark != DefaultMark || c.Priority != DefaultPriority {
		t.Errorf("defaults = %+v", c)
	}
	c = RoutingConfig{Table: 7, Mark: 8, Priority: 9}.withDefaults()
	if c.Table != 7 || c.Mark != 8 || c.Priority != 9 {
		t.Errorf("explicit values changed: %+v", c)
	}
}

func TestMasqueradeConfigValidate(t *testing.T) {
	pools := []netip.Prefix{netip.MustParsePrefix("10.77.0.0/16")}
	tests := []struct {
		name string
		cfg  MasqueradeConfig
		want string
	}{
		{"ok", MasqueradeConfig{TunName: "roam0", Pools: pools}, ""},
		{"ok with egress", MasqueradeConfig{TunName: "roam0", Pools: pools, Egress: "eth0"}, ""},
		{"no tun", MasqueradeConfig{Pools: pools}, "TunName is empty"},
		{"no pools", MasqueradeConfig{TunName: "roam0"}, "Pools is empty"},
		{"egress is tun", MasqueradeConfig{TunName: "roam0", Pools: pools, Egress: "roam0"}, "TUN device itself"},
		{"bad egress", MasqueradeConfig{TunName: "roam0", Pools: pools, Egress: "eth 0"}, "Egress"},
		{"bad pool", MasqueradeConfig{TunName: "roam0", Pools: []netip.Prefix{{}}}, "Pools[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("validate = %v, want error containing %q", err, tt.want)
			}
		})
	}
}
