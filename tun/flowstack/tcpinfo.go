package flowstack

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TCPEndpoint is a diagnostic snapshot of one gVisor TCP endpoint: where a
// stalled flow's bytes wait, and what its TCP is doing about it.
type TCPEndpoint struct {
	// Local and Remote are the endpoint's addresses as gVisor sees them.
	// For a flow of the Stack, Remote is the application's address and
	// Local the address it connected to.
	Local, Remote netip.AddrPort
	State         string        // TCP state: "ESTABLISHED", "CLOSE-WAIT", ...
	CcState       string        // congestion control state: "Open", "Recovery", "RTORecovery", ...
	RTT, RTO      time.Duration // smoothed round trip time; retransmission timeout
	Cwnd          uint32        // congestion window, in segments
	RcvQueued     int           // received bytes the reader has not taken

	SegmentsIn, SegmentsOut uint64
	Retransmits             uint64 // segments retransmitted
	Timeouts                uint64 // RTO expiries (including zero-window probes)
	ZeroRcvWindow           uint64 // times it advertised a zero receive window
	SegmentQueueDropped     uint64 // received segments dropped: its segment queue was full
	SendToNetworkFailed     uint64 // segments the link refused
}

// String formats e on one line.
func (e TCPEndpoint) String() string {
	return fmt.Sprintf("%v<-%v %s cc=%s rtt=%v rto=%v cwnd=%d rcvq=%d segs=%d/%d retx=%d rto_expired=%d zerownd=%d segq_drop=%d send_fail=%d",
		e.Local, e.Remote, e.State, e.CcState, e.RTT, e.RTO, e.Cwnd, e.RcvQueued,
		e.SegmentsIn, e.SegmentsOut, e.Retransmits, e.Timeouts, e.ZeroRcvWindow, e.SegmentQueueDropped, e.SendToNetworkFailed)
}

// TCPEndpoints returns a snapshot of the Stack's TCP endpoints (its flows,
// established or closing), sorted by Remote. It is meant for diagnostics
// (a stalled flow). It takes each endpoint's lock in turn, so it can wait
// behind a goroutine of that endpoint that waits for room in the queue
// toward the device: up to 1 s per endpoint while the device writer is
// stuck, none once the queue is in drop mode (see the package doc).
func (s *Stack) TCPEndpoints() []TCPEndpoint { return TCPEndpointsOf(s.st) }

// TCPEndpointsOf returns a snapshot of the TCP endpoints of any gVisor
// stack, as Stack.TCPEndpoints does for the Stack's own (a test can
// describe the application's side of a flow with it).
func TCPEndpointsOf(st *stack.Stack) []TCPEndpoint {
	var out []TCPEndpoint
	for _, ep := range st.RegisteredEndpoints() {
		tep, ok := ep.(*tcp.Endpoint)
		if !ok {
			continue
		}
		e := TCPEndpoint{State: tcp.EndpointState(tep.State()).String()}
		if ti, ok := tep.Info().(*stack.TransportEndpointInfo); ok {
			e.Local = netip.AddrPortFrom(addrOf(ti.ID.LocalAddress), ti.ID.LocalPort)
			e.Remote = netip.AddrPortFrom(addrOf(ti.ID.RemoteAddress), ti.ID.RemotePort)
		}
		var info tcpip.TCPInfoOption
		if tep.GetSockOpt(&info) == nil {
			e.RTT, e.RTO, e.Cwnd, e.CcState = info.RTT, info.RTO, info.SndCwnd, ccStateName(info.CcState)
		}
		e.RcvQueued, _ = tep.GetSockOptInt(tcpip.ReceiveQueueSizeOption)
		if st, ok := tep.Stats().(*tcp.Stats); ok {
			e.SegmentsIn = st.SegmentsReceived.Value()
			e.SegmentsOut = st.SegmentsSent.Value()
			e.Retransmits = st.SendErrors.Retransmits.Value()
			e.Timeouts = st.SendErrors.Timeouts.Value()
			e.ZeroRcvWindow = st.ReceiveErrors.ZeroRcvWindowState.Value()
			e.SegmentQueueDropped = st.ReceiveErrors.SegmentQueueDropped.Value()
			e.SendToNetworkFailed = st.SendErrors.SegmentSendToNetworkFailed.Value()
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b TCPEndpoint) int { return a.Remote.Compare(b.Remote) })
	return out
}

func ccStateName(s tcpip.CongestionControlState) string {
	switch s {
	case tcpip.Open:
		return "Open"
	case tcpip.RTORecovery:
		return "RTORecovery"
	case tcpip.FastRecovery:
		return "FastRecovery"
	case tcpip.SACKRecovery:
		return "SACKRecovery"
	case tcpip.Disorder:
		return "Disorder"
	}
	return fmt.Sprintf("cc%d", s)
}
