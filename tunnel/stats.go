package tunnel

import (
	"log/slog"
	"sync/atomic"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/fec"
)

// counterAttrs returns the non-zero counters of a datagram.Stats as log
// attributes, for the summaries logged when a client or server stops.
func counterAttrs(st *datagram.Stats) []slog.Attr {
	var out []slog.Attr
	for _, c := range []struct {
		name string
		v    *atomic.Uint64
	}{
		{"tx_packets", &st.TxPackets}, {"tx_bytes", &st.TxBytes},
		{"rx_packets", &st.RxPackets}, {"rx_bytes", &st.RxBytes}, {"rx_datagrams", &st.RxDatagrams},
		{"drop_malformed", &st.DropMalformed}, {"drop_src", &st.DropSrc}, {"drop_dst", &st.DropDst},
		{"drop_policy", &st.DropPolicy}, {"drop_too_big", &st.DropTooBig}, {"drop_queue_full", &st.DropQueueFull},
		{"drop_context", &st.DropContext}, {"drop_stream", &st.DropStream}, {"drop_no_link", &st.DropNoLink},
		{"icmp_too_big", &st.ICMPTooBig},
		{"read_errors", &st.ReadErrors}, {"write_errors", &st.WriteErrors},
		{"write_batches", &st.WriteBatches}, {"write_packets", &st.WritePackets},
	} {
		if v := c.v.Load(); v != 0 {
			out = append(out, slog.Uint64(c.name, v))
		}
	}
	return out
}

// serverCounterAttrs adds the server's own counters.
func serverCounterAttrs(st *ServerStats) []slog.Attr {
	out := counterAttrs(&st.Stats)
	for _, c := range []struct {
		name string
		v    *atomic.Uint64
	}{
		{"sessions_total", &st.SessionsTotal}, {"auth_failures", &st.AuthFailures},
		{"auth_rate_limited", &st.AuthRateLimited}, {"sessions_revoked", &st.SessionsRevoked}, {"sessions_expired", &st.SessionsExpired},
		{"drop_no_session", &st.DropNoSession}, {"capsule_errors", &st.CapsuleErrors},
		{"device_read_errors", &st.DeviceReadErrors},
		{"flows_total", &st.FlowsTotal}, {"flows_refused", &st.FlowsRefused},
		{"flow_bytes_up", &st.FlowBytesUp}, {"flow_bytes_down", &st.FlowBytesDown},
		{"web_sessions", &st.WebSessions}, {"web_rejected", &st.WebRejected},
	} {
		if v := c.v.Load(); v != 0 {
			out = append(out, slog.Uint64(c.name, v))
		}
	}
	return out
}

// fecAttrs returns FEC counters as log attributes.
func fecAttrs(s fec.Stats) []slog.Attr {
	return []slog.Attr{slog.Group("fec",
		slog.Uint64("data_frames", s.DataFrames), slog.Uint64("parity_frames", s.ParityFrames),
		slog.Uint64("received", s.Received), slog.Uint64("lost", s.Lost),
		slog.Uint64("recovered", s.Recovered), slog.Uint64("unrecovered", s.Unrecovered),
		slog.Uint64("held", s.Held), slog.Uint64("hold_timeouts", s.HoldTimeouts), slog.Uint64("hopeless", s.Hopeless), slog.Uint64("late", s.Late),
		slog.Uint64("malformed", s.Malformed), slog.Float64("peer_loss", s.PeerLoss),
	)}
}
