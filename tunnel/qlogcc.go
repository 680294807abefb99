package tunnel

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// QlogCCEnv names the environment variable that, when set to a folder,
// makes both ends write a reduced qlog of every connection there (a
// diagnostic for congestion-control questions): only congestion state
// changes, lost and spuriously lost packets, and the recovery metrics
// (congestion window, bytes in flight, RTT) at most every 100 ms.
const QlogCCEnv = "ROAM_QLOG_CC"

// qlogCCTracer is quic.Config.Tracer when QlogCCEnv is set, else nil.
func qlogCCTracer() func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace {
	dir := os.Getenv(QlogCCEnv)
	if dir == "" {
		return nil
	}
	return func(_ context.Context, isClient bool, id quic.ConnectionID) qlogwriter.Trace {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil
		}
		label := "server"
		if isClient {
			label = "client"
		}
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s_%s.sqlog", id, label)))
		if err != nil {
			return nil
		}
		fs := qlogwriter.NewConnectionFileSeq(bufferedFile{bufio.NewWriter(f), f}, isClient, id)
		go fs.Run()
		return ccTrace{fs}
	}
}

type bufferedFile struct {
	*bufio.Writer
	f *os.File
}

func (b bufferedFile) Close() error {
	b.Flush()
	return b.f.Close()
}

type ccTrace struct{ t qlogwriter.Trace }

func (c ccTrace) AddProducer() qlogwriter.Recorder { return &ccRecorder{r: c.t.AddProducer()} }

type ccRecorder struct {
	r    qlogwriter.Recorder
	mu   sync.Mutex
	last time.Time
}

func (c *ccRecorder) RecordEvent(e qlogwriter.Event) {
	switch e.(type) {
	case qlog.CongestionStateUpdated, qlog.PacketLost, qlog.SpuriousLoss, *qlog.CongestionStateUpdated, *qlog.PacketLost, *qlog.SpuriousLoss:
	case qlog.MetricsUpdated, *qlog.MetricsUpdated:
		c.mu.Lock()
		now := time.Now()
		skip := now.Sub(c.last) < 100*time.Millisecond
		if !skip {
			c.last = now
		}
		c.mu.Unlock()
		if skip {
			return
		}
	default:
		return
	}
	c.r.RecordEvent(e)
}

func (c *ccRecorder) Close() error { return c.r.Close() }
