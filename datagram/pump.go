package datagram

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go/quicvarint"
)

// maxConsecutiveReadErrors is how many Device.Read failures in a row (other
// than closure) the reader tolerates before Run gives up on the device.
// Single failures happen (wireguard's TUN reports a GSO packet with too
// many segments, for example) and only cost the packets of that read.
const maxConsecutiveReadErrors = 100

// Pump moves packets between one Device and one DatagramConn for one
// CONNECT-IP session (the client side; the server uses the pieces:
// ParsePrefix, Packet, PutPrefix, Writer). Set the fields, then call Run
// once. The fields must not change while Run runs.
//
// Device -> peer (the reader, one goroutine): Dev.Read into BatchSize small
// pooled buffers at offset Headroom, then per packet Decode, Allow, PutPrefix
// in place in front of the packet, and SendDatagram, which copies, so the
// buffers are reused for the next read.
//
// Peer -> device (the receiver, one goroutine, draining ReceiveDatagram
// continuously because quic-go drops datagrams when its queue is full):
// ParsePrefix, check the quarter stream ID and context ID 0 (only the
// context ID with OmitQuarterStreamID), Decode,
// AllowIn, then hand the packet to a Writer (a third goroutine), which
// batches packets into Dev.Write calls. Drops are counted in Stats, never
// logged per packet.
type Pump struct {
	// Dev is the packet device. Required. Run never closes it.
	Dev Device
	// Conn carries the datagrams (the initial link's; see Link and
	// SetLink). Required unless OnLinkError is set. Run never closes it,
	// nor any link's.
	Conn DatagramConn
	// QuarterStreamID is the CONNECT-IP request stream's ID divided by 4;
	// it prefixes every sent datagram, and received datagrams with another
	// value are dropped (DropStream). At most 2^62-1. It also sizes the
	// prefix when computing the MTU for ICMP too-big replies, so set it
	// even with OmitQuarterStreamID.
	QuarterStreamID uint64
	// OmitQuarterStreamID is for a Conn that adds and strips the quarter
	// stream ID itself: an HTTP/3 request stream (quic-go's *http3.Stream)
	// or a WebTransport session. The pump then writes and parses only the
	// context ID varint in front of each packet.
	OmitQuarterStreamID bool
	// Recv, if set, is where datagrams are received from instead of Conn,
	// and what it returns carries no quarter stream ID (only the context
	// ID): an HTTP/3 request stream's ReceiveDatagram. quic-go's http3
	// layer takes every datagram of a connection once it has seen a peer's
	// SETTINGS enabling HTTP datagrams and sorts them by stream, so then
	// the receive side must go through the stream, while sending can still
	// go straight to the QUIC connection with the whole prefix written in
	// place (no copy). Roam's client keeps the SETTINGS from http3 and
	// leaves Recv unset (tunnel/h3client.go): the per-stream queue drops
	// datagrams under load.
	Recv DatagramReceiver
	// Allow judges every packet read from Dev that decoded correctly,
	// before it is sent; anything but NoDrop drops it and counts the
	// reason. It runs on the reader goroutine and must not retain p.
	// Nil allows everything.
	Allow func(p *Packet) DropReason
	// AllowIn judges every packet received from the peer that decoded
	// correctly, before it is queued for Dev, like Allow. It runs on the
	// receiver goroutine. Nil allows everything.
	AllowIn func(p *Packet) DropReason
	// TooLarge inspects a failed SendDatagram's error; if it means
	// "datagram too large" it returns the largest datagram payload that
	// currently fits and true. The pump then counts DropTooBig and writes
	// an ICMP fragmentation-needed / packet-too-big (AppendTooBig, MTU =
	// maxPayload - PrefixLen) back into Dev, so the sender's path-MTU
	// discovery adapts. Other send errors end Run. Nil treats every send
	// error as fatal. With quic-go:
	//
	//	func(err error) (int, bool) {
	//		var e *quic.DatagramTooLargeError
	//		if errors.As(err, &e) {
	//			return int(e.MaxDatagramPayloadSize), true
	//		}
	//		return 0, false
	//	}
	TooLarge func(err error) (maxPayload int, ok bool)
	// Stats receives the counters. Required; it may be shared.
	Stats *Stats
	// Logger gets start/stop events (debug) and rate-limited errors; never
	// one line per packet. Nil means silent.
	Logger *slog.Logger
	// QueueLen is the number of received packets that may wait for Dev;
	// beyond it they are dropped (DropQueueFull). Zero means
	// DefaultQueueLen.
	QueueLen int
	// OnLinkError, if set, makes the pump survive the failure of its link
	// (the Conn and Recv of the current Link): a SendDatagram error other
	// than "too large", or a ReceiveDatagram error, then unsets the link
	// (the pump pauses, see SetLink) and calls OnLinkError once for that
	// link, on the goroutine that saw the failure; it must not block. The
	// caller then sets a new link with SetLink when it has one. With
	// OnLinkError set, Conn may be nil: Run starts paused. Nil: a link
	// failure ends Run, as described there.
	OnLinkError func(l *Link, err error)
	// OnStop, if set, is called once, on Run's goroutine, as soon as Run
	// starts to stop (ctx done, Dev closed, or a loop failed), before it
	// waits for its goroutines. Dev.Read can only be interrupted by
	// Dev.Close, so OnStop is the place to close Dev (func() { dev.Close() })
	// if the caller wants Run to return on a Conn failure by itself. Nil:
	// Run returns only after the caller has closed Dev.
	OnStop func()

	linkOnce    sync.Once
	link        atomic.Pointer[Link] // nil: paused
	linkMu      sync.Mutex
	linkChanged chan struct{} // guarded by linkMu; closed at each link change
}

