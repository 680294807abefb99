package metrics

import (
	"errors"
	"fmt"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel"
)

// ServerSource is what the server collector reads; *tunnel.Server
// implements it. Stats returns live counters the collector only loads;
// Status returns a snapshot the collector owns.
type ServerSource interface {
	Stats() *tunnel.ServerStats
	Status() tunnel.ServerStatus
}

// ClientSource is what the client collector reads; *tunnel.Client
// implements it.
type ClientSource interface {
	Stats() *datagram.Stats
	Status() tunnel.ClientStatus
}

// RTTBuckets are the upper bounds, in seconds, of the per-session RTT
// histogram: 1 ms to 2.5 s.
var RTTBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// stat is one exported counter or gauge read from a stats struct of type
// S. fields names the struct fields it reads (their sum is the value), so
// a test can check that every field is exported.
type stat[S any] struct {
	name   string // desc's name
	desc   *prometheus.Desc
	typ    prometheus.ValueType
	labels []string // label values, if desc has labels
	fields []string
	get    func(*S) float64
}

func (st *stat[S]) collect(s *S, ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(st.desc, st.typ, st.get(s), st.labels...)
}

// dropReasons maps the reason label of dropped_packets_total to the
// datagram.Stats field it reads.
var dropReasons = []struct {
	reason, field string
	get           func(*datagram.Stats) uint64
}{
	{"malformed", "DropMalformed", func(s *datagram.Stats) uint64 { return s.DropMalformed.Load() }},
	{"src", "DropSrc", func(s *datagram.Stats) uint64 { return s.DropSrc.Load() }},
	{"dst", "DropDst", func(s *datagram.Stats) uint64 { return s.DropDst.Load() }},
	{"policy", "DropPolicy", func(s *datagram.Stats) uint64 { return s.DropPolicy.Load() }},
	{"too_big", "DropTooBig", func(s *datagram.Stats) uint64 { return s.DropTooBig.Load() }},
	{"queue_full", "DropQueueFull", func(s *datagram.Stats) uint64 { return s.DropQueueFull.Load() }},
	{"context", "DropContext", func(s *datagram.Stats) uint64 { return s.DropContext.Load() }},
	{"stream", "DropStream", func(s *datagram.Stats) uint64 { return s.DropStream.Load() }},
	{"no_link", "DropNoLink", func(s *datagram.Stats) uint64 { return s.DropNoLink.Load() }},
}

// datagramStats returns the counters of the datagram.Stats dg finds in an
// S, under prefix (roam_server or roam_client), followed by extra.
func datagramStats[S any](prefix string, dg func(*S) *datagram.Stats, extra []stat[S]) ([]stat[S], *prometheus.Desc) {
	c := func(name, help string, field string, get func(*datagram.Stats) uint64) stat[S] {
		return stat[S]{
			name:   prefix + "_" + name,
			desc:   prometheus.NewDesc(prefix+"_"+name, help, nil, nil),
			typ:    prometheus.CounterValue,
			fields: []string{field},
			get:    func(s *S) float64 { return float64(get(dg(s))) },
		}
	}
	out := []stat[S]{
		c("tx_packets_total", "IP packets sent to the peer as datagrams.", "TxPackets", func(s *datagram.Stats) uint64 { return s.TxPackets.Load() }),
		c("tx_bytes_total", "Bytes of IP packets sent to the peer as datagrams.", "TxBytes", func(s *datagram.Stats) uint64 { return s.TxBytes.Load() }),
		c("rx_packets_total", "IP packets received from the peer that passed every check.", "RxPackets", func(s *datagram.Stats) uint64 { return s.RxPackets.Load() }),
		c("rx_bytes_total", "Bytes of IP packets received from the peer that passed every check.", "RxBytes", func(s *datagram.Stats) uint64 { return s.RxBytes.Load() }),
		c("rx_datagrams_total", "Datagrams taken from the QUIC connection, before any check; the peer's tx_packets_total minus this is what was lost on the way (wire, kernel, QUIC library queues).", "RxDatagrams", func(s *datagram.Stats) uint64 { return s.RxDatagrams.Load() }),
		c("icmp_too_big_total", "ICMP fragmentation-needed / packet-too-big messages written back to the device.", "ICMPTooBig", func(s *datagram.Stats) uint64 { return s.ICMPTooBig.Load() }),
		c("device_write_errors_total", "Failed device writes (the batch's packets are lost).", "WriteErrors", func(s *datagram.Stats) uint64 { return s.WriteErrors.Load() }),
		c("device_write_batches_total", "Device write calls.", "WriteBatches", func(s *datagram.Stats) uint64 { return s.WriteBatches.Load() }),
		c("device_write_packets_total", "Packets passed to device write calls.", "WritePackets", func(s *datagram.Stats) uint64 { return s.WritePackets.Load() }),
	}
	drop := prometheus.NewDesc(prefix+"_dropped_packets_total", "Packets and datagrams dropped, by reason.", []string{"reason"}, nil)
	for _, r := range dropReasons {
		out = append(out, stat[S]{
			name:   prefix + "_dropped_packets_total",
			desc:   drop,
			typ:    prometheus.CounterValue,
			labels: []string{r.reason},
			fields: []string{r.field},
			get:    func(s *S) float64 { return float64(r.get(dg(s))) },
		})
	}
	return append(out, extra...), drop
}

