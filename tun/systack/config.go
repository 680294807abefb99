package systack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tunnel/flow"
)

// Defaults for the zero values of Config.
const (
	DefaultMaxPending     = 256
	DefaultMaxFlows       = 16384
	DefaultConnectTimeout = 15 * time.Second
	// MaxMaxFlows is the largest Config.MaxFlows: each entry holds a NAT
	// port, and half the port space stays free so that finding one is
	// quick.
	MaxMaxFlows = 32768
)

// Mode is how the applications' connections reach the Stack's listener
// (see the package doc).
type Mode int

const (
	// ModeAuto is redirect mode if its nftables table can be created,
	// else rewrite mode.
	ModeAuto Mode = iota
	// ModeRedirect: an nftables rule redirects the applications' SYNs to a
	// loopback listener before they reach the TUN; conntrack does the NAT.
	ModeRedirect
	// ModeRewrite: Read rewrites the applications' packets from the TUN
	// toward a listener bound to the TUN and writes them back (the Stack's
	// own NAT table).
	ModeRewrite
)

// String returns "auto", "redirect" or "rewrite".
func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeRedirect:
		return "redirect"
	case ModeRewrite:
		return "rewrite"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config configures a Stack. The zero value of each optional field selects
// the documented default.
type Config struct {
	// Dev is the TUN device the Stack reads from and writes to: a Linux
	// TUN (tun.Create) whose Write takes an offset of
	// datagram.Headroom. Required. The Stack owns it once New succeeds
	// and closes it on Close; if New fails, Dev is left open (unlike
	// flowstack.New), so that the caller can fall back to another stack.
	Dev datagram.Device

	// IfName is Dev's interface name. In redirect mode the nftables rule
	// matches TCP routed out of it; in rewrite mode the listener is bound
	// to it (SO_BINDTODEVICE), so it accepts only connections that arrive
	// on the TUN and its packets leave only through it, whatever the
	// routing tables say. Required.
	IfName string

	// Mode selects redirect or rewrite mode; the zero value, ModeAuto,
	// tries redirect mode first and logs which one runs.
	Mode Mode

	// Connect opens the upstream flow for a TCP connection from src (the
	// application) to dst (the address it connected to). Unlike
	// flowstack's, it is called after the local handshake completed (see
	// the package doc). ctx carries ConnectTimeout and is cancelled by
	// Close; Connect must return when it is done. On success the Stack
	// owns the returned Stream. Any error resets the application's
	// connection. Required.
	Connect func(ctx context.Context, src, dst netip.AddrPort) (flow.Stream, error)

	// ConnectTimeout bounds each Connect; when it elapses the application
	// gets a RST. If zero, DefaultConnectTimeout (15 s).
	ConnectTimeout time.Duration

	// MaxPending bounds the accepted connections waiting for Connect;
	// while that many wait, the Stack stops accepting, the listener's
	// backlog fills and the kernel drops further SYNs, which the
	// applications retransmit. If zero, DefaultMaxPending (256).
	MaxPending int

	// MaxFlows bounds the flows. In rewrite mode it is the size of the NAT
	// table: connections connecting, established or closing (see the
	// package doc, "NAT table"); while it is full, new SYNs are dropped and
	// counted (Stats.DropTableFull), and the applications retransmit them.
	// In redirect mode it bounds the accepted connections not yet ended
	// (waiting for Connect or spliced; each holds goroutines and an
	// upstream stream): the kernel completes the handshake before the
	// Stack sees a connection, so one over the limit is reset and counted
	// (Stats.DropTableFull). At most MaxMaxFlows. If zero,
	// DefaultMaxFlows (16384).
	MaxFlows int

	// Logger receives start/stop and per-flow debug messages, never one
	// per packet. If nil, nothing is logged.
	Logger *slog.Logger
}

// withDefaults validates c and fills in the defaults.
func (c Config) withDefaults() (Config, error) {
	switch {
	case c.Dev == nil:
		return c, errors.New("systack: Config.Dev is nil: want the TUN device")
	case c.IfName == "":
		return c, errors.New("systack: Config.IfName is empty: want the TUN's interface name")
	case c.Mode < ModeAuto || c.Mode > ModeRewrite:
		return c, fmt.Errorf("systack: Config.Mode %d is not ModeAuto, ModeRedirect or ModeRewrite", int(c.Mode))
	case c.Connect == nil:
		return c, errors.New("systack: Config.Connect is nil: want the func that opens upstream flows")
	case c.MaxPending < 0:
		return c, fmt.Errorf("systack: Config.MaxPending %d is negative (0 = %d)", c.MaxPending, DefaultMaxPending)
	case c.MaxFlows < 0 || c.MaxFlows > MaxMaxFlows:
		return c, fmt.Errorf("systack: Config.MaxFlows %d out of range: want 1..%d (0 = %d)", c.MaxFlows, MaxMaxFlows, DefaultMaxFlows)
	case c.ConnectTimeout < 0:
		return c, fmt.Errorf("systack: Config.ConnectTimeout %v is negative (0 = %v)", c.ConnectTimeout, DefaultConnectTimeout)
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	return c, nil
}

// Stats are counters since New (FlowsActive, FlowsPending and NATActive
// are gauges). The Packets*, Drop*, WriteErrors, NAT* and SYNUnanswered
// counters are rewrite mode's; in redirect mode
// they stay zero, since no packet of the applications' connections
// crosses the TUN.
type Stats struct {
	FlowsOpened  uint64 // Connect succeeded; the flow is spliced
	FlowsActive  int64  // flows being spliced
	FlowsPending int64  // accepted connections whose Connect is in progress
	FlowsRefused uint64 // Connect failed with Refused, Prohibited or LimitReached: RST
	// FlowsUnreachable: Connect failed with Unreachable: RST (the local
	// handshake is already done, so an ICMP error would not reach
	// connect(2)).
	FlowsUnreachable uint64
	FlowsFailed      uint64 // Connect failed otherwise (Timeout, Other, ...): RST
	FlowErrors       uint64 // spliced flows that ended with a reset or error rather than two FINs
	// AcceptUnknown: accepted connections that were not the Stack's (no
	// NAT entry in rewrite mode, no original destination in redirect
	// mode: a local process that dialed the listener itself): RST.
	AcceptUnknown uint64

	BytesUp   uint64 // application -> upstream stream
	BytesDown uint64 // upstream stream -> application

	PacketsToListener uint64 // TCP packets of applications rewritten toward the listener
	PacketsToApp      uint64 // TCP packets of the listener rewritten back toward the application
	PacketsPassed     uint64 // TCP packets Read passed to the caller: no NAT entry and not a SYN (inbound connections)
	DropFragment      uint64 // TCP packets dropped: IP fragments, or too short for a TCP header
	DropNoEntry       uint64 // listener packets dropped: their NAT entry is gone
	DropTableFull     uint64 // rewrite mode: SYNs dropped, the NAT table was full; redirect mode: connections reset, MaxFlows were open
	DropBufTooSmall   uint64 // non-TCP packets Read dropped: they did not fit the caller's buffer
	WriteErrors       uint64 // device writes of rewritten packets that failed other than by closure

	NATActive  int64  // entries in the NAT table (expired ones until they are swept)
	NATOpened  uint64 // entries created (one per SYN of a new connection)
	NATExpired uint64 // entries removed after their timeout (closed ones after their linger)
	// SYNUnanswered: SYNs the applications retransmitted because the
	// listener did not answer the first within a second. The first one
	// is logged as a warning: a host firewall dropping TCP that arrives
	// on the TUN, or a full accept backlog.
	SYNUnanswered uint64
}
