package dns

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/vishvananda/netns"
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

func TestPointsAtResolved(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	tests := []struct {
		name string
		path string
		want bool
	}{
		{"stub nameserver", write("a", "nameserver 127.0.0.53\noptions edns0 trust-ad\n"), true},
		{"other nameserver", write("b", "nameserver 127.0.0.53\nnameserver 192.0.2.1\n"), false},
		{"plain", write("c", hostFile), false},
		{"ours", write("d", Header+"\nnameserver 127.0.0.53\n"), false},
		{"missing", filepath.Join(dir, "nope"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pointsAtResolved(tt.path); got != tt.want {
				t.Fatalf("got %v", got)
			}
		})
	}
}

// A client in a named network namespace must not rewrite the host's
// resolver file; one bind-mounted over it (ip netns exec's
// /etc/netns/NAME/resolv.conf) is the namespace's own and fine. The check
// runs on a test-owned file, never on /etc/resolv.conf.
func TestRefuseHostFile(t *testing.T) {
	needRoot(t)
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte(hostFile), 0o644)
	ns := fmt.Sprintf("roamt-dns-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	inNS := func() (bool, error) {
		type res struct {
			err  error
			same bool
		}
		ch := make(chan res)
		go func() {
			// The thread stays locked and dies with the goroutine, so no
			// other goroutine ever runs in the namespace.
			runtime.LockOSThread()
			h, err := netns.GetFromName(ns)
			if err != nil {
				ch <- res{err: err}
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ch <- res{err: err}
				return
			}
			ch <- res{refuseHostFile(p), sameNetnsAsInit()}
		}()
		r := <-ch
		return r.same, r.err
	}
	if err := refuseHostFile(p); err != nil {
		t.Fatalf("in the host's namespace: %v", err)
	}
	same, err := inNS()
	if same {
		t.Fatal("sameNetnsAsInit is true inside a named namespace")
	}
	if err == nil || !strings.Contains(err.Error(), "another network namespace") || !strings.Contains(err.Error(), p) {
		t.Fatalf("in the namespace, not mounted: %v", err)
	}
	src := filepath.Join(t.TempDir(), "ns-resolv.conf")
	os.WriteFile(src, nil, 0o644)
	if out, err := exec.Command("mount", "--bind", src, p).CombinedOutput(); err != nil {
		t.Fatalf("mount --bind: %v %s", err, out)
	}
	defer exec.Command("umount", p).Run()
	if _, err := inNS(); err != nil {
		t.Fatalf("in the namespace, with its own file mounted: %v", err)
	}
}
