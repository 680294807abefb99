package systack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/flow"
)

// Read buffers: the Stack reads the device into its own buffers, of the
// largest IP packet, so that the TUN's Write can coalesce the rewritten
// segments into them (it needs room in the first packet of a run).
const (
	headroom = datagram.Headroom
	bufSize  = datagram.LargeBufSize
)

// closeDrain bounds how long Close lets Read rewrite the RSTs of the
// flows it aborted, before it closes the device. Close stops waiting as
// soon as each of those flows has had its RST written toward the
// application (see Stack.aborted), so the bound only matters when no Read
// runs (the pump stopped first) or the host is very busy: 250 ms was seen
// to fall short under the race detector.
const closeDrain = time.Second

type counters struct {
	opened, refused, unreach, failed, flowErr, unknown atomic.Uint64
	active, pending                                    atomic.Int64
	flows                                              atomic.Int64 // redirect mode: accepted connections not yet ended (MaxFlows)
	up, down                                           atomic.Uint64
	toLn, toApp, passed, frag, noEntry, full           atomic.Uint64
	dropSmall, writeErr                                atomic.Uint64
	warned                                             atomic.Bool // the unanswered-SYN warning was logged
}

// Stack is the system TCP stack; it implements datagram.Device. Create it
// with New.
type Stack struct {
	cfg   Config
	log   *slog.Logger
	dev   datagram.Device
	mode  Mode               // ModeRedirect or ModeRewrite (ModeAuto only in Read's tests)
	lns   []*net.TCPListener // redirect mode: on 127.0.0.1 and, if any, ::1; rewrite mode: one, bound to the TUN
	port  uint16             // the listeners' (all of them on the same)
	v6    bool               // the listener(s) take IPv6 too
	nat   *natTable          // rewrite mode only
	redir *redirectTable     // redirect mode only

	// Used by Read only (one goroutine at a time).
	rbufs  [][]byte
	rsizes []int
	wb     [][]byte
	rstd   []*natEntry // the entries of this batch's RSTs toward the applications
	pkt    datagram.Packet

	devMu sync.Mutex // serializes dev.Write between Write and Read's write-back
	cnt   counters
	sem   chan struct{} // one token per accepted connection waiting for Connect

	ctx    context.Context // cancelled by Close; parent of every Connect and Splice
	cancel context.CancelFunc

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	mu        sync.Mutex
	closing   bool // guarded by mu
	// aborted holds, in rewrite mode, the NAT ports of the accepted
	// connections that ended (were reset) after Close began: Close waits
	// for Read to write each one's RST toward its application. Guarded
	// by mu.
	aborted []uint16
	wg      sync.WaitGroup // the accept loop and the flows; Add only under mu with !closing
}

var _ datagram.Device = (*Stack)(nil)