// Link is one carrier of a pump's datagrams: a connection to send on and
// (optionally) a receiver, with the prefix they use. A pump starts with the
// link made of its Conn, Recv, QuarterStreamID and OmitQuarterStreamID
// fields; SetLink replaces it, for example after a reconnect. A Link must
// not change after it is passed to the pump.
type Link struct {
	// Conn sends (and, without Recv, receives) the datagrams. Required.
	Conn DatagramConn
	// Recv, if set, receives the datagrams instead of Conn (see Pump.Recv).
	Recv DatagramReceiver
	// QuarterStreamID and OmitQuarterStreamID are as in Pump.
	QuarterStreamID     uint64
	OmitQuarterStreamID bool
}

func (l *Link) receiver() DatagramReceiver {
	if l.Recv != nil {
		return l.Recv
	}
	return l.Conn
}

// SetLink makes l the pump's link from now on: the reader sends its next
// batch on it, and the receiver switches to it as soon as its current
// ReceiveDatagram returns (the caller closes the old link, which makes it
// return). A nil l pauses the pump: packets read from Dev are dropped and
// counted in DropNoLink, nothing is received. SetLink may be called at any
// time, also before Run (Run then starts with l instead of the fields); it
// returns an error if l's QuarterStreamID exceeds 2^62-1 or l has no Conn.
func (p *Pump) SetLink(l *Link) error {
	if l != nil && (l.Conn == nil || l.QuarterStreamID > maxVarint) {
		return fmt.Errorf("datagram: SetLink: a link needs a Conn and a QuarterStreamID below 2^62 (got %d)", l.QuarterStreamID)
	}
	p.initLink(true)
	p.link.Store(l)
	p.linkMu.Lock()
	close(p.linkChanged)
	p.linkChanged = make(chan struct{})
	p.linkMu.Unlock()
	return nil
}

// initLink sets up the link state once: from the fields, unless SetLink
// comes first (explicit).
func (p *Pump) initLink(explicit bool) {
	p.linkOnce.Do(func() {
		p.linkChanged = make(chan struct{})
		if !explicit && p.Conn != nil {
			p.link.Store(&Link{Conn: p.Conn, Recv: p.Recv, QuarterStreamID: p.QuarterStreamID, OmitQuarterStreamID: p.OmitQuarterStreamID})
		}
	})
}

// linkWait returns the current link and a channel closed at its next
// change.
func (p *Pump) linkWait() (*Link, <-chan struct{}) {
	p.linkMu.Lock()
	defer p.linkMu.Unlock()
	return p.link.Load(), p.linkChanged
}

// linkFailed unsets l if it is still the current link and reports err for
// it once. It returns false when the pump has no OnLinkError (the failure
// is then the caller's to end Run with).
func (p *Pump) linkFailed(l *Link, err error) bool {
	if p.OnLinkError == nil {
		return false
	}
	p.linkMu.Lock()
	swapped := p.link.CompareAndSwap(l, nil)
	if swapped {
		close(p.linkChanged)
		p.linkChanged = make(chan struct{})
	}
	p.linkMu.Unlock()
	if swapped {
		p.OnLinkError(l, err)
	}
	return true
}

