package main

import (
	"context"
	"errors"
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
	"github.com/roamvpn/roam/tunnel"
	"github.com/roamvpn/roam/tunnel/control"
	"github.com/roamvpn/roam/tunnel/fec"
)

type clientFlags struct {
	config    string
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
	stack     string
	fec       string

	metrics      string // --metrics: Prometheus and probes; "" = off
	statusSocket string // --status-socket; "" = off

	dns        string // --dns: auto or off
	resolvConf string // --resolv-conf; a path other than the default always manages that file
}

// newClientFlags returns the client's flags with their defaults and the
// FlagSet that sets them.
func newClientFlags() (*clientFlags, *flag.FlagSet) {
	f := &clientFlags{}
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.StringVar(&f.config, "config", "", "read settings from the TOML `FILE`'s [client] table (docs/config.md); flags override it")
	fs.StringVar(&f.server, "server", "", "server `HOST:PORT` (required)")
	fs.StringVar(&f.token, "token", "", "bearer `TOKEN` (or --token-file, or $ROAM_TOKEN)")
	fs.StringVar(&f.tokenFile, "token-file", "", "read the token from `FILE` (first line)")
	fs.StringVar(&f.pin, "pin", "", "server certificate pin `sha256:HEX` (as the server prints); default: WebPKI verification")
	fs.Var(&f.routes, "route", "`CIDR` to send through the tunnel (repeatable); default 0.0.0.0/0 and ::/0 (full tunnel)")
	fs.StringVar(&f.tunName, "tun", "roam0", "TUN device `NAME`")
	fs.UintVar(&f.mark, "mark", uint(tun.DefaultMark), "socket `MARK` that keeps the tunnel's own UDP socket out of the tunnel")
	fs.IntVar(&f.table, "table", tun.DefaultTable, "routing `TABLE` for the tunnel routes")
	fs.StringVar(&f.mode, "mode", "packet", "`MODE`: packet (every IP packet as a datagram) or flow (each TCP connection as its own QUIC stream, the rest as datagrams)")
	fs.StringVar(&f.stack, "stack", "gvisor", "flow mode's TCP `STACK`: gvisor (userspace) or system (the kernel's TCP: an nftables redirect to a local listener, or else packets rewritten on the TUN; system-redirect or system-rewrite force one; falls back to gvisor if it cannot start)")
	fs.StringVar(&f.fec, "fec", "off", "forward error correction `MODE` under QUIC, for lossy links (the server must allow it): auto (parity follows the measured loss, none on a clean link), off, or K:M (M parity packets per K packets, e.g. 16:4)")
	fs.StringVar(&f.logLevel, "log-level", "info", "`LEVEL`: debug, info, warn or error")
	fs.StringVar(&f.debug, "debug", "", "serve pprof and counters on this loopback `HOST:PORT` (off by default)")
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus /metrics and the /healthz, /readyz probes on `HOST:PORT` (off by default)")
	fs.StringVar(&f.statusSocket, "status-socket", control.DefaultPath("client"), "unix socket `PATH` that roam status queries (\"\" for none)")
	// DNS push (docs/protocol.md, "DNS push").
	fs.StringVar(&f.dns, "dns", "auto", "`MODE`: auto (use the DNS servers the server pushes: systemd-resolved on the TUN link if it serves the host, else --resolv-conf; restored on exit) or off")
	fs.StringVar(&f.resolvConf, "resolv-conf", dnspkg.DefaultResolvConf, "resolver `FILE` managed when systemd-resolved is not used (saved next to itself as FILE"+dnspkg.BackupSuffix+" and restored on exit); another path than the default is always managed as a file")
	return f, fs
}

// parseClientFlags parses the command line and the --config file. Every
// problem is reported, one a line, as a usage error.
func parseClientFlags(args []string, stdout io.Writer) (*clientFlags, bool, error) {
	f, fs := newClientFlags()
	help, err := parseFlags(fs, args, stdout)
	if help || err != nil {
		return nil, help, err
	}
	var cfg *configFile
	if f.config != "" {
		cfg = loadConfig(f.config)
	}
	if errs := f.load(fs, cfg); len(errs) > 0 {
		return nil, false, usageErrors("client", errs)
	}
	return f, false, nil
}

// load applies cfg's [client] table (nil cfg: none) to the flags fs parsed
// and checks the result; `roam validate` calls it too.
func (f *clientFlags) load(fs *flag.FlagSet, cfg *configFile) []error {
	return loadFlags(fs, cfg, nil, f.check)
}