// New validates cfg and starts the Stack in the calling thread's network
// namespace, which must be the TUN's: in redirect mode it opens the
// loopback listeners, starts accepting and then creates the nftables table
// (replacing one a crashed run left); in rewrite mode it opens the
// listener bound to cfg.IfName, deletes a table a crashed run in redirect
// mode left, and starts accepting. ModeAuto falls back to rewrite mode
// when redirect mode cannot start, and logs why. New does not read from
// the device: the caller's Read does. If New fails, cfg.Dev is left open.
func New(cfg Config) (*Stack, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	bs := cfg.Dev.BatchSize()
	if bs < 1 {
		return nil, fmt.Errorf("systack: Dev.BatchSize() is %d: want at least 1", bs)
	}
	if _, err := net.InterfaceByName(cfg.IfName); err != nil {
		return nil, fmt.Errorf("systack: Config.IfName: interface %q: %w", cfg.IfName, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "systack")
	s := &Stack{
		cfg: cfg,
		log: log,
		dev: cfg.Dev,
		sem: make(chan struct{}, cfg.MaxPending),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	var redirErr error
	if cfg.Mode != ModeRewrite {
		if redirErr = s.startRedirect(); redirErr == nil {
			return s, nil
		}
		if cfg.Mode == ModeRedirect {
			s.cancel()
			return nil, redirErr
		}
	}
	if err := s.startRewrite(bs); err != nil {
		s.cancel()
		return nil, errors.Join(redirErr, err)
	}
	if redirErr != nil {
		log.Warn("system stack: redirect mode unavailable, rewriting packets on the TUN instead (slower)", "err", redirErr)
	}
	return s, nil
}

// startRedirect starts redirect mode: the listener bound to loopback, the
// accept loop, then the nftables table (so that every redirected SYN finds
// the listener).
func (s *Stack) startRedirect() error {
	lns, err := loopbackListeners(s.log)
	if err != nil {
		return err
	}
	s.mode, s.lns, s.v6 = ModeRedirect, lns, len(lns) == 2
	s.port = uint16(lns[0].Addr().(*net.TCPAddr).Port)
	s.startAccepting()
	s.redir, err = installRedirect(s.cfg.IfName, s.port, s.v6)
	if err != nil {
		s.stopAccepting()
		s.lns, s.redir = nil, nil
		return err
	}
	if !s.redir.owned {
		s.log.Warn("system stack: the kernel cannot tie the nftables table to this process (NFT_TABLE_F_OWNER, Linux 5.12+): if the process dies, the table stays until the client starts again on this TUN",
			"nftables_table", "inet "+s.redir.table.Name, "err", s.redir.ownErr)
	}
	s.log.Info("system stack started", "mode", s.mode.String(), "interface", s.cfg.IfName,
		"nftables_table", "inet "+s.redir.table.Name, "nftables_owner", s.redir.owned, "listener_port", s.port, "ipv6", s.v6,
		"max_pending", s.cfg.MaxPending, "max_flows", s.cfg.MaxFlows, "connect_timeout", s.cfg.ConnectTimeout)
	return nil
}

// startRewrite starts rewrite mode: the listener bound to the TUN, the
// NAT table, Read's buffers and the accept loop.
func (s *Stack) startRewrite(bs int) error {
	ln, v6, err := listen(s.cfg.IfName)
	if err != nil {
		return err
	}
	if err := deleteStaleTable(s.cfg.IfName); err != nil {
		s.log.Warn("system stack: a table left by redirect mode may redirect the applications' connections elsewhere", "err", err)
	}
	s.mode, s.lns, s.v6 = ModeRewrite, []*net.TCPListener{ln}, v6
	s.port = uint16(ln.Addr().(*net.TCPAddr).Port)
	s.nat = newNATTable(s.cfg.MaxFlows, s.port)
	s.rbufs, s.rsizes, s.wb = make([][]byte, bs), make([]int, bs), make([][]byte, 0, bs)
	for i := range s.rbufs {
		s.rbufs[i] = make([]byte, bufSize)
	}
	s.startAccepting()
	s.log.Info("system stack started", "mode", s.mode.String(), "interface", s.cfg.IfName, "listener_port", s.port, "ipv6", v6,
		"max_pending", s.cfg.MaxPending, "max_flows", s.cfg.MaxFlows, "connect_timeout", s.cfg.ConnectTimeout)
	return nil
}

// startAccepting starts an accept loop on each listener.
func (s *Stack) startAccepting() {
	for _, ln := range s.lns {
		s.wg.Add(1)
		go s.acceptLoop(ln)
	}
}

// shutdownFlows closes the listeners, cancels every Connect and aborts
// every flow, and waits for the accept loops and the flows to end.
func (s *Stack) shutdownFlows() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.cancel()
	for _, ln := range s.lns {
		ln.Close()
	}
	s.wg.Wait()
}

// stopAccepting closes the listeners and waits for the accept loops and
// the flows they started (New's failure path: none yet, or reset).
func (s *Stack) stopAccepting() {
	s.shutdownFlows()
	s.mu.Lock()
	s.closing = false
	s.mu.Unlock()
	s.ctx, s.cancel = context.WithCancel(context.Background())
}

// Mode returns the mode the Stack runs in: ModeRedirect or ModeRewrite.
func (s *Stack) Mode() Mode { return s.mode }

// listen opens the listener on a free port of every address, bound to
// the interface: dual-stack if the host has IPv6, else IPv4 only.
//
// The dual-stack socket is asked for explicitly (tcp6 with IPV6_V6ONLY
// off), not through Go's "tcp" on [::]: that one decides by a probe the
// net package makes once per process, in whatever network namespace the
// process's first socket was made. A probe made in a namespace whose
// loopback was down (a fresh one) finds no IPv6, and every later "[::]"
// listener is then IPv4 only, so the kernel would reset the IPv6 SYNs
// rewritten toward it (seen in the tests).
func listen(ifName string) (*net.TCPListener, bool, error) {
	control := func(dualStack bool) func(string, string, syscall.RawConn) error {
		return func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if serr = unix.BindToDevice(int(fd), ifName); serr != nil {
					serr = fmt.Errorf("SO_BINDTODEVICE %q: %w", ifName, serr)
					return
				}
				if dualStack {
					if err := unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
						serr = fmt.Errorf("IPV6_V6ONLY off: %w", err)
					}
				}
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	lc := net.ListenConfig{Control: control(true)}
	ln, err := lc.Listen(context.Background(), "tcp6", "[::]:0")
	if err == nil {
		return ln.(*net.TCPListener), true, nil
	}
	lc.Control = control(false)
	ln4, err4 := lc.Listen(context.Background(), "tcp4", "0.0.0.0:0")
	if err4 != nil {
		return nil, false, fmt.Errorf("systack: listener on interface %q (needs root or CAP_NET_RAW for SO_BINDTODEVICE): %w", ifName, errors.Join(err, err4))
	}
	return ln4.(*net.TCPListener), false, nil
}

// Read reads packets from the device and returns those that are not the
// Stack's in bufs (packet i at bufs[i][offset:offset+sizes[i]], as
// datagram.Device.Read), in order. In redirect mode that is every packet,
// read straight into bufs. In rewrite mode the TCP packets of the applications'
// connections and of the listener are rewritten and written back to the
// device (see the package doc) before Read returns; other TCP packets
// (inbound connections) and non-TCP packets are copied to bufs. If a
// whole batch was the Stack's, it reads again, so it never returns 0
// packets with a nil error. A packet that does not fit its buffer in bufs
// is dropped and counted. After Close it returns os.ErrClosed. One
// goroutine at a time may call Read.
func (s *Stack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if s.mode == ModeRedirect {
		// Nothing to sort out: the applications' connections do not
		// cross the TUN.
		for {
			if s.closed.Load() {
				return 0, os.ErrClosed
			}
			n, err := s.dev.Read(bufs, sizes, offset)
			if n > 0 || err != nil {
				return n, err
			}
		}
	}
	nb := min(len(bufs), len(sizes), len(s.rbufs))
	if nb == 0 || offset < 0 {
		return 0, fmt.Errorf("systack: read: bad arguments: %d bufs, %d sizes, offset %d", len(bufs), len(sizes), offset)
	}
	for {
		if s.closed.Load() {
			return 0, os.ErrClosed
		}
		n, err := s.dev.Read(s.rbufs[:nb], s.rsizes[:nb], headroom)
		k := s.process(bufs, sizes, offset, max(0, min(n, nb)))
		if k > 0 || err != nil {
			return k, err
		}
	}
}

// process sorts the n packets in s.rbufs: the Stack's are rewritten and
// written back to the device in one Write (which coalesces them), the
// others are copied to bufs. It returns how many it copied.
func (s *Stack) process(bufs [][]byte, sizes []int, offset, n int) int {
	wb := s.wb[:0]
	var tp tcpPacket
	var toLn, toApp, passed, frag, noEntry, full uint64
	locked := false
	var now int64
	k := 0
	for i := range n {
		sz := s.rsizes[i]
		if sz <= 0 || headroom+sz > len(s.rbufs[i]) {
			s.cnt.dropSmall.Add(1) // a device bug
			continue
		}
		pkt := s.rbufs[i][headroom : headroom+sz]
		switch parseTCP(pkt, &s.pkt, &tp) {
		case tcpFrag:
			frag++
			continue
		case isTCP:
			if tp.v6 && !s.v6 {
				passed++
				break
			}
			if !locked {
				s.nat.mu.Lock()
				locked, now = true, s.nat.now()
			}
			if tp.srcPort() == s.port {
				if e := s.nat.reverseLocked(&tp, now); e != nil {
					rewrite(&tp, e.t.dp, e.t.ap)
					wb = append(wb, s.rbufs[i][:headroom+len(tp.ip)])
					toApp++
					if tp.flags&flagRST != 0 && e.state&stResetWritten == 0 {
						s.rstd = append(s.rstd, e)
					}
				} else {
					noEntry++
				}
				continue
			}
			e, isFull := s.nat.forwardLocked(tp.tuple(), tp.flags, now)
			if e != nil {
				rewrite(&tp, e.port, s.port)
				wb = append(wb, s.rbufs[i][:headroom+len(tp.ip)])
				toLn++
				continue
			}
			if isFull {
				full++
				continue
			}
			passed++
		}
		if k >= len(bufs) || offset+len(pkt) > len(bufs[k]) {
			s.cnt.dropSmall.Add(1)
			continue
		}
		sizes[k] = copy(bufs[k][offset:], pkt)
		k++
	}
	if locked {
		s.nat.mu.Unlock()
	}
	if len(wb) > 0 {
		s.devMu.Lock()
		_, err := s.dev.Write(wb, headroom)
		s.devMu.Unlock()
		if err != nil && !errors.Is(err, os.ErrClosed) {
			s.cnt.writeErr.Add(1)
		}
		clear(wb) // drop the references until the next batch
	}
	if len(s.rstd) > 0 {
		// After the write: Close waits for these marks (waitResets).
		s.nat.mu.Lock()
		for _, e := range s.rstd {
			e.state |= stResetWritten
		}
		s.nat.mu.Unlock()
		clear(s.rstd)
		s.rstd = s.rstd[:0]
	}
	if !s.cnt.warned.Load() && s.nat.unanswered.Load() > 0 {
		s.cnt.warned.Store(true)
		s.log.Warn("the system stack's listener does not answer the applications' SYNs: a firewall may drop TCP arriving on the TUN (allow it, or use --stack gvisor)",
			"interface", s.cfg.IfName, "listener_port", s.port)
	}
	c := &s.cnt
	for _, a := range [...]struct {
		n uint64
		c *atomic.Uint64
	}{{toLn, &c.toLn}, {toApp, &c.toApp}, {passed, &c.passed}, {frag, &c.frag}, {noEntry, &c.noEntry}, {full, &c.full}} {
		if a.n != 0 {
			a.c.Add(a.n)
		}
	}
	return k
}

// Write writes packets from the tunnel to the device, serialized with
// Read's write-back. The caller keeps ownership of bufs (the device may
// rewrite them, as datagram.Device.Write says). After Close it returns
// os.ErrClosed.
func (s *Stack) Write(bufs [][]byte, offset int) (int, error) {
	if s.closed.Load() {
		return 0, os.ErrClosed
	}
	s.devMu.Lock()
	defer s.devMu.Unlock()
	return s.dev.Write(bufs, offset)
}

// BatchSize returns Dev.BatchSize().
func (s *Stack) BatchSize() int { return s.dev.BatchSize() }

// MTU returns Dev.MTU().
func (s *Stack) MTU() (int, error) { return s.dev.MTU() }

// Done is closed when Close starts.
func (s *Stack) Done() <-chan struct{} { return s.ctx.Done() }

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.cnt
	st := Stats{
		FlowsOpened:       c.opened.Load(),
		FlowsActive:       c.active.Load(),
		FlowsPending:      c.pending.Load(),
		FlowsRefused:      c.refused.Load(),
		FlowsUnreachable:  c.unreach.Load(),
		FlowsFailed:       c.failed.Load(),
		FlowErrors:        c.flowErr.Load(),
		AcceptUnknown:     c.unknown.Load(),
		BytesUp:           c.up.Load(),
		BytesDown:         c.down.Load(),
		PacketsToListener: c.toLn.Load(),
		PacketsToApp:      c.toApp.Load(),
		PacketsPassed:     c.passed.Load(),
		DropFragment:      c.frag.Load(),
		DropNoEntry:       c.noEntry.Load(),
		DropTableFull:     c.full.Load(),
		DropBufTooSmall:   c.dropSmall.Load(),
		WriteErrors:       c.writeErr.Load(),
	}
	if s.nat != nil {
		st.NATActive = s.nat.active.Load()
		st.NATOpened = s.nat.opened.Load()
		st.NATExpired = s.nat.expired.Load()
		st.SYNUnanswered = s.nat.unanswered.Load()
	}
	return st
}

