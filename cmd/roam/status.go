package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamvpn/roam/tunnel"
	"github.com/roamvpn/roam/tunnel/control"
	"github.com/roamvpn/roam/tunnel/metrics"
)

// statusNow is the clock `roam status` measures ages with, and
// statusPath the default socket paths it tries; tests replace them.
var (
	statusNow  = time.Now
	statusPath = control.DefaultPath
)

// runStatus is `roam status [--socket PATH] [--json]`: it queries the
// status socket of a running server or client (without --socket, both
// default paths) and prints a table, or the replies as JSON.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("status", flag.ContinueOnError)
	socket := fset.String("socket", "", "status socket `PATH` of a running roam server or client; default: "+defaultSockets())
	asJSON := fset.Bool("json", false, "print the status as JSON")
	help, err := parseFlags(fset, args, stdout)
	if help || err != nil {
		return err
	}
	if fset.NArg() > 0 {
		return usagef("status: unexpected argument %q (flags: --socket PATH, --json)", fset.Arg(0))
	}
	paths := []string{*socket}
	if *socket == "" {
		paths = nil
		for _, kind := range []string{"server", "client"} {
			if p := statusPath(kind); p != "" {
				paths = append(paths, p)
			}
		}
		if len(paths) == 0 {
			return errors.New("status: no default status socket (not root and $XDG_RUNTIME_DIR is not set); use --socket PATH")
		}
	}
	var merged control.Reply
	var missing []string
	var failed []error
	for _, p := range paths {
		r, err := control.Query(ctx, p)
		switch {
		case err == nil:
			if r.Server != nil {
				merged.Server = r.Server
			}
			if r.Client != nil {
				merged.Client = r.Client
			}
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, p)
		case errors.Is(err, fs.ErrPermission):
			failed = append(failed, fmt.Errorf("%s: %w (run roam status as root or as the user running roam)", p, err))
		case errors.Is(err, syscall.ECONNREFUSED):
			failed = append(failed, fmt.Errorf("%s: %w (a stale socket: the roam that created it is not running)", p, err))
		default:
			failed = append(failed, fmt.Errorf("%s: %w", p, err))
		}
	}
	if merged.Server == nil && merged.Client == nil {
		if len(failed) > 0 {
			return errors.Join(failed...)
		}
		if *socket != "" {
			return fmt.Errorf("status: no status socket at %s (is roam running with --status-socket %s?)", *socket, *socket)
		}
		return fmt.Errorf("status: no status socket at %s (is roam server or roam client running? else use --socket PATH)", strings.Join(missing, " or "))
	}
	for _, err := range failed { // one answered; say why the other did not
		fmt.Fprintf(stderr, "roam status: %v\n", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(merged)
	}
	now := statusNow()
	if merged.Server != nil {
		printServerStatus(stdout, merged.Server, now)
	}
	if merged.Server != nil && merged.Client != nil {
		fmt.Fprintln(stdout)
	}
	if merged.Client != nil {
		printClientStatus(stdout, merged.Client, now)
	}
	return nil
}

func defaultSockets() string {
	s, c := statusPath("server"), statusPath("client")
	if s == "" {
		return "none (set $XDG_RUNTIME_DIR)"
	}
	return s + ", then " + c
}

// printServerStatus prints st as a header line and a table of sessions.
func printServerStatus(w io.Writer, st *tunnel.ServerStatus, now time.Time) {
	listen := st.Listen
	if listen == "" {
		listen = "(not listening)"
	}
	fmt.Fprintf(w, "server %s  listen %s", st.Version, listen)
	if !st.Started.IsZero() {
		fmt.Fprintf(w, "  up %s", age(now, st.Started))
	}
	fmt.Fprintf(w, "  sessions %d\n", len(st.Sessions))
	if st.FEC != nil {
		fmt.Fprintf(w, "fec %s\n", fecLine(st.FEC))
	}
	if len(st.Sessions) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tUSER\tTOKEN\tREMOTE\tADDRS\tSINCE\tRTT\tTX\tRX\tFLOWS")
	for _, s := range st.Sessions {
		user := s.User
		if user == "" {
			user = "-"
		}
		addrs := make([]string, len(s.Addrs))
		for i, a := range s.Addrs {
			addrs[i] = a.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", s.Kind, user, s.Owner, s.Remote,
			orDash(strings.Join(addrs, ",")), age(now, s.Since), rtt(s.RTT),
			traffic(s.TxBytes, s.TxPackets), traffic(s.RxBytes, s.RxPackets), s.Flows)
	}
	tw.Flush()
}