// check checks the parsed values and fills in the token (from
// --token-file or $ROAM_TOKEN); it touches nothing but reads --token-file.
func (f *clientFlags) check() []*flagError {
	errs := commonChecks(f.logLevel, f.debug)
	if f.server == "" {
		errs = append(errs, badFlags([]string{"server"}, "flag --server is required: expected HOST:PORT like vpn.example.com:4433",
			"required: expected HOST:PORT like vpn.example.com:4433"))
	} else if _, port, err := net.SplitHostPort(f.server); err != nil || port == "" {
		errs = append(errs, badValue("server", f.server, "expected HOST:PORT like vpn.example.com:4433"))
	}
	if f.token == "" && f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			errs = append(errs, badValue("token-file", f.tokenFile, "%v", errors.Unwrap(err)))
		}
		f.token, _, _ = strings.Cut(strings.TrimSpace(string(b)), "\n")
		f.token = strings.TrimSpace(f.token)
	}
	if f.token == "" {
		f.token = os.Getenv("ROAM_TOKEN")
	}
	if f.token == "" {
		errs = append(errs, badFlags([]string{"token", "token-file"}, "flag --token is required (or --token-file, or $ROAM_TOKEN)",
			"token or token_file is required (or $ROAM_TOKEN)"))
	}
	if f.pin != "" {
		if _, err := auth.ParsePin(strings.TrimSpace(f.pin)); err != nil {
			errs = append(errs, badValue("pin", f.pin, "%v", err))
		}
	}
	if f.tunName == "" || len(f.tunName) > 15 {
		errs = append(errs, badValue("tun", f.tunName, "expected an interface name of 1-15 characters"))
	}
	if f.mode != "packet" && f.mode != "flow" {
		errs = append(errs, badValue("mode", f.mode, "expected packet or flow"))
	}
	if _, ok := systemStackModes[f.stack]; !ok && f.stack != "gvisor" {
		errs = append(errs, badValue("stack", f.stack, "expected gvisor, system, system-redirect or system-rewrite"))
	}
	if _, err := fec.ParsePolicy(f.fec); err != nil {
		errs = append(errs, badValue("fec", f.fec, "expected auto, off or K:M with K 1..%d and M 1..%d, like 16:4", fec.MaxK, fec.MaxM))
	}
	if f.mark == 0 || f.mark > 0xffffffff {
		errs = append(errs, badValue("mark", fmt.Sprint(f.mark), "expected 1..4294967295"))
	}
	if f.table <= 0 || int64(f.table) > 0xffffffff || f.table == 253 || f.table == 254 || f.table == 255 {
		errs = append(errs, badValue("table", fmt.Sprint(f.table), "expected a free routing table number 1..4294967295 (not 253-255)"))
	}
	if f.dns != "auto" && f.dns != "off" {
		errs = append(errs, badValue("dns", f.dns, "expected auto or off"))
	}
	if !filepath.IsAbs(f.resolvConf) {
		errs = append(errs, badValue("resolv-conf", f.resolvConf, "expected an absolute file path like /etc/resolv.conf"))
	}
	return errs
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
	defer ignoreSIGHUP(log)()
	cfg := tunnel.ClientConfig{
		Server: f.server,
		Token:  f.token,
		Routes: f.routes.vals,
		Logger: log,
	}
	cfg.FEC, _ = fec.ParsePolicy(f.fec) // checked
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
			return newFlowStack(f.stack, dev, mtu, open, log)
		}
	}
	c, err := tunnel.NewClient(cfg)
	if err != nil {
		return err
	}
	ops, err := startClientOps(f.metrics, f.statusSocket, c, log)
	if err != nil {
		return err
	}
	defer ops.close()
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
	return &hostDevice{Device: dev, routing: rt, name: name, dns: dh, f: f, dc: dc, log: log}, nil
}

// hostDevice is a TUN device whose Close also removes its routing and
// restores the host's DNS. It is a tunnel.DNSUpdater.
type hostDevice struct {
	tun.Device
	routing *tun.Routing
	name    string // the TUN's interface name
	once    sync.Once
	err     error

	// For DNS updates: what clientDNS needs again.
	f   *clientFlags
	dc  tunnel.DeviceConfig
	log *slog.Logger

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