// Close stops the Stack: the listener is closed, Connects in progress
// are cancelled and every flow is aborted (the application's connection
// is reset, the upstream stream too); in redirect mode the nftables table
// is then deleted (only then: without a nat chain the kernel stops
// translating the redirected connections, and their RSTs would not reach
// the applications); in rewrite mode, after a short drain (closeDrain) for
// a Read in progress to pass the resets on, the device is closed, and
// blocked and later Reads and Writes return os.ErrClosed. It waits for the Stack's goroutines, is
// idempotent, and returns the device's Close error and the error of
// deleting the table, joined (both are also logged).
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.shutdownFlows()
		var tableErr error
		if s.redir != nil {
			tableErr = s.redir.delete()
		}
		// Rewrite mode: every flow's connection was reset; the RSTs are in
		// the TUN's queue. Let the Read in progress rewrite them toward
		// the applications before the device goes. (Redirect mode's go
		// over loopback.)
		if s.mode == ModeRewrite {
			s.waitResets(closeDrain)
		}
		s.closed.Store(true)
		devErr := s.dev.Close()
		if tableErr != nil {
			s.log.Error("system stack: deleting the nftables table failed: it may still redirect TCP into the TUN to a closed port (the next client start on this TUN deletes it)", "err", tableErr)
		}
		if devErr != nil {
			s.log.Warn("system stack: closing the device failed", "err", devErr)
		}
		s.closeErr = errors.Join(devErr, tableErr)
		s.log.Info("system stack stopped", "mode", s.mode.String(), "flows_opened", s.cnt.opened.Load())
	})
	return s.closeErr
}