// printClientStatus prints st as aligned "key value" lines.
func printClientStatus(w io.Writer, st *tunnel.ClientStatus, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	state := orDash(st.State)
	if !st.Since.IsZero() {
		state += " for " + age(now, st.Since)
	}
	fmt.Fprintf(tw, "client\t%s\n", state)
	fmt.Fprintf(tw, "server\t%s\n", st.Server)
	fmt.Fprintf(tw, "addrs\t%s\n", prefixes(st.Addrs))
	fmt.Fprintf(tw, "routes\t%s\n", prefixes(st.Routes))
	if len(st.DNS) > 0 {
		dns := make([]string, len(st.DNS))
		for i, a := range st.DNS {
			dns[i] = a.String()
		}
		fmt.Fprintf(tw, "dns\t%s\n", strings.Join(dns, ", "))
	}
	if len(st.Paths) == 0 {
		fmt.Fprintf(tw, "paths\t-\n")
	}
	for i, p := range st.Paths {
		key := ""
		if i == 0 {
			key = "paths"
		}
		active := ""
		if p.Active {
			active = " (active)"
		}
		fmt.Fprintf(tw, "%s\t%s -> %s%s\n", key, p.Local, p.Remote, active)
	}
	fmt.Fprintf(tw, "rtt\t%s\n", rtt(st.RTT))
	fmt.Fprintf(tw, "migrations\t%d\n", st.Migrations)
	fmt.Fprintf(tw, "reconnects\t%d\n", st.Reconnects)
	fmt.Fprintf(tw, "flows\t%d\n", st.Flows)
	fmt.Fprintf(tw, "tx\t%s\n", traffic(st.TxBytes, st.TxPackets))
	fmt.Fprintf(tw, "rx\t%s\n", traffic(st.RxBytes, st.RxPackets))
	if st.FEC != nil {
		fmt.Fprintf(tw, "fec\t%s\n", fecLine(st.FEC))
	}
	tw.Flush()
}

// fecLine summarizes forward error correction in one line.
func fecLine(f *tunnel.FECStatus) string {
	if !f.Active && f.DataFrames == 0 && f.Lost == 0 {
		return "inactive"
	}
	state := "active"
	if !f.Active {
		state = "inactive"
	}
	return fmt.Sprintf("%s, parity %s, peer loss %.2f%%, lost %d (recovered %d, unrecovered %d), hold timeouts %d, sent %d data + %d parity",
		state, f.Parity, 100*f.PeerLoss, f.Lost, f.Recovered, f.Unrecovered, f.HoldTimeouts, f.DataFrames, f.ParityFrames)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "-"
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return strings.Join(out, ", ")
}

// age is now-t rounded to seconds ("3m2s"), or "-" for a zero t.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String()
}

// rtt is d rounded to 0.1 ms, or "-" before the first sample.
func rtt(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(100 * time.Microsecond).String()
}

// traffic is "1.5MiB/1200p": bytes in binary units and packets.
func traffic(bytes, packets uint64) string {
	return fmt.Sprintf("%s/%dp", size(bytes), packets)
}

func size(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTP"[exp])
}

// ops are the metrics listener and status socket of a running server or
// client; close stops both.
type ops struct {
	metrics *metrics.Server
	socket  *control.Server
}

func (o *ops) close() {
	if o.metrics != nil {
		o.metrics.Close()
	}
	if o.socket != nil {
		o.socket.Close()
	}
}

// opsConfig is what startOps serves: kind is "server" or "client".
type opsConfig struct {
	kind          string
	metricsAddr   string // --metrics; "" = off
	socketPath    string // --status-socket; "" = off
	collector     prometheus.Collector
	ready         func() error
	serverStatus  func() tunnel.ServerStatus
	clientStatus  func() tunnel.ClientStatus
	defaultSocket string // the flag's default: failing on it only warns
}

// startOps starts the --metrics listener and the --status-socket. A
// status socket at the default path that cannot be created (another roam
// holds it, no permission) is logged and skipped, so a second instance
// still runs; an explicit path, or a metrics address, that fails is an
// error.
func startOps(c opsConfig, log *slog.Logger) (*ops, error) {
	o := &ops{}
	if c.metricsAddr != "" {
		m, err := metrics.Listen(c.metricsAddr, metrics.Handler(metrics.NewRegistry(c.collector), c.ready), log)
		if err != nil {
			return nil, fmt.Errorf("%s: flag --metrics: %w", c.kind, err)
		}
		o.metrics = m
	}
	if c.socketPath != "" {
		s, err := control.Listen(control.Config{Path: c.socketPath, Server: c.serverStatus, Client: c.clientStatus, Logger: log})
		switch {
		case err == nil:
			o.socket = s
		case c.socketPath == c.defaultSocket:
			log.Warn("no status socket; roam status will not see this "+c.kind, "err", err)
		default:
			o.close()
			return nil, fmt.Errorf("%s: flag --status-socket: %w", c.kind, err)
		}
	}
	return o, nil
}

// startServerOps starts --metrics and --status-socket for srv.
func startServerOps(metricsAddr, socketPath string, srv *tunnel.Server, log *slog.Logger) (*ops, error) {
	return startOps(opsConfig{
		kind: "server", metricsAddr: metricsAddr, socketPath: socketPath, defaultSocket: control.DefaultPath("server"),
		collector:    metrics.NewServerCollector(srv, metrics.ServerOptions{}),
		ready:        metrics.ServerReady(srv),
		serverStatus: srv.Status,
	}, log)
}

// startClientOps starts --metrics and --status-socket for c.
func startClientOps(metricsAddr, socketPath string, c *tunnel.Client, log *slog.Logger) (*ops, error) {
	return startOps(opsConfig{
		kind: "client", metricsAddr: metricsAddr, socketPath: socketPath, defaultSocket: control.DefaultPath("client"),
		collector:    metrics.NewClientCollector(c),
		ready:        metrics.ClientReady(c),
		clientStatus: c.Status,
	}, log)
}