// ServerOptions are the knobs of NewServerCollector; the zero value is the
// default.
type ServerOptions struct {
	// PerUser adds roam_server_user_sessions, roam_server_user_tx_bytes
	// and roam_server_user_rx_bytes, labeled by user (the token's user
	// name, or its ID for a plain token), over the live sessions. Off by
	// default: one time series per user.
	PerUser bool
}

// serverCollector is the prometheus.Collector of NewServerCollector.
type serverCollector struct {
	src   ServerSource
	opts  ServerOptions
	stats []stat[tunnel.ServerStats]

	info, started, sessions, rtt *prometheus.Desc
	userSessions, userTx, userRx *prometheus.Desc
	fec                          *fecMetrics
}

// NewServerCollector returns a collector that reads src at every scrape.
// Register it once per registry.
func NewServerCollector(src ServerSource, opts ServerOptions) prometheus.Collector {
	const p = "roam_server"
	c := func(name, help string, get func(*tunnel.ServerStats) uint64, fields ...string) stat[tunnel.ServerStats] {
		return stat[tunnel.ServerStats]{
			name:   p + "_" + name,
			desc:   prometheus.NewDesc(p+"_"+name, help, nil, nil),
			typ:    prometheus.CounterValue,
			fields: fields,
			get:    func(s *tunnel.ServerStats) float64 { return float64(get(s)) },
		}
	}
	g := func(name, help string, get func(*tunnel.ServerStats) int64, field string) stat[tunnel.ServerStats] {
		return stat[tunnel.ServerStats]{
			name:   p + "_" + name,
			desc:   prometheus.NewDesc(p+"_"+name, help, nil, nil),
			typ:    prometheus.GaugeValue,
			fields: []string{field},
			get:    func(s *tunnel.ServerStats) float64 { return float64(get(s)) },
		}
	}
	flowBytes := prometheus.NewDesc(p+"_flow_bytes_total", "Flow (TCP stream) payload bytes, by direction: up from the clients, down to them.", []string{"direction"}, nil)
	extra := []stat[tunnel.ServerStats]{
		c("sessions_total", "CONNECT-IP sessions established.", func(s *tunnel.ServerStats) uint64 { return s.SessionsTotal.Load() }, "SessionsTotal"),
		g("sessions_active", "Live CONNECT-IP sessions.", func(s *tunnel.ServerStats) int64 { return s.SessionsActive.Load() }, "SessionsActive"),
		c("auth_failures_total", "Requests refused for a missing, unknown, expired or revoked token.", func(s *tunnel.ServerStats) uint64 { return s.AuthFailures.Load() }, "AuthFailures"),
		c("auth_rate_limited_total", "Requests answered 429 without verifying, their source having failed authentication too often.", func(s *tunnel.ServerStats) uint64 { return s.AuthRateLimited.Load() }, "AuthRateLimited"),
		c("sessions_revoked_total", "Live sessions ended by a reload because their token was no longer accepted.", func(s *tunnel.ServerStats) uint64 { return s.SessionsRevoked.Load() }, "SessionsRevoked"),
		c("sessions_expired_total", "Live sessions ended when their token expired.", func(s *tunnel.ServerStats) uint64 { return s.SessionsExpired.Load() }, "SessionsExpired"),
		c("capsule_errors_total", "Sessions ended by a malformed capsule.", func(s *tunnel.ServerStats) uint64 { return s.CapsuleErrors.Load() }, "CapsuleErrors"),
		c("device_read_errors_total", "Failed device reads (other than closure).", func(s *tunnel.ServerStats) uint64 { return s.DeviceReadErrors.Load() + s.ReadErrors.Load() }, "DeviceReadErrors", "ReadErrors"),
		c("send_errors_total", "Datagrams that failed to send for a reason other than size (the connection was closing).", func(s *tunnel.ServerStats) uint64 { return s.SendErrors.Load() }, "SendErrors"),
		c("flows_total", "Flows (TCP streams) opened.", func(s *tunnel.ServerStats) uint64 { return s.FlowsTotal.Load() }, "FlowsTotal"),
		g("flows_active", "Flows (TCP streams) open now.", func(s *tunnel.ServerStats) int64 { return s.FlowsActive.Load() }, "FlowsActive"),
		c("flows_refused_total", "Flow requests answered with an error.", func(s *tunnel.ServerStats) uint64 { return s.FlowsRefused.Load() }, "FlowsRefused"),
		{name: p + "_flow_bytes_total", desc: flowBytes, typ: prometheus.CounterValue, labels: []string{"up"}, fields: []string{"FlowBytesUp"},
			get: func(s *tunnel.ServerStats) float64 { return float64(s.FlowBytesUp.Load()) }},
		{name: p + "_flow_bytes_total", desc: flowBytes, typ: prometheus.CounterValue, labels: []string{"down"}, fields: []string{"FlowBytesDown"},
			get: func(s *tunnel.ServerStats) float64 { return float64(s.FlowBytesDown.Load()) }},
		c("web_sessions_total", "Browser (WebTransport) sessions whose HELLO was accepted.", func(s *tunnel.ServerStats) uint64 { return s.WebSessions.Load() }, "WebSessions"),
		c("web_rejected_total", "Browser (WebTransport) requests refused before a session, or ended by a bad HELLO.", func(s *tunnel.ServerStats) uint64 { return s.WebRejected.Load() }, "WebRejected"),
	}
	stats, drop := datagramStats(p, func(s *tunnel.ServerStats) *datagram.Stats { return &s.Stats }, extra)
	stats = append(stats, stat[tunnel.ServerStats]{
		name: p + "_dropped_packets_total", desc: drop, typ: prometheus.CounterValue,
		labels: []string{"no_session"}, fields: []string{"DropNoSession"},
		get: func(s *tunnel.ServerStats) float64 { return float64(s.DropNoSession.Load()) },
	})
	sc := &serverCollector{
		src:      src,
		opts:     opts,
		stats:    stats,
		info:     prometheus.NewDesc(p+"_info", "Always 1; the labels say what serves.", []string{"version", "listen"}, nil),
		started:  prometheus.NewDesc(p+"_start_time_seconds", "When the server began listening, in Unix seconds.", nil, nil),
		sessions: prometheus.NewDesc(p+"_sessions", "Live sessions by kind (connect-ip, webtransport).", []string{"kind"}, nil),
		rtt:      prometheus.NewDesc(p+"_session_rtt_seconds", "Smoothed RTT of the live sessions' QUIC connections, computed at scrape time.", nil, nil),
		fec:      newFECMetrics(p),
	}
	if opts.PerUser {
		sc.userSessions = prometheus.NewDesc(p+"_user_sessions", "Live sessions by user.", []string{"user"}, nil)
		sc.userTx = prometheus.NewDesc(p+"_user_tx_bytes", "Bytes sent to a user's live sessions (resets when a session ends).", []string{"user"}, nil)
		sc.userRx = prometheus.NewDesc(p+"_user_rx_bytes", "Bytes received from a user's live sessions (resets when a session ends).", []string{"user"}, nil)
	}
	return sc
}

