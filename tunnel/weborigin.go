package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// webOrigin is an origin in canonical form: "scheme://host:port", scheme
// and host lowercase, an IPv6 host in brackets, the port always explicit.
type webOrigin string

// ParseWebOrigin checks an origin for ServerConfig.WebOrigins (and
// `roam server --web-origin`): "scheme://host[:port]" with scheme http or
// https and nothing after the authority (no path, not even "/", no query,
// no user), as browsers send it in the Origin header. It returns the
// canonical form, with the default port (80, 443) made explicit.
func ParseWebOrigin(s string) (string, error) {
	o, err := parseOrigin(s)
	return string(o), err
}

func parseOrigin(s string) (webOrigin, error) {
	const want = "expected scheme://host[:port] like https://vpn.example.com or http://127.0.0.1:4433"
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("origin %q: %s", s, want)
	}
	scheme := strings.ToLower(u.Scheme)
	var defPort string
	switch scheme {
	case "https":
		defPort = "443"
	case "http":
		defPort = "80"
	default:
		return "", fmt.Errorf("origin %q: scheme must be http or https; %s", s, want)
	}
	switch {
	case u.Opaque != "" || u.Host == "":
		return "", fmt.Errorf("origin %q: no host; %s", s, want)
	case u.User != nil:
		return "", fmt.Errorf("origin %q: user information is not part of an origin; %s", s, want)
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery || strings.HasSuffix(s, "#"):
		return "", fmt.Errorf("origin %q: an origin has no path, query or fragment (not even a trailing /); %s", s, want)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return "", fmt.Errorf("origin %q: no host; %s", s, want)
	}
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return "", fmt.Errorf("origin %q: empty port; %s", s, want)
		}
		port = defPort
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("origin %q: port %q is not a number 1-65535; %s", s, port, want)
	}
	port = strings.TrimLeft(port, "0")
	return webOrigin(scheme + "://" + net.JoinHostPort(strings.ToLower(host), port)), nil
}

// parts returns the origin's scheme, host (without brackets) and host:port.
func (o webOrigin) parts() (scheme, host, hostport string) {
	scheme, hostport, _ = strings.Cut(string(o), "://")
	host, _, _ = net.SplitHostPort(hostport)
	return scheme, host, hostport
}

// isLoopbackHost reports whether host is "localhost" (or a name under
// .localhost) or a loopback IP address.
func isLoopbackHost(host string) bool {
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.Unmap().IsLoopback()
}

// checkOrigin applies the WebTransport origin rule to r (see
// ServerConfig.WebOrigins) and says why it refuses.
func (s *Server) checkOrigin(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil // not a browser
	}
	o, err := parseOrigin(origin)
	if err != nil {
		return fmt.Errorf("malformed Origin header: %w", err)
	}
	for _, allowed := range s.origins {
		if o == allowed {
			return nil
		}
	}
	// Always allowed: the page came from this server (same host and
	// port, over TCP or QUIC). Plain http only for loopback, where the
	// page is served over http to loopback clients.
	scheme, host, hostport := o.parts()
	authority, err := parseOrigin("https://" + r.Host)
	if err != nil {
		return fmt.Errorf("request authority %q is not host[:port]", r.Host)
	}
	if _, _, reqHostport := authority.parts(); hostport != reqHostport {
		return fmt.Errorf("origin is neither this server (%s) nor listed with --web-origin", reqHostport)
	}
	if scheme == "http" && !isLoopbackHost(host) {
		return errors.New("plain-http origin of a non-loopback host")
	}
	return nil
}

// rateLimitedLog lets each distinct message through at most once per
// rateLimitedPeriod, and at most rateLimitedKeys messages in all per
// period, so a browser retrying a refused handshake (or a scanner sending
// a new Origin every time) cannot flood the log.
type rateLimitedLog struct {
	mu    sync.Mutex
	last  map[string]time.Time // guarded by mu
	since time.Time            // when last was emptied; guarded by mu
}

const (
	rateLimitedPeriod = 10 * time.Minute
	rateLimitedKeys   = 1024 // distinct keys remembered (and logged) per period
)

// allow reports whether key may be logged at now.
func (l *rateLimitedLog) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < rateLimitedPeriod {
		return false
	}
	if l.last == nil || len(l.last) >= rateLimitedKeys {
		if l.last != nil && now.Sub(l.since) < rateLimitedPeriod {
			return false // full: nothing new until the period has passed
		}
		l.last, l.since = make(map[string]time.Time), now
	}
	l.last[key] = now
	return true
}

// rejectWeb counts a refused WebTransport request and logs why, once per
// origin and reason per rateLimitedPeriod. The browser sees only "Opening
// handshake failed", so this log line is how an operator finds out.
func (s *Server) rejectWeb(r *http.Request, reason string) {
	s.stats.WebRejected.Add(1)
	origin := r.Header.Get("Origin")
	if s.rejects.allow(origin+"\x00"+reason, time.Now()) {
		s.log.Warn("refused a browser (WebTransport) session", "origin", origin, "remote", r.RemoteAddr,
			"authority", r.Host, "path", r.URL.Path, "reason", reason)
	}
}
