package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun"
	"github.com/roamvpn/roam/tun/usernat"
	"github.com/roamvpn/roam/tunnel"
	"github.com/roamvpn/roam/tunnel/addrpool"
	"github.com/roamvpn/roam/tunnel/control"
	"github.com/roamvpn/roam/web"
)

type serverFlags struct {
	config      string
	tokenKeys   stringList
	revocations string

	listen   string
	stateDir string
	tokens   string
	pool4    prefixFlag
	pool6    prefixFlag
	nat      string
	tunName  string
	cert     string
	key      string
	routes   prefixList
	egress   string
	public   string
	logLevel string
	debug    string

	metrics      string // --metrics: Prometheus and probes; "" = off
	statusSocket string // --status-socket; "" = off

	web        bool
	fec        bool
	webOrigins stringList
	webDir     string

	dns        ipList         // --dns: pushed to clients
	dnsForward string         // --dns-forward: the userspace NAT's upstream resolver
	upstream   netip.AddrPort // the resolver in use (set by serverDevice in userspace mode)

	// From the config file: [server.users.NAME] (nil: none).
	users map[string]auth.UserPolicy
	fs    *flag.FlagSet // the flags above
}

// webAssets is the browser client embedded in the binary (index.html,
// roam.js, worker.js, app.js, wasm_exec.js, roam.wasm at the root; the
// last two only after `go generate ./web`). --web-dir replaces it.
var webAssets fs.FS = web.Assets

func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/roam"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "roam")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "roam")
	}
	return "roam-state"
}

func defaultNAT() string {
	if runtime.GOOS == "linux" && os.Geteuid() == 0 {
		return "kernel"
	}
	return "userspace"
}

// newServerFlags returns the server's flags with their defaults and the
// FlagSet that sets them.
func newServerFlags() (*serverFlags, *flag.FlagSet) {
	f := &serverFlags{
		pool4:      prefixFlag{val: netip.MustParsePrefix("100.96.0.0/16"), want4: true},
		pool6:      prefixFlag{val: netip.MustParsePrefix("fd00:96::/64")},
		webOrigins: stringList{check: tunnel.ParseWebOrigin},
	}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.StringVar(&f.config, "config", "", "read settings from the TOML `FILE`'s [server] table (docs/config.md); flags override it; SIGHUP re-reads it")
	fs.StringVar(&f.listen, "listen", "0.0.0.0:4433", "UDP `HOST:PORT` to serve HTTP/3 on")
	fs.StringVar(&f.stateDir, "state-dir", defaultStateDir(), "`DIR` for the certificate, its pin, the server secret, the token signing key and the default tokens file")
	fs.StringVar(&f.tokens, "tokens", "", "tokens `FILE` (one per line, # comments); default STATE_DIR/tokens, created with one token if missing")
	fs.Var(&f.tokenKeys, "token-key", "public key `FILE` whose signed tokens are accepted (repeatable); default STATE_DIR/token.pub, created with the signing key STATE_DIR/token.key")
	fs.StringVar(&f.revocations, "revocations", "", "revoked tokens `FILE`; default STATE_DIR/revoked (a missing file revokes nothing)")
	fs.Var(&f.pool4, "pool4", "IPv4 client address pool `CIDR` (first address is the server's)")
	fs.Var(&f.pool6, "pool6", "IPv6 client address pool `CIDR` (first address is the server's)")
	fs.StringVar(&f.nat, "nat", defaultNAT(), "NAT `MODE`: kernel (TUN + nftables, needs root) or userspace (no privileges)")
	fs.StringVar(&f.tunName, "tun", "roam0", "TUN device `NAME` (kernel NAT)")
	fs.StringVar(&f.cert, "cert", "", "TLS certificate `FILE` (PEM); default: a self-signed one in STATE_DIR")
	fs.StringVar(&f.key, "key", "", "TLS private key `FILE` (PEM), with --cert")
	fs.Var(&f.routes, "route", "`CIDR` clients may reach (repeatable); default 0.0.0.0/0 and ::/0")
	fs.StringVar(&f.egress, "egress", "", "masquerade only out of this `INTERFACE` (kernel NAT); default: any but the TUN")
	fs.StringVar(&f.public, "public", "", "`HOST` clients dial, for the printed client line; default: a local address")
	fs.StringVar(&f.logLevel, "log-level", "info", "`LEVEL`: debug, info, warn or error")
	fs.StringVar(&f.debug, "debug", "", "serve pprof and counters on this loopback `HOST:PORT` (off by default)")
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus /metrics and the /healthz, /readyz probes on `HOST:PORT` (off by default; keep it on loopback unless scraped from elsewhere)")
	fs.StringVar(&f.statusSocket, "status-socket", control.DefaultPath("server"), "unix socket `PATH` that roam status queries (\"\" for none)")
	fs.BoolVar(&f.web, "web", true, "serve the browser client: WebTransport sessions, and the page over HTTP/3 and over TCP on the same port number (--web=false: none of it)")
	fs.BoolVar(&f.fec, "fec", true, "answer clients that ask for forward error correction (roam client --fec) with it (--fec=false: plain QUIC for everyone)")
	fs.Var(&f.webOrigins, "web-origin", "`ORIGIN` (scheme://host[:port]) whose pages may also open browser sessions, besides the server's own page (repeatable)")
	fs.StringVar(&f.webDir, "web-dir", "", "serve the browser client's files from `DIR` instead of the embedded ones (development)")
	// DNS push (docs/protocol.md, "DNS push").
	fs.Var(&f.dns, "dns", "DNS server `ADDR` pushed to clients (repeatable); default with --nat userspace: the pools' gateway addresses, answered by forwarding to --dns-forward")
	fs.StringVar(&f.dnsForward, "dns-forward", "", "resolver `ADDR:PORT` the userspace NAT forwards DNS on the gateway addresses to; default: the first nameserver of /etc/resolv.conf, port 53")
	f.fs = fs
	return f, fs
}