// Describe implements prometheus.Collector.
func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	seen := map[*prometheus.Desc]bool{}
	for _, st := range c.stats {
		if !seen[st.desc] {
			seen[st.desc] = true
			ch <- st.desc
		}
	}
	ch <- c.info
	ch <- c.started
	ch <- c.sessions
	ch <- c.rtt
	c.fec.describe(ch)
	if c.opts.PerUser {
		ch <- c.userSessions
		ch <- c.userTx
		ch <- c.userRx
	}
}

// sessionKinds are the SessionStatus.Kind values always exported (as 0
// when there are none), so dashboards see the series from the start.
var sessionKinds = []string{"connect-ip", "webtransport"}

// Collect implements prometheus.Collector.
func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	stats := c.src.Stats()
	for i := range c.stats {
		c.stats[i].collect(stats, ch)
	}
	st := c.src.Status()
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, st.Version, st.Listen)
	if !st.Started.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.started, prometheus.GaugeValue, float64(st.Started.UnixNano())/1e9)
	}
	kinds := map[string]int{}
	for _, k := range sessionKinds {
		kinds[k] = 0
	}
	buckets := make(map[float64]uint64, len(RTTBuckets))
	var sum float64
	type userAgg struct {
		n      int
		tx, rx uint64
	}
	users := map[string]*userAgg{}
	for _, s := range st.Sessions {
		kinds[s.Kind]++
		rtt := s.RTT.Seconds()
		sum += rtt
		for _, b := range RTTBuckets {
			if rtt <= b {
				buckets[b]++ // cumulative: every bucket at or above
			}
		}
		if c.opts.PerUser {
			u := s.User
			if u == "" {
				u = s.Owner
			}
			a := users[u]
			if a == nil {
				a = &userAgg{}
				users[u] = a
			}
			a.n++
			a.tx += s.TxBytes
			a.rx += s.RxBytes
		}
	}
	for _, k := range sortedKeys(kinds) {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(kinds[k]), k)
	}
	ch <- prometheus.MustNewConstHistogram(c.rtt, uint64(len(st.Sessions)), sum, buckets)
	c.fec.collect(st.FEC, ch)
	for u, a := range users {
		ch <- prometheus.MustNewConstMetric(c.userSessions, prometheus.GaugeValue, float64(a.n), u)
		ch <- prometheus.MustNewConstMetric(c.userTx, prometheus.GaugeValue, float64(a.tx), u)
		ch <- prometheus.MustNewConstMetric(c.userRx, prometheus.GaugeValue, float64(a.rx), u)
	}
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// clientStates are the ClientStatus.State values; roam_client_state has
// one sample per state, 1 for the current one.
var clientStates = []string{"connecting", "connected", "reconnecting"}