// Run pumps packets until ctx is done, Dev is closed, or Dev or Conn fail,
// and returns after all its goroutines (reader, receiver, writer) have
// stopped.
//
// Run closes neither Dev nor Conn. The receiver and writer stop on their own
// when Run stops, but the reader is normally blocked in Dev.Read, which only
// Dev.Close interrupts: the caller must close Dev when ctx is done (for
// example context.AfterFunc(ctx, func() { dev.Close() })), or set OnStop to
// close it. A Dev closed while Run runs (Read or Write failing with
// os.ErrClosed / net.ErrClosed) ends Run normally.
//
// Run returns nil when it stopped because ctx was done or Dev was closed, and
// otherwise the first failure: a SendDatagram or ReceiveDatagram error (other
// than "too large"; only without OnLinkError), or Dev.Read failing 100 times
// in a row. A blocked
// SendDatagram (full send queue) delays the stop until it returns. Run must
// not be called twice concurrently.
func (p *Pump) Run(ctx context.Context) error {
	switch {
	case p.Dev == nil:
		return errors.New("datagram: Pump.Dev is required")
	case p.Conn == nil && p.OnLinkError == nil:
		return errors.New("datagram: Pump.Conn is required (or OnLinkError, to start without a link)")
	case p.Stats == nil:
		return errors.New("datagram: Pump.Stats is required")
	case p.QuarterStreamID > maxVarint:
		return fmt.Errorf("datagram: Pump.QuarterStreamID %d exceeds 2^62-1", p.QuarterStreamID)
	}
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p.initLink(false)
	w := NewWriter(p.Dev, p.Stats, p.QueueLen)
	w.SetLogger(log)
	rd := newReader(p, w, log)

	parent := ctx
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		stopped bool  // guarded by mu: some loop has ended
		failure error // guarded by mu: the first loop error, if it came first
	)
	loop := func(f func(context.Context) error) {
		wg.Go(func() {
			err := f(ctx)
			mu.Lock()
			if !stopped {
				stopped = true
				if parent.Err() == nil {
					failure = err
				}
			}
			mu.Unlock()
			cancel()
		})
	}
	loop(w.Run)
	loop(func(ctx context.Context) error { return p.receive(ctx, w, log) })
	loop(rd.run)

	<-ctx.Done()
	if p.OnStop != nil {
		p.OnStop()
	}
	wg.Wait()
	return failure
}

