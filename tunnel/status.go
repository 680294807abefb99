package tunnel

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/roamvpn/roam/tunnel/fec"
)

// ServerStatus is a snapshot of a Server for `roam status` and metrics.
// It is a plain value owned by the caller; the server keeps no reference.
type ServerStatus struct {
	// Listen is the UDP address the server serves on ("" before Serve).
	Listen string `json:"listen"`
	// Version is ServerConfig.Version.
	Version string `json:"version"`
	// Started is when Serve began listening (zero before).
	Started time.Time `json:"started"`
	// Sessions are the live tunnel sessions (CONNECT-IP) and browser
	// sessions (WebTransport), oldest first.
	Sessions []SessionStatus `json:"sessions"`
	// FEC is the socket's forward error correction; nil if it is off
	// (ServerConfig.DisableFEC).
	FEC *FECStatus `json:"fec,omitempty"`
}

// FECStatus sums the forward-error-correction counters (tunnel/fec) of a
// client's connections or a server's socket.
type FECStatus struct {
	// Active: the client's current connection uses FEC (the server
	// agreed); for a server, Peers > 0.
	Active bool `json:"active"`
	// Peers is the number of addresses with FEC state (server).
	Peers int `json:"peers"`
	// Parity is the block shape last sent, "K:M" ("16:0": framing
	// without parity, as auto on a clean link).
	Parity string `json:"parity"`
	// PeerLoss is the loss rate the peer reported last (0..1).
	PeerLoss float64 `json:"peer_loss"`
	// DataFrames and ParityFrames count frames sent.
	DataFrames   uint64 `json:"data_frames"`
	ParityFrames uint64 `json:"parity_frames"`
	// Lost counts packets from the peer that never arrived; Recovered of
	// them were rebuilt from parity, Unrecovered given up on.
	Lost        uint64 `json:"lost"`
	Recovered   uint64 `json:"recovered"`
	Unrecovered uint64 `json:"unrecovered"`
	// Held counts packets held behind a gap; HoldTimeouts gaps given up
	// on after the hold bound.
	Held         uint64 `json:"held"`
	HoldTimeouts uint64 `json:"hold_timeouts"`
	// Malformed counts frames dropped as invalid.
	Malformed uint64 `json:"malformed"`
}

func fecStatus(s fec.Stats, active bool) *FECStatus {
	return &FECStatus{
		Active: active, Peers: s.Peers, Parity: fmt.Sprintf("%d:%d", s.K, s.M), PeerLoss: s.PeerLoss,
		DataFrames: s.DataFrames, ParityFrames: s.ParityFrames,
		Lost: s.Lost, Recovered: s.Recovered, Unrecovered: s.Unrecovered,
		Held: s.Held, HoldTimeouts: s.HoldTimeouts, Malformed: s.Malformed + s.NoPeer,
	}
}

// SessionStatus is one live session on the server.
type SessionStatus struct {
	// Kind is "connect-ip" or "webtransport".
	Kind string `json:"kind"`
	// Owner is the token ID (auth.Identity.Owner); User its user name, if
	// the token was signed.
	Owner string `json:"owner"`
	User  string `json:"user,omitempty"`
	// Remote is the client's current UDP address.
	Remote string `json:"remote"`
	// Addrs are the tunnel addresses leased to the session (none for a
	// browser session).
	Addrs []netip.Addr `json:"addrs,omitempty"`
	// Since is when the session was established.
	Since time.Time `json:"since"`
	// RTT is the QUIC connection's smoothed RTT.
	RTT time.Duration `json:"rtt_ns"`
	// CWND is the server's QUIC congestion window toward the client, in
	// bytes, and QUICLost the packets quic-go declared lost on the
	// connection.
	CWND     uint64 `json:"cwnd"`
	QUICLost uint64 `json:"quic_lost"`
	// TxPackets/TxBytes are packets sent to the client, RxPackets/RxBytes
	// packets received from it (IP packet bytes; datagrams only).
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	// RxDatagrams counts the datagrams taken from the connection for
	// the session, before any check: the client's TxPackets minus this
	// is what was lost on the way (wire, kernel, QUIC library queues).
	RxDatagrams uint64 `json:"rx_datagrams"`
	// Flows is the number of flows (TCP streams) open on the session's
	// connection now.
	Flows int `json:"flows"`
}

