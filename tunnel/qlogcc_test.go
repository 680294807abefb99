package tunnel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

type fakeRecorder struct{ got []string }

func (f *fakeRecorder) RecordEvent(e qlogwriter.Event) { f.got = append(f.got, e.Name()) }
func (f *fakeRecorder) Close() error                   { return nil }

func TestQlogCCRecorderFilters(t *testing.T) {
	f := &fakeRecorder{}
	r := &ccRecorder{r: f}
	r.RecordEvent(qlog.PacketSent{})
	r.RecordEvent(qlog.PacketReceived{})
	r.RecordEvent(qlog.CongestionStateUpdated{State: qlog.CongestionStateCongestionAvoidance})
	r.RecordEvent(&qlog.PacketLost{})
	r.RecordEvent(qlog.SpuriousLoss{})
	r.RecordEvent(&qlog.MetricsUpdated{})
	r.RecordEvent(&qlog.MetricsUpdated{}) // within 100 ms of the last: dropped
	want := []string{"recovery:congestion_state_updated", "recovery:packet_lost", "recovery:spurious_loss", "recovery:metrics_updated"}
	if strings.Join(f.got, ",") != strings.Join(want, ",") {
		t.Fatalf("recorded %v, want %v", f.got, want)
	}
}

func TestQlogCCTracerEnv(t *testing.T) {
	t.Setenv(QlogCCEnv, "")
	if qlogCCTracer() != nil {
		t.Fatal("a tracer without " + QlogCCEnv)
	}
	dir := filepath.Join(t.TempDir(), "q")
	t.Setenv(QlogCCEnv, dir)
	tr := qlogCCTracer()
	if tr == nil {
		t.Fatal("no tracer with " + QlogCCEnv + " set")
	}
	trace := tr(context.Background(), true, quic.ConnectionIDFromBytes([]byte{1, 2, 3, 4}))
	rec := trace.AddProducer()
	rec.RecordEvent(qlog.CongestionStateUpdated{State: qlog.CongestionStateSlowStart})
	rec.Close()
	name := filepath.Join(dir, "01020304_client.sqlog")
	for range 100 {
		if b, err := os.ReadFile(name); err == nil && strings.Contains(string(b), "slow_start") {
			return
		}
		sleepShort()
	}
	b, err := os.ReadFile(name)
	t.Fatalf("%s: %q, %v: no congestion_state_updated event", name, b, err)
}

func sleepShort() { time.Sleep(10 * time.Millisecond) }
