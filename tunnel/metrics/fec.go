package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamvpn/roam/tunnel"
)

// fecMetrics exports a tunnel.FECStatus (forward error correction) under
// PREFIX_fec_…; nothing while FEC is off (the status has none).
type fecMetrics struct {
	active, frames, lost, recovered, unrecovered, holdTimeouts, malformed, peerLoss *prometheus.Desc
}

func newFECMetrics(prefix string) *fecMetrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prefix+"_fec_"+name, help, labels, nil)
	}
	return &fecMetrics{
		active:       d("active", "1 while forward error correction frames packets (client: the server agreed; server: some peer uses it)."),
		frames:       d("frames_sent_total", "FEC frames sent, by kind (data, parity).", "kind"),
		lost:         d("lost_packets_total", "Packets from the peer that never arrived (before repair)."),
		recovered:    d("recovered_packets_total", "Lost packets rebuilt from parity."),
		unrecovered:  d("unrecovered_packets_total", "Lost packets given up on (quic-go sees the loss)."),
		holdTimeouts: d("hold_timeouts_total", "Gaps given up on after the hold bound."),
		malformed:    d("malformed_frames_total", "FEC frames dropped as invalid or from unknown addresses."),
		peerLoss:     d("peer_loss_ratio", "The loss rate the peer reported last (0..1)."),
	}
}

func (m *fecMetrics) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.active, m.frames, m.lost, m.recovered, m.unrecovered, m.holdTimeouts, m.malformed, m.peerLoss} {
		ch <- d
	}
}

func (m *fecMetrics) collect(f *tunnel.FECStatus, ch chan<- prometheus.Metric) {
	if f == nil {
		return
	}
	active := 0.0
	if f.Active {
		active = 1
	}
	ch <- prometheus.MustNewConstMetric(m.active, prometheus.GaugeValue, active)
	ch <- prometheus.MustNewConstMetric(m.frames, prometheus.CounterValue, float64(f.DataFrames), "data")
	ch <- prometheus.MustNewConstMetric(m.frames, prometheus.CounterValue, float64(f.ParityFrames), "parity")
	ch <- prometheus.MustNewConstMetric(m.lost, prometheus.CounterValue, float64(f.Lost))
	ch <- prometheus.MustNewConstMetric(m.recovered, prometheus.CounterValue, float64(f.Recovered))
	ch <- prometheus.MustNewConstMetric(m.unrecovered, prometheus.CounterValue, float64(f.Unrecovered))
	ch <- prometheus.MustNewConstMetric(m.holdTimeouts, prometheus.CounterValue, float64(f.HoldTimeouts))
	ch <- prometheus.MustNewConstMetric(m.malformed, prometheus.CounterValue, float64(f.Malformed))
	ch <- prometheus.MustNewConstMetric(m.peerLoss, prometheus.GaugeValue, f.PeerLoss)
}