// waitResets waits, at most d, until Read has written toward its
// application the RST of every connection in s.aborted, or that
// connection's NAT entry is gone (a RST then has nowhere to go). It
// waits on each flow rather than on a count: a flow that ends on its own
// just as Close begins, or a second RST of one flow, must not let Close
// go before another flow's RST is through.
func (s *Stack) waitResets(d time.Duration) {
	s.mu.Lock()
	ports := slices.Clone(s.aborted)
	s.mu.Unlock()
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		s.nat.mu.Lock()
		ports = slices.DeleteFunc(ports, func(p uint16) bool {
			e := s.nat.byPort[p]
			return e == nil || e.state&stResetWritten != 0
		})
		s.nat.mu.Unlock()
		if len(ports) == 0 {
			return
		}
		if time.Since(start) >= d {
			s.log.Warn("system stack: Close did not see every aborted connection's reset reach its application (is Read still being called?)", "waited", d, "left", len(ports))
			return
		}
	}
}

// noteReset records, in rewrite mode, that c (an accepted connection)
// was reset after Close began: Close waits for its RST (waitResets).
func (s *Stack) noteReset(c *net.TCPConn) {
	if s.mode != ModeRewrite || s.ctx.Err() == nil {
		return
	}
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return
	}
	s.mu.Lock()
	s.aborted = append(s.aborted, uint16(a.Port))
	s.mu.Unlock()
}