// ClientStatus is a snapshot of a Client for `roam status` and metrics.
// It is a plain value owned by the caller.
type ClientStatus struct {
	// Server is ClientConfig.Server.
	Server string `json:"server"`
	// State is "connecting", "connected" or "reconnecting".
	State string `json:"state"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
	// Addrs are the tunnel addresses the server assigned.
	Addrs []netip.Prefix `json:"addrs,omitempty"`
	// Routes are the routes installed through the tunnel.
	Routes []netip.Prefix `json:"routes,omitempty"`
	// DNS are the DNS servers the server pushed (and the client uses).
	DNS []netip.Addr `json:"dns,omitempty"`
	// Paths are the QUIC paths of the current connection; the active one
	// first.
	Paths []PathStatus `json:"paths,omitempty"`
	// RTT is the current connection's smoothed RTT.
	RTT time.Duration `json:"rtt_ns"`
	// CWND is the client's QUIC congestion window toward the server, in
	// bytes, and QUICLost the packets quic-go declared lost on the current
	// connection. A window that stays small while a bulk transfer runs is
	// quic-go's sender in congestion avoidance (docs/bench.md).
	CWND     uint64 `json:"cwnd"`
	QUICLost uint64 `json:"quic_lost"`
	// Migrations and Reconnects count completed path switches and
	// re-dials since the client started.
	Migrations uint64 `json:"migrations"`
	Reconnects uint64 `json:"reconnects"`
	// Flows is the number of flows open now (flow mode).
	Flows int `json:"flows"`
	// TxPackets/TxBytes are packets sent to the server, RxPackets/RxBytes
	// packets received (datagrams only).
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	// RxDatagrams counts the datagrams taken from the connection, before
	// any check (see SessionStatus.RxDatagrams).
	RxDatagrams uint64 `json:"rx_datagrams"`
	// FEC is forward error correction over all connections so far; nil
	// if ClientConfig.FEC is off.
	FEC *FECStatus `json:"fec,omitempty"`
}

// PathStatus is one QUIC path of the client's connection.
type PathStatus struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
	Active bool   `json:"active"`
}

// Status returns a snapshot of the server and its live sessions (browser
// sessions once their HELLO was accepted), oldest first. It is safe to
// call concurrently with everything, before, during and after Serve; the
// result is the caller's.
func (s *Server) Status() ServerStatus {
	st := ServerStatus{Version: s.cfg.Version, Sessions: []SessionStatus{}}
	if a := s.Addr(); a != nil {
		st.Listen = a.String()
	}
	if t := s.started.Load(); t != nil {
		st.Started = *t
	}
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		as := sess.addrs.Load()
		qs := sess.cs.conn.ConnectionStats()
		st.Sessions = append(st.Sessions, SessionStatus{
			Kind:        "connect-ip",
			Owner:       sess.owner,
			User:        sess.pol.Load().id.User,
			Remote:      sess.cs.conn.RemoteAddr().String(),
			Addrs:       []netip.Addr{as.v4, as.v6},
			Since:       sess.since,
			RTT:         qs.SmoothedRTT,
			CWND:        qs.CongestionWindow,
			QUICLost:    qs.PacketsLost,
			TxPackets:   sess.txPackets.Load(),
			TxBytes:     sess.txBytes.Load(),
			RxPackets:   sess.rxPackets.Load(),
			RxBytes:     sess.rxBytes.Load(),
			RxDatagrams: sess.rxDatagrams.Load(),
			Flows:       sess.cs.flowLimiter(s.cfg.MaxFlows).InUse(),
		})
	}
	s.webMu.Lock()
	for ws := range s.webSessions {
		if !ws.admitted {
			continue
		}
		st.Sessions = append(st.Sessions, SessionStatus{
			Kind:   "webtransport",
			Owner:  ws.owner,
			User:   ws.pol.Load().id.User,
			Remote: ws.cs.conn.RemoteAddr().String(),
			Since:  ws.since,
			RTT:    ws.cs.conn.ConnectionStats().SmoothedRTT,
			Flows:  ws.cs.flowLimiter(s.cfg.MaxFlows).InUse(),
		})
	}
	s.webMu.Unlock()
	slices.SortStableFunc(st.Sessions, func(a, b SessionStatus) int { return a.Since.Compare(b.Since) })
	if fs, on := s.FECStats(); on {
		st.FEC = fecStatus(fs, fs.Peers > 0)
	}
	return st
}

// Client states (ClientStatus.State).
const (
	stateConnecting   = "connecting"
	stateConnected    = "connected"
	stateReconnecting = "reconnecting"
)

// clientStatus is the part of ClientStatus the client updates as it goes.
type clientStatus struct {
	mu    sync.Mutex
	state string    // guarded by mu
	since time.Time // guarded by mu
	info  *Info     // guarded by mu; the device's configuration once up
}

func (cs *clientStatus) set(state string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.state != state {
		cs.state, cs.since = state, time.Now()
	}
}

// Status returns a snapshot of the client: its state, the tunnel's
// addresses and routes, the current connection's path and RTT, and the
// counters. It is safe to call concurrently with Run, before and after
// it; the result is the caller's. Before Run it says "connecting" with
// nothing else; after Run returns it keeps the last state and counters
// but no paths.
func (c *Client) Status() ClientStatus {
	c.status.mu.Lock()
	st := ClientStatus{Server: c.cfg.Server, State: c.status.state, Since: c.status.since}
	if info := c.status.info; info != nil {
		st.Addrs = slices.Clone(info.Addresses)
		st.Routes = slices.Clone(info.Routes)
	}
	c.status.mu.Unlock()
	if sup := c.sup.Load(); sup != nil {
		if l := sup.cur.Load(); l != nil {
			st.Paths = []PathStatus{{Local: l.conn.LocalAddr().String(), Remote: l.conn.RemoteAddr().String(), Active: true}}
			qs := l.conn.ConnectionStats()
			st.RTT, st.CWND, st.QUICLost = qs.SmoothedRTT, qs.CongestionWindow, qs.PacketsLost
		}
	}
	st.Migrations = c.migrations.Load()
	st.Reconnects = c.reconnects.Load()
	st.Flows = int(c.flowsOpen.Load())
	st.TxPackets = c.stats.TxPackets.Load()
	st.TxBytes = c.stats.TxBytes.Load()
	st.RxPackets = c.stats.RxPackets.Load()
	st.RxBytes = c.stats.RxBytes.Load()
	st.RxDatagrams = c.stats.RxDatagrams.Load()
	if !c.cfg.FEC.Off() {
		st.FEC = fecStatus(c.FECStats())
	}
	return st
}