// parseServerFlags parses the command line and the --config file. Every
// problem is reported, one a line, as a usage error.
func parseServerFlags(args []string, stdout io.Writer) (*serverFlags, bool, error) {
	f, fs := newServerFlags()
	help, err := parseFlags(fs, args, stdout)
	if help || err != nil {
		return nil, help, err
	}
	var cfg *configFile
	if f.config != "" {
		cfg = loadConfig(f.config)
	}
	if errs := f.load(fs, cfg); len(errs) > 0 {
		return nil, false, usageErrors("server", errs)
	}
	return f, false, nil
}

// load applies cfg's [server] table (nil cfg: none) to the flags fs parsed
// and checks the result; `roam validate` calls it too.
func (f *serverFlags) load(fs *flag.FlagSet, cfg *configFile) []error {
	other := func(key string, v *tomlValue) (bool, []error) {
		if key != "users" {
			return false, nil
		}
		users, errs := parseUsers(cfg.path, v)
		f.users = users
		return true, errs
	}
	return loadFlags(fs, cfg, other, f.check)
}

// check checks the parsed values; it touches nothing but reads --web-dir.
func (f *serverFlags) check() []*flagError {
	errs := commonChecks(f.logLevel, f.debug)
	if _, _, err := net.SplitHostPort(f.listen); err != nil {
		errs = append(errs, badValue("listen", f.listen, "expected HOST:PORT like 0.0.0.0:4433"))
	}
	if f.nat != "kernel" && f.nat != "userspace" {
		errs = append(errs, badValue("nat", f.nat, "expected kernel or userspace"))
	}
	if (f.cert == "") != (f.key == "") {
		errs = append(errs, badFlags([]string{"cert", "key"}, "flags --cert and --key go together: give both or neither",
			"cert and key go together: give both or neither"))
	}
	if f.tunName == "" || len(f.tunName) > 15 {
		errs = append(errs, badValue("tun", f.tunName, "expected an interface name of 1-15 characters"))
	}
	for _, p := range []struct {
		name string
		val  netip.Prefix
	}{{"pool4", f.pool4.val}, {"pool6", f.pool6.val}} {
		if _, err := addrpool.New(p.val); err != nil {
			errs = append(errs, badValue(p.name, p.val.String(), "%s", strings.TrimPrefix(err.Error(), "addrpool: ")))
		}
	}
	if f.webDir != "" {
		if st, err := os.Stat(f.webDir); err != nil || !st.IsDir() {
			errs = append(errs, badValue("web-dir", f.webDir, "expected a directory holding index.html and roam.wasm"))
		}
	}
	if !f.web && (f.webDir != "" || len(f.webOrigins.vals) > 0) {
		errs = append(errs, badFlags([]string{"web-dir", "web-origin", "web"}, "flags --web-dir and --web-origin need the browser client; drop them or --web=false",
			"web_dir and web_origin need the browser client; drop them or web = false"))
	}
	if f.dnsForward != "" {
		if _, err := netip.ParseAddrPort(f.dnsForward); err != nil {
			errs = append(errs, badValue("dns-forward", f.dnsForward, "expected ADDR:PORT like 127.0.0.53:53 or [::1]:53"))
		}
	}
	return errs
}

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, help, err := parseServerFlags(args, stdout)
	if help || err != nil {
		return err
	}
	log, err := startLogging(stderr, f.logLevel, f.debug)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(f.stateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}

	// Tokens: the default file is created with one fresh token.
	tokensFile, printToken := f.tokensFile(), "<a token from "+f.tokens+">"
	if f.tokens == "" {
		first, err := ensureTokensFile(tokensFile, log)
		if err != nil {
			return err
		}
		if first != "" {
			printToken = first
		} else {
			printToken = "<a token from roam token issue>"
		}
	}
	// Signed tokens: the default public key file is created with the
	// signing key (roam token issue uses it).
	if len(f.tokenKeys.vals) == 0 {
		_, created, err := auth.LoadOrCreateSigningKey(f.stateDir)
		if err != nil {
			return err
		}
		if created {
			log.Info("created a token signing key", "file", filepath.Join(f.stateDir, auth.SigningKeyFileName))
		}
	}
	authn, authSum, err := buildAuth(f)
	if err != nil {
		return err
	}

	// TLS certificate and pin.
	var cert tls.Certificate
	if f.cert != "" {
		if cert, err = auth.LoadCert(f.cert, f.key); err != nil {
			return err
		}
	} else {
		host, _, _ := net.SplitHostPort(f.listen)
		var ips []net.IP
		var names []string
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
		if f.public != "" {
			if ip := net.ParseIP(f.public); ip != nil {
				ips = append(ips, ip)
			} else {
				names = append(names, f.public)
			}
		}
		var created bool
		if cert, created, err = auth.LoadOrCreateCert(f.stateDir, names, ips); err != nil {
			return err
		}
		if created {
			log.Info("created a self-signed certificate", "dir", f.stateDir)
		}
	}
	der := cert.Certificate[0]
	pin := auth.Pin(der)
	if err := auth.WritePin(f.stateDir, der); err != nil {
		return err
	}

	// The secret keeps stateless resets and session tickets valid across
	// restarts: clients notice a restart at once and resume with 0-RTT.
	secret, _, err := auth.LoadOrCreateSecret(f.stateDir)
	if err != nil {
		return err
	}

	pool4, err := addrpool.New(f.pool4.val)
	if err != nil {
		return usagef("server: invalid value %q for flag --pool4: %v", f.pool4.val, err)
	}
	pool6, err := addrpool.New(f.pool6.val)
	if err != nil {
		return usagef("server: invalid value %q for flag --pool6: %v", f.pool6.val, err)
	}

	pc, err := net.ListenPacket("udp", f.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", f.listen, err)
	}
	defer pc.Close()

	dev, cleanup, err := serverDevice(f, pool4, pool6, log)
	if err != nil {
		return err
	}
	defer cleanup()

	assets := webAssets
	if f.webDir != "" {
		assets = os.DirFS(f.webDir)
	}
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS:    &tls.Config{Certificates: []tls.Certificate{cert}},
		Auth:   authn,
		Pool4:  pool4,
		Pool6:  pool6,
		Routes: f.routes.vals,
		DNS:    pushDNS(f, pool4, pool6),
		Device: dev,
		Secret: secret,
		Logger: log,
		// Flows to the gateway reach the host's loopback in userspace
		// mode, as packets do there.
		GatewayLoopback: f.nat == "userspace",
		GatewayDNS:      f.upstream,

		DisableWeb: !f.web,
		DisableFEC: !f.fec,
		Web:        assets,
		WebOrigins: f.webOrigins.vals,
		// Browsers cannot pin the long-lived self-signed certificate;
		// they get rotating short-lived ones (a --cert is used as is).
		WebSelfSigned: f.cert == "",
		Version:       "roam " + version,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	handleSIGHUP(ctx, &reloader{args: args, running: f, srv: srv, log: log})
	go func() {
		<-srv.Ready()
		port := pc.LocalAddr().(*net.UDPAddr).Port
		host := f.public
		if host == "" {
			host = publicHost(f.listen)
		}
		log.Info("roam server ready", "listen", pc.LocalAddr(), "nat", f.nat, "pool4", f.pool4.val, "pool6", f.pool6.val,
			"pin", pin, "tokens_file", tokensFile, "tokens", authSum.tokens, "token_keys", authSum.keys,
			"revocations", authSum.revoked, "users", authSum.users, "config", f.config, "web", webState(f, assets, srv))
		line := fmt.Sprintf("roam client --server %s --token %s --pin %s",
			net.JoinHostPort(host, fmt.Sprint(port)), printToken, pin)
		fmt.Fprintf(stdout, "Connect a client with:\n  %s\n", line)
		if f.web && assets != nil && srv.WebAddr() != nil {
			fmt.Fprintf(stdout, "Browser client: https://%s/", net.JoinHostPort(host, fmt.Sprint(port)))
			if lh, _, _ := net.SplitHostPort(f.listen); lh == "" || net.ParseIP(lh) != nil && (net.ParseIP(lh).IsUnspecified() || net.ParseIP(lh).IsLoopback()) {
				fmt.Fprintf(stdout, " (on this host also http://127.0.0.1:%d/)", port)
			}
			fmt.Fprintln(stdout)
		}
	}()
	ops, err := startServerOps(f.metrics, f.statusSocket, srv, log)
	if err != nil {
		return err
	}
	defer ops.close()
	err = srv.Serve(ctx, pc)
	log.Info("roam server stopped")
	return err
}