// clientCollector is the prometheus.Collector of NewClientCollector.
type clientCollector struct {
	src   ClientSource
	stats []stat[datagram.Stats]

	info, state, since, rtt, migrations, reconnects, paths, flows *prometheus.Desc
	fec                                                           *fecMetrics
}

// NewClientCollector returns a collector that reads src at every scrape.
// Register it once per registry.
func NewClientCollector(src ClientSource) prometheus.Collector {
	const p = "roam_client"
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(p+"_"+name, help, labels, nil)
	}
	readErrors := stat[datagram.Stats]{
		name:   p + "_device_read_errors_total",
		desc:   d("device_read_errors_total", "Failed device reads (other than closure)."),
		typ:    prometheus.CounterValue,
		fields: []string{"ReadErrors"},
		get:    func(s *datagram.Stats) float64 { return float64(s.ReadErrors.Load()) },
	}
	stats, _ := datagramStats(p, func(s *datagram.Stats) *datagram.Stats { return s }, []stat[datagram.Stats]{readErrors})
	return &clientCollector{
		src:        src,
		stats:      stats,
		info:       d("info", "Always 1; the label names the server.", "server"),
		state:      d("state", "1 for the client's current state, 0 for the others.", "state"),
		since:      d("state_change_time_seconds", "When the state last changed, in Unix seconds."),
		rtt:        d("rtt_seconds", "Smoothed RTT of the current QUIC connection."),
		migrations: d("migrations_total", "Completed path switches (connection migrations)."),
		reconnects: d("reconnects_total", "Re-dials after the connection was lost."),
		paths:      d("paths", "QUIC paths of the current connection."),
		flows:      d("flows", "Flows (TCP streams) open now."),
		fec:        newFECMetrics(p),
	}
}