// receive is the receiver loop: it drains the current link's
// ReceiveDatagram and queues the packets for the device.
func (p *Pump) receive(ctx context.Context, w *Writer, log *slog.Logger) error {
	log.Debug("datagram receiver started")
	defer log.Debug("datagram receiver stopped")
	var pkt Packet
	for {
		l, changed := p.linkWait()
		if l == nil {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		src := l.receiver()
		for {
			b, err := src.ReceiveDatagram(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if p.link.Load() != l {
					break // replaced: the old link's closing is not a failure
				}
				err = fmt.Errorf("datagram: receiving from the peer: %w", err)
				if !p.linkFailed(l, err) {
					return err
				}
				break
			}
			p.handleDatagram(b, &pkt, w, l)
		}
	}
}

// handleDatagram checks one received datagram b (owned by the pump) and
// queues its packet for the device, or drops and counts it. pkt is scratch.
func (p *Pump) handleDatagram(b []byte, pkt *Packet, w *Writer, l *Link) {
	st := p.Stats
	st.RxDatagrams.Add(1)
	var (
		qsid, ctxID uint64
		n           int
		err         error
	)
	if l.OmitQuarterStreamID || l.Recv != nil {
		qsid = l.QuarterStreamID
		ctxID, n, err = quicvarint.Parse(b)
	} else {
		qsid, ctxID, n, err = ParsePrefix(b)
	}
	switch {
	case err != nil:
		st.DropMalformed.Add(1)
		return
	case qsid != l.QuarterStreamID:
		st.DropStream.Add(1)
		return
	case ctxID != 0:
		// RFC 9484 §6: datagrams with an unknown context ID are dropped
		// silently.
		st.DropContext.Add(1)
		return
	}
	b = b[n:]
	if pkt.Decode(b) != nil {
		st.DropMalformed.Add(1)
		return
	}
	if p.AllowIn != nil {
		if r := p.AllowIn(pkt); r != NoDrop {
			var d dropCounts
			d.reason(r)
			d.flush(st)
			return
		}
	}
	if w.EnqueueOwned(b[:pkt.Len]) {
		st.RxPackets.Add(1)
		st.RxBytes.Add(uint64(pkt.Len))
	}
}

// reader is the device -> peer loop and its state, allocated once per Run.
type reader struct {
	p      *Pump
	w      *Writer
	log    *slog.Logger
	arrs   []*[BufSize]byte
	bufs   [][]byte
	sizes  []int
	pkt    Packet
	icmp   []byte // scratch for ICMP too-big replies, cap MaxTooBigLen
	drops  dropCounts
	errLog rateLimit
}

func newReader(p *Pump, w *Writer, log *slog.Logger) *reader {
	p.initLink(false)
	n := max(p.Dev.BatchSize(), 1)
	r := &reader{
		p:     p,
		w:     w,
		log:   log,
		arrs:  make([]*[BufSize]byte, n),
		bufs:  make([][]byte, n),
		sizes: make([]int, n),
		icmp:  make([]byte, 0, MaxTooBigLen),
	}
	for i := range r.arrs {
		r.arrs[i] = GetBuf()
		r.bufs[i] = r.arrs[i][:]
	}
	return r
}

func (r *reader) free() {
	for i, a := range r.arrs {
		PutBuf(a)
		r.arrs[i], r.bufs[i] = nil, nil
	}
}

// run is the reader loop.
func (r *reader) run(ctx context.Context) error {
	r.log.Debug("device reader started")
	defer r.log.Debug("device reader stopped")
	defer r.free()
	errs := 0
	for {
		n, err := r.p.Dev.Read(r.bufs, r.sizes, Headroom)
		n = min(max(n, 0), len(r.bufs))
		if serr := r.batch(n); serr != nil {
			if ctx.Err() != nil || isClosed(serr) {
				return nil
			}
			return serr
		}
		switch {
		case err == nil:
			errs = 0
		case ctx.Err() != nil || isClosed(err):
			return nil
		default:
			r.p.Stats.ReadErrors.Add(1)
			if errs++; errs >= maxConsecutiveReadErrors {
				return fmt.Errorf("datagram: reading the device failed %d times in a row: %w", errs, err)
			}
			if r.errLog.allow() {
				r.log.Warn("device read failed (counted; further errors suppressed for a while)", "err", err)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// batch sends the first n packets of the read batch on the current link.
// It returns an error only for a fatal SendDatagram failure.
func (r *reader) batch(n int) error {
	p := r.p
	l := p.link.Load()
	var tx, txBytes uint64
	var err error
	for i := 0; i < n; i++ {
		size := r.sizes[i]
		if size <= 0 || size > MaxPacketLen {
			r.drops.malformed++
			continue
		}
		buf := r.arrs[i]
		pkt := buf[Headroom : Headroom+size]
		if r.pkt.Decode(pkt) != nil {
			r.drops.malformed++
			continue
		}
		if p.Allow != nil {
			if reason := p.Allow(&r.pkt); reason != NoDrop {
				r.drops.reason(reason)
				continue
			}
		}
		if l == nil {
			r.drops.noLink++
			continue
		}
		start := Headroom - 1 // context ID 0 is the single byte 0x00
		if l.OmitQuarterStreamID {
			buf[start] = 0
		} else {
			var perr error
			if start, perr = PutPrefix(buf[:], Headroom, l.QuarterStreamID, 0); perr != nil {
				r.drops.malformed++ // unreachable: the link's QuarterStreamID was checked
				continue
			}
		}
		sendErr := l.Conn.SendDatagram(buf[start : Headroom+r.pkt.Len])
		if sendErr == nil {
			tx++
			txBytes += uint64(r.pkt.Len)
			continue
		}
		if r.tooBig(l, sendErr, pkt[:r.pkt.Len]) {
			continue
		}
		sendErr = fmt.Errorf("datagram: sending to the peer: %w", sendErr)
		if !p.linkFailed(l, sendErr) {
			err = sendErr
			break
		}
		// The link is gone: the rest of the batch has nowhere to go.
		r.drops.noLink += uint64(n - i)
		break
	}
	add(&p.Stats.TxPackets, tx)
	add(&p.Stats.TxBytes, txBytes)
	r.drops.flush(p.Stats)
	return err
}

// tooBig handles a send error: if TooLarge says it is "datagram too large",
// it counts the drop, queues an ICMP reply for the device and returns true.
func (r *reader) tooBig(l *Link, err error, pkt []byte) bool {
	if r.p.TooLarge == nil {
		return false
	}
	maxPayload, ok := r.p.TooLarge(err)
	if !ok {
		return false
	}
	r.drops.tooBig++
	mtu := maxPayload - PrefixLen(l.QuarterStreamID, 0)
	if icmp, ok := AppendTooBig(r.icmp[:0], pkt, mtu); ok && r.w.Enqueue(icmp) {
		r.drops.icmp++
	}
	return true
}
