package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun"
	dnspkg "github.com/roamvpn/roam/tun/dns"
	"github.com/roamvpn/roam/tun/flowstack"
	"github.com/roamvpn/roam/tunnel"
)

type clientFlags struct {
	server    string
	token     string
	tokenFile string
	pin       string
	routes    prefixList
	tunName   string
	mark      uint
	table     int
	logLevel  string
	debug     string
	mode      string

	dns        string // --dns: auto or off
	resolvConf string // --resolv-conf
	resolvSet  bool   // --resolv-conf given: manage that file, never resolved
}

func parseClientFlags(args []string, stdout io.Writer) (*clientFlags, bool, error) {
	f := &clientFlags{}
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.StringVar(&f.server, "server", "", "server `HOST:PORT` (required)")
	fs.StringVar(&f.token, "token", "", "bearer `TOKEN` (or --token-file, or $ROAM_TOKEN)")
	fs.StringVar(&f.tokenFile, "token-file", "", "read the token from `FILE` (first line)")
	fs.StringVar(&f.pin, "pin", "", "server certificate pin `sha256:HEX` (as the server prints); default: WebPKI verification")
	fs.Var(&f.routes, "route", "`CIDR` to send through the tunnel (repeatable); default 0.0.0.0/0 and ::/0 (full tunnel)")
	fs.StringVar(&f.tunName, "tun", "roam0", "TUN device `NAME`")
	fs.UintVar(&f.mark, "mark", uint(tun.DefaultMark), "socket `MARK` that keeps the tunnel's own UDP socket out of the tunnel")
	fs.IntVar(&f.table, "table", tun.DefaultTable, "routing `TABLE` for the tunnel routes")
	fs.StringVar(&f.mode, "mode", "packet", "`MODE`: packet (every IP packet as a datagram) or flow (each TCP connection as its own QUIC stream, the rest as datagrams)")
	fs.StringVar(&f.logLevel, "log-level", "info", "`LEVEL`: debug, info, warn or error")
	fs.StringVar(&f.debug, "debug", "", "serve pprof and counters on this loopback `HOST:PORT` (off by default)")
	// DNS push (docs/protocol.md, "DNS push").
	fs.StringVar(&f.dns, "dns", "auto", "`MODE`: auto (use the DNS servers the server pushes: systemd-resolved on the TUN link if it serves the host, else --resolv-conf; restored on exit) or off")
	fs.StringVar(&f.resolvConf, "resolv-conf", dnspkg.DefaultResolvConf, "resolver `FILE` managed when systemd-resolved is not used (saved next to itself as FILE"+dnspkg.BackupSuffix+" and restored on exit); giving it always manages the file")
	help, err := parseFlags(fs, args, stdout)
	if help || err != nil {
		return nil, help, err
	}
	fs.Visit(func(fl *flag.Flag) { f.resolvSet = f.resolvSet || fl.Name == "resolv-conf" })
	if f.dns != "auto" && f.dns != "off" {
		return nil, false, usagef("client: invalid value %q for flag --dns: expected auto or off", f.dns)
	}
	if f.resolvConf == "" || !filepath.IsAbs(f.resolvConf) {
		return nil, false, usagef("client: invalid value %q for flag --resolv-conf: expected an absolute file path like /etc/resolv.conf", f.resolvConf)
	}
	if f.server == "" {
		return nil, false, usagef("client: flag --server is required: expected HOST:PORT like vpn.example.com:4433")
	}
	if _, port, err := net.SplitHostPort(f.server); err != nil || port == "" {
		return nil, false, usagef("client: invalid value %q for flag --server: expected HOST:PORT like vpn.example.com:4433", f.server)
	}
	if f.token == "" && f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, false, usagef("client: flag --token-file: %v", err)
		}
		f.token, _, _ = strings.Cut(strings.TrimSpace(string(b)), "\n")
		f.token = strings.TrimSpace(f.token)
	}
	if f.token == "" {
		f.token = os.Getenv("ROAM_TOKEN")
	}
	if f.token == "" {
		return nil, false, usagef("client: flag --token is required (or --token-file, or $ROAM_TOKEN)")
	}
	if f.pin != "" {
		if _, err := auth.ParsePin(strings.TrimSpace(f.pin)); err != nil {
			return nil, false, usagef("client: invalid value %q for flag --pin: %v", f.pin, err)
		}
	}
	if f.tunName == "" || len(f.tunName) > 15 {
		return nil, false, usagef("client: invalid value %q for flag --tun: expected an interface name of 1-15 characters", f.tunName)
	}
	if f.mode != "packet" && f.mode != "flow" {
		return nil, false, usagef("client: invalid value %q for flag --mode: expected packet or flow", f.mode)
	}
	if f.mark == 0 || f.mark > 0xffffffff {
		return nil, false, usagef("client: invalid value %d for flag --mark: expected 1..4294967295", f.mark)
	}
	if f.table <= 0 || f.table == 253 || f.table == 254 || f.table == 255 {
		return nil, false, usagef("client: invalid value %d for flag --table: expected a free routing table number (not 253-255)", f.table)
	}
	return f, false, nil
}