// enter registers a flow goroutine; it fails once Close has started.
func (s *Stack) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	return true
}

// acceptLoop accepts ln's connections and serves each on its own
// goroutine once a Connect slot is free. (It takes the slot after Accept,
// so that the loop of one listener does not hold a slot while the other
// listener's connections wait.)
func (s *Stack) acceptLoop(ln *net.TCPListener) {
	defer s.wg.Done()
	for {
		c, err := ln.AcceptTCP()
		if err == nil && !s.takeFlow() {
			s.cnt.full.Add(1)
			reset(c)
			continue
		}
		if err == nil {
			select {
			case s.sem <- struct{}{}:
			case <-s.ctx.Done():
				s.releaseFlow()
				reset(c)
				s.noteReset(c)
				return
			}
		}
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept failed", "err", err)
			select { // EMFILE and the like: do not spin
			case <-time.After(50 * time.Millisecond):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		if !s.enter() {
			<-s.sem
			s.releaseFlow()
			reset(c)
			s.noteReset(c)
			return
		}
		go s.serve(c)
	}
}

// takeFlow counts an accepted connection against Config.MaxFlows in
// redirect mode (rewrite mode's NAT table bounds its flows before the
// listener sees them) and reports whether it is within the limit. Each
// successful takeFlow is matched by one releaseFlow.
func (s *Stack) takeFlow() bool {
	if s.mode != ModeRedirect {
		return true
	}
	if s.cnt.flows.Add(1) > int64(s.cfg.MaxFlows) {
		s.cnt.flows.Add(-1)
		return false
	}
	return true
}

// releaseFlow ends what takeFlow counted.
func (s *Stack) releaseFlow() {
	if s.mode == ModeRedirect {
		s.cnt.flows.Add(-1)
	}
}

// serve opens the upstream flow of one accepted connection and splices
// them; it holds a Connect slot until Connect returns.
func (s *Stack) serve(c *net.TCPConn) {
	defer s.wg.Done()
	defer s.noteReset(c)  // Close aborted it (a RST), or it failed meanwhile
	defer s.releaseFlow() // after the connection is reset or spliced to its end
	holding := true
	release := func() {
		if holding {
			holding = false
			<-s.sem
		}
	}
	defer release()
	app, dst, ok := s.addrs(c)
	if !ok {
		s.cnt.unknown.Add(1)
		reset(c)
		return
	}
	s.cnt.pending.Add(1)
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ConnectTimeout)
	stream, err := s.cfg.Connect(ctx, app, dst)
	if err == nil && stream == nil {
		err = errors.New("Connect returned no stream and no error")
	}
	if err == nil && s.ctx.Err() != nil {
		stream.Abort()
		err = s.ctx.Err()
	}
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		err = &flow.Error{Kind: flow.Timeout, Dst: dst.String(), Err: err}
	}
	cancel()
	s.cnt.pending.Add(-1)
	release()
	if err != nil {
		kind := flow.Classify(err)
		switch kind {
		case flow.Unreachable:
			s.cnt.unreach.Add(1)
		case flow.Refused, flow.Prohibited, flow.LimitReached:
			s.cnt.refused.Add(1)
		default:
			s.cnt.failed.Add(1)
		}
		s.debug("connect failed", "src", app, "dst", dst, "kind", kind.String(), "err", err)
		reset(c)
		return
	}
	s.cnt.opened.Add(1)
	s.cnt.active.Add(1)
	defer s.cnt.active.Add(-1)
	up, down, err := flow.Splice(s.ctx, stream, c, flow.WithCounters(&s.cnt.up, &s.cnt.down))
	if err != nil {
		s.cnt.flowErr.Add(1)
	}
	s.debug("flow ended", "src", app, "dst", dst, "up", up, "down", down, "err", err)
}

// addrs returns the application's address and the one it connected to,
// for an accepted connection: in redirect mode its remote address and
// conntrack's original destination, in rewrite mode the NAT entry of its
// remote address. ok is false for a connection that is not the Stack's.
func (s *Stack) addrs(c *net.TCPConn) (app, dst netip.AddrPort, ok bool) {
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if s.mode == ModeRedirect {
		dst, ok = originalDst(c)
		return remote, dst, ok
	}
	return s.nat.lookup(remote.Addr(), remote.Port())
}

// reset closes c with a RST (SO_LINGER 0).
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func (s *Stack) debug(msg string, args ...any) {
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug(msg, args...)
	}
}
