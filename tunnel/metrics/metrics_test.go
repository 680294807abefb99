package metrics

import (
	"io"
	"math"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel"
)

// fakeServer is a ServerSource with settable status.
type fakeServer struct {
	stats tunnel.ServerStats
	mu    sync.Mutex
	st    tunnel.ServerStatus
}

func (f *fakeServer) Stats() *tunnel.ServerStats { return &f.stats }
func (f *fakeServer) Status() tunnel.ServerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

type fakeClient struct {
	stats datagram.Stats
	mu    sync.Mutex
	st    tunnel.ClientStatus
}

func (f *fakeClient) Stats() *datagram.Stats { return &f.stats }
func (f *fakeClient) Status() tunnel.ClientStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

// scrape fetches url and parses the Prometheus text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return mfs
}

// sample returns the value of the sample of family name whose labels
// include labels (name=value pairs), and whether there is one.
func sample(mfs map[string]*dto.MetricFamily, name string, labels ...string) (*dto.Metric, bool) {
	mf := mfs[name]
	if mf == nil {
		return nil, false
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m, true
	}
	return nil, false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return math.NaN()
}

// setCounters stores a distinct value in every atomic counter of the
// struct v points to (embedded structs included) and returns them by
// field name.
func setCounters(t *testing.T, v any, next *uint64, out map[string]uint64) {
	rv := reflect.ValueOf(v).Elem()
	for i := 0; i < rv.NumField(); i++ {
		f, sf := rv.Field(i), rv.Type().Field(i)
		if sf.Name == "_" {
			continue
		}
		*next++
		switch p := f.Addr().Interface().(type) {
		case *atomic.Uint64:
			p.Store(*next)
		case *atomic.Int64:
			p.Store(int64(*next))
		default:
			if sf.Anonymous {
				setCounters(t, f.Addr().Interface(), next, out)
				continue
			}
			t.Fatalf("field %s has type %s: teach the test (and the collector) about it", sf.Name, sf.Type)
		}
		out[sf.Name] = *next
	}
}

// checkStats checks that every counter field is exported by exactly the
// stat whose fields name it, with the value setCounters stored.
func checkStats[S any](t *testing.T, stats []stat[S], fields map[string]uint64, mfs map[string]*dto.MetricFamily) {
	t.Helper()
	covered := map[string]bool{}
	for _, st := range stats {
		var want float64
		for _, f := range st.fields {
			v, ok := fields[f]
			if !ok {
				t.Errorf("%s reads field %s, which the stats struct does not have", st.name, f)
			}
			want += float64(v)
			covered[f] = true
		}
		var labels []string
		if len(st.labels) > 0 {
			labels = []string{labelName(st.name), st.labels[0]}
		}
		m, ok := sample(mfs, st.name, labels...)
		if !ok {
			t.Errorf("no sample %s%v in the scrape", st.name, labels)
			continue
		}
		if got := value(m); got != want {
			t.Errorf("%s%v = %v, want %v (fields %v)", st.name, labels, got, want, st.fields)
		}
	}
	for f := range fields {
		if !covered[f] {
			t.Errorf("counter field %s is not exported", f)
		}
	}
}

func labelName(metric string) string {
	if strings.HasSuffix(metric, "_flow_bytes_total") {
		return "direction"
	}
	return "reason"
}

func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	s, err := Listen("127.0.0.1:0", h, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return "http://" + s.Addr().String()
}

func TestServerCollectorEveryCounter(t *testing.T) {
	src := &fakeServer{}
	var n uint64
	fields := map[string]uint64{}
	setCounters(t, &src.stats, &n, fields)
	col := NewServerCollector(src, ServerOptions{})
	url := serve(t, Handler(NewRegistry(col), nil))
	mfs := scrape(t, url+"/metrics")
	checkStats(t, col.(*serverCollector).stats, fields, mfs)
	if _, ok := mfs["go_goroutines"]; !ok {
		t.Error("no go_goroutines: the Go collector is missing")
	}
}

