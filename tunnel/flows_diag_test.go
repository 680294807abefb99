package tunnel

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.zx2c4.com/wireguard/tun/netstack"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/roamvpn/roam/tun/flowstack"
)

// flowProgress is one test flow's progress, for the stall report.
type flowProgress struct {
	addr              atomic.Pointer[netip.AddrPort] // the application's end, once connected
	written, read     atomic.Int64
	writeDone, closed atomic.Bool // Write returned (and CloseWrite was called); ReadAll returned
	writeErr          atomic.Pointer[error]
	idle              atomic.Int64 // time.Duration without progress, as watchFlows last saw it
}

// local returns the application's end of the flow (zero before it connected).
func (p *flowProgress) local() netip.AddrPort {
	if a := p.addr.Load(); a != nil {
		return *a
	}
	return netip.AddrPort{}
}

func (p *flowProgress) String() string {
	name := "(connecting)"
	if a := p.local(); a.IsValid() {
		name = a.String()
	}
	s := fmt.Sprintf("%s: written %d, read %d, write done %v, no progress for %v", name, p.written.Load(), p.read.Load(), p.writeDone.Load(), time.Duration(p.idle.Load()).Round(time.Second))
	if e := p.writeErr.Load(); e != nil {
		s += fmt.Sprintf(" (write error: %v)", *e)
	}
	return s
}

// netstackStack returns the gVisor stack inside a wireguard netstack.Net
// (an unexported field), for diagnostics only.
func netstackStack(n *netstack.Net) *stack.Stack {
	v := reflect.ValueOf(n).Elem().FieldByName("stack")
	if !v.IsValid() || v.Kind() != reflect.Pointer || v.Type().Elem() != reflect.TypeFor[stack.Stack]() {
		return nil
	}
	return (*stack.Stack)(unsafe.Pointer(v.Pointer()))
}

// stallReport describes the unfinished flows of a flow-mode test: their
// progress (and how long each has made none), both local TCP endpoints of each (the application's netstack
// and the client's flowstack), the counters of the flowstack and the
// server, and the goroutines of the flow path.
func stallReport(flows []*flowProgress, app *stack.Stack, fs *flowstack.Stack, srv *Server) string {
	var b strings.Builder
	stalled := map[netip.AddrPort]bool{}
	for _, p := range flows {
		if !p.closed.Load() {
			stalled[p.local()] = true
			fmt.Fprintf(&b, "unfinished flow %v\n", p)
		}
	}
	if app != nil {
		for _, e := range flowstack.TCPEndpointsOf(app) {
			if stalled[e.Local] {
				fmt.Fprintf(&b, "  application TCP %v\n", e)
			}
		}
	}
	if fs != nil {
		for _, e := range fs.TCPEndpoints() {
			if stalled[e.Remote] {
				fmt.Fprintf(&b, "  flowstack TCP   %v\n", e)
			}
		}
		fmt.Fprintf(&b, "flowstack stats: %+v\n", fs.Stats())
	}
	st := srv.Stats()
	fmt.Fprintf(&b, "server: flows total %d active %d refused %d, bytes up %d down %d\n",
		st.FlowsTotal.Load(), st.FlowsActive.Load(), st.FlowsRefused.Load(), st.FlowBytesUp.Load(), st.FlowBytesDown.Load())
	var dump bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&dump, 2)
	n := 0
	for g := range strings.SplitSeq(dump.String(), "\n\n") {
		if strings.Contains(g, "flow.(*splicer)") || strings.Contains(g, "flowstack.") || strings.Contains(g, "TestFlowMode") {
			if n < 60 {
				b.WriteString(g)
				b.WriteString("\n\n")
			}
			n++
		}
	}
	fmt.Fprintf(&b, "(%d flow goroutines)\n", n)
	return b.String()
}

// watchFlows calls report once, with the reason, if an unfinished flow has
// made no progress (bytes written or read) for stallAfter, or if flows are
// still unfinished at last (a flow that trickles, a segment per backed-off
// retransmission timeout, is stalled too); it returns when done is closed.
func watchFlows(flows []*flowProgress, stallAfter time.Duration, last time.Time, done <-chan struct{}, report func(why string)) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	seen := make([]int64, len(flows))
	lastChange := make([]time.Time, len(flows))
	for i := range lastChange {
		lastChange[i] = time.Now()
	}
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		for i, p := range flows {
			if p.closed.Load() {
				continue
			}
			if sum := p.written.Load() + p.read.Load(); sum != seen[i] {
				seen[i], lastChange[i] = sum, time.Now()
			}
			p.idle.Store(int64(time.Since(lastChange[i])))
		}
		for _, p := range flows {
			if !p.closed.Load() && time.Duration(p.idle.Load()) >= stallAfter {
				report(fmt.Sprintf("a flow made no progress for %v", stallAfter))
				return
			}
		}
		if time.Now().After(last) {
			report("flows are still unfinished near the deadline")
			return
		}
	}
}