// Describe implements prometheus.Collector.
func (c *clientCollector) Describe(ch chan<- *prometheus.Desc) {
	seen := map[*prometheus.Desc]bool{}
	for _, st := range c.stats {
		if !seen[st.desc] {
			seen[st.desc] = true
			ch <- st.desc
		}
	}
	for _, d := range []*prometheus.Desc{c.info, c.state, c.since, c.rtt, c.migrations, c.reconnects, c.paths, c.flows} {
		ch <- d
	}
	c.fec.describe(ch)
}

// Collect implements prometheus.Collector.
func (c *clientCollector) Collect(ch chan<- prometheus.Metric) {
	stats := c.src.Stats()
	for i := range c.stats {
		c.stats[i].collect(stats, ch)
	}
	st := c.src.Status()
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, st.Server)
	for _, s := range clientStates {
		v := 0.0
		if s == st.State {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, s)
	}
	if !st.Since.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.since, prometheus.GaugeValue, float64(st.Since.UnixNano())/1e9)
	}
	ch <- prometheus.MustNewConstMetric(c.rtt, prometheus.GaugeValue, st.RTT.Seconds())
	ch <- prometheus.MustNewConstMetric(c.migrations, prometheus.CounterValue, float64(st.Migrations))
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(st.Reconnects))
	ch <- prometheus.MustNewConstMetric(c.paths, prometheus.GaugeValue, float64(len(st.Paths)))
	ch <- prometheus.MustNewConstMetric(c.flows, prometheus.GaugeValue, float64(st.Flows))
	c.fec.collect(st.FEC, ch)
}

// ErrNotReady is wrapped by the errors of ServerReady and ClientReady.
var ErrNotReady = errors.New("not ready")

// ServerReady returns a readiness check for Handler: ready while the
// server listens (ServerStatus.Listen is set).
func ServerReady(src interface{ Status() tunnel.ServerStatus }) func() error {
	return func() error {
		if src.Status().Listen == "" {
			return fmt.Errorf("%w: the server is not listening", ErrNotReady)
		}
		return nil
	}
}

// ClientReady returns a readiness check for Handler: ready while the
// client's state is "connected".
func ClientReady(src interface{ Status() tunnel.ClientStatus }) func() error {
	return func() error {
		switch s := src.Status().State; s {
		case "connected":
		case "":
			return fmt.Errorf("%w: the client has not started", ErrNotReady)
		default:
			return fmt.Errorf("%w: the client is %s", ErrNotReady, s)
		}
		return nil
	}
}
