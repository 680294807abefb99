package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun"
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
	stack     string
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
	fs.StringVar(&f.stack, "stack", "gvisor", "flow mode's TCP `STACK`: gvisor (userspace) or system (the kernel's TCP behind a NAT; falls back to gvisor if it cannot start)")
	fs.StringVar(&f.logLevel, "log-level", "info", "`LEVEL`: debug, info, warn or error")
	fs.StringVar(&f.debug, "debug", "", "serve pprof and counters on this loopback `HOST:PORT` (off by default)")
	help, err := parseFlags(fs, args, stdout)
	if help || err != nil {
		return nil, help, err
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
	if f.stack != "gvisor" && f.stack != "system" {
		return nil, false, usagef("client: invalid value %q for flag --stack: expected gvisor or system", f.stack)
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
		return clientDevice(f, dc)
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
	return c.Run(ctx)
}

// clientDevice creates and configures the kernel TUN with the assigned
// addresses and installs the routes with policy routing. Closing the
// returned device removes the routes, the rules and the device.
func clientDevice(f *clientFlags, dc tunnel.DeviceConfig) (datagram.Device, error) {
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
	return &hostDevice{Device: dev, routing: rt, name: name}, nil
}

// hostDevice is a TUN device whose Close also removes its routing.
type hostDevice struct {
	tun.Device
	routing *tun.Routing
	name    string // the TUN's interface name
	once    sync.Once
	err     error
}

func (d *hostDevice) Close() error {
	d.once.Do(func() {
		rerr := d.routing.Close()
		d.err = d.Device.Close()
		if d.err == nil {
			d.err = rerr
		}
	})
	return d.err
}