func TestClientCollectorEveryCounter(t *testing.T) {
	src := &fakeClient{}
	var n uint64
	fields := map[string]uint64{}
	setCounters(t, &src.stats, &n, fields)
	col := NewClientCollector(src)
	url := serve(t, Handler(NewRegistry(col), nil))
	checkStats(t, col.(*clientCollector).stats, fields, scrape(t, url+"/metrics"))
}

func TestServerStatusMetrics(t *testing.T) {
	started := time.Unix(1700000000, 0)
	src := &fakeServer{st: tunnel.ServerStatus{Listen: "127.0.0.1:4433", Version: "roam test", Started: started}}
	url := serve(t, Handler(NewRegistry(NewServerCollector(src, ServerOptions{PerUser: true})), nil))

	// No sessions: the kinds and an empty histogram are still there.
	mfs := scrape(t, url+"/metrics")
	for _, k := range sessionKinds {
		if m, ok := sample(mfs, "roam_server_sessions", "kind", k); !ok || value(m) != 0 {
			t.Errorf("roam_server_sessions{kind=%q} = %v, %v; want 0", k, m, ok)
		}
	}
	if m, ok := sample(mfs, "roam_server_session_rtt_seconds"); !ok || m.GetHistogram().GetSampleCount() != 0 {
		t.Errorf("empty RTT histogram: %v %v", m, ok)
	}
	if m, ok := sample(mfs, "roam_server_info", "version", "roam test", "listen", "127.0.0.1:4433"); !ok || value(m) != 1 {
		t.Errorf("roam_server_info: %v %v", m, ok)
	}
	if m, ok := sample(mfs, "roam_server_start_time_seconds"); !ok || value(m) != 1700000000 {
		t.Errorf("roam_server_start_time_seconds: %v %v", m, ok)
	}

	src.mu.Lock()
	src.st.Sessions = []tunnel.SessionStatus{
		{Kind: "connect-ip", Owner: "id1", User: "alice", RTT: 3 * time.Millisecond, TxBytes: 100, RxBytes: 10},
		{Kind: "connect-ip", Owner: "id2", User: "alice", RTT: 30 * time.Millisecond, TxBytes: 200, RxBytes: 20},
		{Kind: "webtransport", Owner: "id3", RTT: 300 * time.Millisecond, TxBytes: 5},
	}
	src.mu.Unlock()
	mfs = scrape(t, url+"/metrics")
	if m, _ := sample(mfs, "roam_server_sessions", "kind", "connect-ip"); m == nil || value(m) != 2 {
		t.Errorf("connect-ip sessions = %v, want 2", m)
	}
	if m, _ := sample(mfs, "roam_server_sessions", "kind", "webtransport"); m == nil || value(m) != 1 {
		t.Errorf("webtransport sessions = %v, want 1", m)
	}
	m, _ := sample(mfs, "roam_server_session_rtt_seconds")
	h := m.GetHistogram()
	if h.GetSampleCount() != 3 || math.Abs(h.GetSampleSum()-0.333) > 1e-9 {
		t.Errorf("RTT histogram count %d sum %v, want 3 and 0.333", h.GetSampleCount(), h.GetSampleSum())
	}
	wantBuckets := map[float64]uint64{0.001: 0, 0.0025: 0, 0.005: 1, 0.01: 1, 0.025: 1, 0.05: 2, 0.1: 2, 0.25: 2, 0.5: 3, 1: 3, 2.5: 3}
	for _, b := range h.GetBucket() {
		if want, ok := wantBuckets[b.GetUpperBound()]; ok && b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
	for _, tt := range []struct {
		metric, user string
		want         float64
	}{
		{"roam_server_user_sessions", "alice", 2}, {"roam_server_user_tx_bytes", "alice", 300},
		{"roam_server_user_rx_bytes", "alice", 30}, {"roam_server_user_sessions", "id3", 1},
		{"roam_server_user_tx_bytes", "id3", 5},
	} {
		if m, ok := sample(mfs, tt.metric, "user", tt.user); !ok || value(m) != tt.want {
			t.Errorf("%s{user=%q} = %v, want %v", tt.metric, tt.user, m, tt.want)
		}
	}
}

func TestNoPerUserByDefault(t *testing.T) {
	src := &fakeServer{st: tunnel.ServerStatus{Sessions: []tunnel.SessionStatus{{Kind: "connect-ip", Owner: "x", User: "bob"}}}}
	url := serve(t, Handler(NewRegistry(NewServerCollector(src, ServerOptions{})), nil))
	for name, mf := range scrape(t, url+"/metrics") {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "user" || lp.GetValue() == "bob" || lp.GetValue() == "x" {
					t.Errorf("%s has a per-user label %s=%q", name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
}

func TestClientStatusMetrics(t *testing.T) {
	src := &fakeClient{st: tunnel.ClientStatus{
		Server: "vpn.example:4433", State: "reconnecting", Since: time.Unix(1700000000, 500_000_000),
		RTT: 25 * time.Millisecond, Migrations: 3, Reconnects: 2, Flows: 4,
		Paths: []tunnel.PathStatus{{Local: "a", Remote: "b", Active: true}, {Local: "c", Remote: "b"}},
		Addrs: []netip.Prefix{netip.MustParsePrefix("100.96.0.2/32")},
	}}
	url := serve(t, Handler(NewRegistry(NewClientCollector(src)), nil))
	mfs := scrape(t, url+"/metrics")
	for _, tt := range []struct {
		metric string
		labels []string
		want   float64
	}{
		{"roam_client_state", []string{"state", "reconnecting"}, 1},
		{"roam_client_state", []string{"state", "connected"}, 0},
		{"roam_client_state", []string{"state", "connecting"}, 0},
		{"roam_client_state_change_time_seconds", nil, 1700000000.5},
		{"roam_client_rtt_seconds", nil, 0.025},
		{"roam_client_migrations_total", nil, 3},
		{"roam_client_reconnects_total", nil, 2},
		{"roam_client_paths", nil, 2},
		{"roam_client_flows", nil, 4},
		{"roam_client_info", []string{"server", "vpn.example:4433"}, 1},
	} {
		if m, ok := sample(mfs, tt.metric, tt.labels...); !ok || value(m) != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.metric, tt.labels, m, tt.want)
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestProbes(t *testing.T) {
	srv := &fakeServer{}
	cli := &fakeClient{}
	surl := serve(t, Handler(NewRegistry(), ServerReady(srv)))
	curl := serve(t, Handler(NewRegistry(), ClientReady(cli)))
	type probe struct {
		url  string
		code int
		body string
	}
	check := func(ps ...probe) {
		t.Helper()
		for _, p := range ps {
			if code, body := get(t, p.url); code != p.code || !strings.Contains(body, p.body) {
				t.Errorf("GET %s = %d %q, want %d with %q", p.url, code, body, p.code, p.body)
			}
		}
	}
	check(
		probe{surl + "/healthz", 200, "ok"},
		probe{surl + "/readyz", 503, "not listening"},
		probe{curl + "/readyz", 503, "not started"},
		probe{surl + "/nope", 404, ""},
	)
	srv.mu.Lock()
	srv.st.Listen = "127.0.0.1:4433"
	srv.mu.Unlock()
	cli.mu.Lock()
	cli.st.State = "reconnecting"
	cli.mu.Unlock()
	check(probe{surl + "/readyz", 200, "ok"}, probe{curl + "/readyz", 503, "reconnecting"})
	cli.mu.Lock()
	cli.st.State = "connected"
	cli.mu.Unlock()
	check(probe{curl + "/readyz", 200, "ok"}, probe{curl + "/healthz", 200, "ok"})
}

func TestIsLoopback(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:9090", true}, {"[::1]:9090", true}, {"localhost:9090", true},
		{"127.1.2.3:1", true}, {":9090", false}, {"0.0.0.0:9090", false},
		{"192.0.2.1:9090", false}, {"example.com:9090", false}, {"nonsense", false},
	} {
		if got := IsLoopback(tt.addr); got != tt.want {
			t.Errorf("IsLoopback(%q) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

func TestListenBadAddress(t *testing.T) {
	if _, err := Listen("9090", http.NotFoundHandler(), nil); err == nil || !strings.Contains(err.Error(), "HOST:PORT") {
		t.Fatalf("Listen(9090) = %v, want an error naming HOST:PORT", err)
	}
}