func runClient(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, help, err := parseClientFlags(args, stdout)
	if help || err != nil {
		return err
	}
	log, err := startLogging(stderr, f.logLevel, f.debug)
	if err != nil {
		return err
	}
	cfg := tunnel.ClientConfig{
		Server: f.server,
		Token:  f.token,
		Routes: f.routes.vals,
		Logger: log,
	}
	if f.pin != "" {
		pin, _ := auth.ParsePin(strings.TrimSpace(f.pin))
		cfg.Pin = &pin
	}
	// The tunnel's own sockets carry the mark, so the policy rules keep
	// them on the host's normal routes even in full-tunnel mode.
	lc := net.ListenConfig{Control: tun.ControlMark(uint32(f.mark))}
	cfg.ListenPacket = func(local netip.Addr) (net.PacketConn, error) {
		addr := ":0"
		if local.IsValid() && !local.IsLinkLocalUnicast() { // a link-local address would need its zone
			addr = netip.AddrPortFrom(local, 0).String()
		}
		return lc.ListenPacket(ctx, "udp", addr)
	}
	pc, err := cfg.ListenPacket(netip.Addr{}) // fail early, with the reason (no CAP_NET_ADMIN for the mark?)
	if err != nil {
		return fmt.Errorf("opening the UDP socket: %w", err)
	}
	pc.Close()
	mon, err := tun.NewMonitor(uint32(f.mark))
	if err != nil {
		log.Warn("not watching the network; the tunnel notices network changes only by its own timeouts", "err", err)
	} else {
		defer mon.Close()
		cfg.Monitor = mon
	}
	cfg.NewDevice = func(dc tunnel.DeviceConfig) (datagram.Device, error) {
		return clientDevice(f, dc, log)
	}
	if f.mode == "flow" {
		cfg.FlowDevice = func(dev datagram.Device, mtu int, open tunnel.OpenFlow) (datagram.Device, error) {
			return flowstack.New(flowstack.Config{Dev: dev, MTU: mtu, Connect: open, Logger: log})
		}
	}
	c, err := tunnel.NewClient(cfg)
	if err != nil {
		return err
	}
	return c.Run(ctx)
}

// clientDevice creates and configures the kernel TUN with the assigned
// addresses and installs the routes with policy routing. Closing the
// returned device removes the routes, the rules and the device.
func clientDevice(f *clientFlags, dc tunnel.DeviceConfig, log *slog.Logger) (datagram.Device, error) {
	dev, name, err := tun.Create(f.tunName, dc.MTU)
	if err != nil {
		return nil, fmt.Errorf("creating TUN device %s: %w (the client needs root or CAP_NET_ADMIN)", f.tunName, err)
	}
	if err := tun.ConfigureLink(name, dc.Addresses, dc.MTU); err != nil {
		dev.Close()
		return nil, err
	}
	rt, err := tun.InstallRouting(tun.RoutingConfig{TunName: name, Routes: dc.Routes, Table: f.table, Mark: uint32(f.mark)})
	if err != nil {
		dev.Close()
		return nil, err
	}
	dh, err := clientDNS(f, dc, name, log)
	if err != nil {
		rt.Close()
		dev.Close()
		return nil, err
	}
	return &hostDevice{Device: dev, routing: rt, dns: dh, f: f, dc: dc, name: name, log: log}, nil
}

// hostDevice is a TUN device whose Close also removes its routing and
// restores the host's DNS. It is a tunnel.DNSUpdater.
type hostDevice struct {
	tun.Device
	routing *tun.Routing
	once    sync.Once
	err     error

	// For DNS updates: what clientDNS needs again.
	f    *clientFlags
	dc   tunnel.DeviceConfig
	name string
	log  *slog.Logger

	dnsMu  sync.Mutex
	dns    *dnspkg.Handle // guarded by dnsMu; nil: DNS left alone
	closed bool           // guarded by dnsMu
}

// UpdateDNS restores the host's DNS and configures servers instead (none:
// the host's own DNS stays).
func (d *hostDevice) UpdateDNS(servers []netip.Addr) error {
	d.dnsMu.Lock()
	defer d.dnsMu.Unlock()
	if d.closed {
		return net.ErrClosed
	}
	if d.dns != nil {
		err := d.dns.Close()
		d.dns = nil
		if err != nil {
			return err
		}
	}
	dc := d.dc
	dc.DNS = servers
	h, err := clientDNS(d.f, dc, d.name, d.log)
	d.dns = h
	return err
}

func (d *hostDevice) Close() error {
	d.once.Do(func() {
		var derr error
		d.dnsMu.Lock()
		d.closed = true
		if d.dns != nil {
			derr = d.dns.Close()
		}
		d.dnsMu.Unlock()
		rerr := d.routing.Close()
		if rerr == nil {
			rerr = derr
		}
		d.err = d.Device.Close()
		if d.err == nil {
			d.err = rerr
		}
	})
	return d.err
}
