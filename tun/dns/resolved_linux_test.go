package dns

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// busResolved stands in for systemd-resolved's Manager object on a
// private bus, recording the calls. It checks Roam's side of the D-Bus
// conversation (names, argument types, order, revert); what resolved does
// with them is TestResolvedLive's job.
type busResolved struct {
	mu    sync.Mutex
	calls []string
}

func (r *busResolved) add(s string) *dbus.Error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
	return nil
}

func (r *busResolved) SetLinkDNS(i int32, as []linkDNS) *dbus.Error {
	var s []string
	for _, a := range as {
		ip, _ := netip.AddrFromSlice(a.Address)
		s = append(s, ip.String()+"/"+map[int32]string{2: "inet", 10: "inet6"}[a.Family])
	}
	return r.add("SetLinkDNS " + strings.Join(s, ","))
}

func (r *busResolved) SetLinkDomains(i int32, ds []linkDomain) *dbus.Error {
	var s []string
	for _, d := range ds {
		if d.RoutingOnly {
			s = append(s, "~"+d.Domain)
		} else {
			s = append(s, d.Domain)
		}
	}
	return r.add("SetLinkDomains " + strings.Join(s, ","))
}

func (r *busResolved) SetLinkDefaultRoute(i int32, b bool) *dbus.Error {
	if b {
		return r.add("SetLinkDefaultRoute yes")
	}
	return r.add("SetLinkDefaultRoute no")
}

func (r *busResolved) RevertLink(i int32) *dbus.Error { return r.add("RevertLink") }

// privateBus starts a dbus-daemon for this test only and points
// DBUS_SYSTEM_BUS_ADDRESS at it.
func privateBus(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		t.Skip("needs dbus-daemon on PATH")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "bus.conf")
	os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=`+filepath.Join(dir, "bus")+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`), 0o644)
	cmd := exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case a := <-addr:
		t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", a)
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon printed no address")
	}
	return ""
}

func TestResolvedCalls(t *testing.T) {
	if got := dbus.SignatureOf([]linkDNS{}).String(); got != "a(iay)" {
		t.Fatalf("SetLinkDNS argument signature %s, resolved wants a(iay)", got)
	}
	if got := dbus.SignatureOf([]linkDomain{}).String(); got != "a(sb)" {
		t.Fatalf("SetLinkDomains argument signature %s, resolved wants a(sb)", got)
	}
	addr := privateBus(t)
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fake := &busResolved{}
	if err := conn.Export(fake, resolvedPath, "org.freedesktop.resolve1.Manager"); err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName(resolvedName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v %v", reply, err)
	}
	if _, err := net.InterfaceByName("lo"); err != nil {
		t.Skip("no lo interface")
	}
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"full tunnel", Config{Servers: addrs("100.96.0.1", "fd00:96::1"), FullTunnel: true},
			[]string{"SetLinkDNS 100.96.0.1/inet,fd00:96::1/inet6", "SetLinkDomains ~.", "SetLinkDefaultRoute yes", "RevertLink"}},
		{"split tunnel with a search domain", Config{Servers: addrs("10.0.0.53"), Domains: []string{"corp.example"}},
			[]string{"SetLinkDNS 10.0.0.53/inet", "SetLinkDomains corp.example", "SetLinkDefaultRoute yes", "RevertLink"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake.mu.Lock()
			fake.calls = nil
			fake.mu.Unlock()
			tt.cfg.IfName, tt.cfg.Backend, tt.cfg.Logger = "lo", Resolved, testLog(t)
			tt.cfg.ResolvConf = filepath.Join(t.TempDir(), "untouched")
			h, err := Configure(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if h.Backend() != Resolved {
				t.Fatalf("backend %v", h.Backend())
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			fake.mu.Lock()
			got := fake.calls
			fake.mu.Unlock()
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("calls %q, want %q", got, tt.want)
			}
			mustNotExist(t, tt.cfg.ResolvConf)
		})
	}
}