// webState describes the browser client for the ready log line.
func webState(f *serverFlags, web fs.FS, srv *tunnel.Server) string {
	switch {
	case !f.web:
		return "off"
	case web == nil:
		return "sessions only (no page in this binary)"
	case !hasFile(web, "roam.wasm"):
		// The page loads but cannot start the client.
		return "page without roam.wasm (run go generate ./web and rebuild, or --web-dir)"
	case srv.WebAddr() == nil:
		return "page over HTTP/3 only (TCP port busy)"
	case f.webDir != "":
		return "page from " + f.webDir
	}
	return "on"
}

func hasFile(fsys fs.FS, name string) bool {
	st, err := fs.Stat(fsys, name)
	return err == nil && !st.IsDir()
}

// serverDevice builds the NAT side: kernel TUN + forwarding + nftables
// masquerade, or the userspace stack. cleanup undoes the host changes.
func serverDevice(f *serverFlags, pool4, pool6 *addrpool.Pool, log *slog.Logger) (datagram.Device, func(), error) {
	gw4 := netip.PrefixFrom(pool4.Gateway(), pool4.Prefix().Bits())
	gw6 := netip.PrefixFrom(pool6.Gateway(), pool6.Prefix().Bits())
	if f.nat == "userspace" {
		f.upstream = dnsForward(f, log)
		st, err := usernat.New(usernat.Config{
			MTU:      tunnel.TunnelMTU,
			Gateway4: pool4.Gateway(),
			Gateway6: pool6.Gateway(),
			Prefixes: []netip.Prefix{pool4.Prefix(), pool6.Prefix()},
			DNS:      f.upstream,
			Logger:   log, // usernat adds component=usernat itself
		})
		if err != nil {
			return nil, nil, fmt.Errorf("userspace NAT: %w", err)
		}
		return st, func() { st.Close() }, nil
	}
	dev, name, err := tun.Create(f.tunName, tunnel.TunnelMTU)
	if err != nil {
		return nil, nil, fmt.Errorf("creating TUN device %s: %w (run as root, or use --nat userspace)", f.tunName, err)
	}
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	undo = append(undo, func() { dev.Close() })
	if err := tun.ConfigureLink(name, []netip.Prefix{gw4, gw6}, tunnel.TunnelMTU); err != nil {
		cleanup()
		return nil, nil, err
	}
	restore, err := tun.EnableForwarding()
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("enabling IP forwarding: %w", err)
	}
	undo = append(undo, func() {
		if err := restore(); err != nil {
			log.Warn("restoring IP forwarding", "err", err)
		}
	})
	nat, err := tun.NewMasquerade(tun.MasqueradeConfig{TunName: name, Pools: []netip.Prefix{pool4.Prefix(), pool6.Prefix()}, Egress: f.egress})
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("setting up nftables masquerade: %w", err)
	}
	undo = append(undo, func() {
		if err := nat.Close(); err != nil {
			log.Warn("removing nftables table", "err", err)
		}
	})
	log.Info("kernel NAT ready", "tun", name, "gateway4", gw4, "gateway6", gw6)
	return dev, cleanup, nil
}

// ensureTokensFile creates path with one new token if it does not exist,
// and returns the first token in it (for the printed client line).
func ensureTokensFile(path string, log *slog.Logger) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		tok, err := auth.GenerateToken()
		if err != nil {
			return "", err
		}
		content := "# Roam bearer tokens, one per line.\n" + tok + "\n"
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return "", fmt.Errorf("creating tokens file: %w", err)
		}
		log.Info("created a tokens file with one new token", "file", path)
		return tok, nil
	}
	if err != nil {
		return "", fmt.Errorf("tokens file: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line != "" {
			return line, nil
		}
	}
	return "", nil // LoadTokens reports the empty file
}

// publicHost picks the host to print in the client line: the listen host
// if it is specific, else the first global unicast address of this host.
func publicHost(listen string) string {
	host, _, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return host
	}
	addrs, _ := net.InterfaceAddrs()
	var v6 string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || !ipn.IP.IsGlobalUnicast() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	if v6 != "" {
		return v6
	}
	return "127.0.0.1"
}
