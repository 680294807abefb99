// Package flowstack is the client side of Roam's flow mode: a userspace
// TCP terminator (gVisor's tcpip) that sits between the TUN device and the
// packet pump. It is itself a packet device ([Stack] has the method set of
// datagram.Device): the pump reads from and writes to the Stack as it would
// to the TUN.
//
//	TUN ──Read──► Stack.Read ──TCP──► gVisor ──SYN──► Config.Connect ─► flow.Stream (CONNECT)
//	                  │                  ▲                                    │
//	                  └─ everything else ┼─► pump ─► CONNECT-IP datagrams     │
//	TUN ◄─Write── Stack.Write ◄─ pump    └──────── flow.Splice ◄──────────────┘
//
// Every TCP packet (IPv4 and IPv6, fragments included) that Read takes from
// the device goes to gVisor instead of to the caller; the caller gets the
// other packets. Read runs gVisor's receive path on the caller's goroutine,
// through gVisor's GRO, which merges the segments of a flow within a batch
// (a Linux TUN splits the kernel's GSO bursts into MTU-sized packets); the
// Stack trusts the device's checksums (see Stack.Read). gVisor accepts
// every destination (promiscuous mode) and answers from it (spoofing). For
// each SYN a forwarder goroutine calls [Config.Connect] before answering,
// so the local handshake completes only when the upstream flow is open; the
// outcome the application sees follows the *flow.Error that Connect
// returns:
//
//   - success: SYN-ACK; bytes are then copied both ways by flow.Splice, FIN
//     and reset propagated in both directions;
//   - Refused, Prohibited, LimitReached, Timeout, Other (and any error that
//     is not a *flow.Error), and a Connect that outlives its timeout: RST,
//     so connect(2) fails with ECONNREFUSED;
//   - Unreachable: an ICMP host unreachable (ICMPv6 address unreachable)
//     quoting the SYN, so connect(2) fails with EHOSTUNREACH at once.
//
// At most [Config.MaxPending] SYNs wait for Connect; further SYNs are
// ignored and the application's TCP retransmits them, which slows a client
// that opens connections too fast. At most [Config.MaxFlows] flows exist
// (connecting or established); beyond that a SYN gets a RST.
//
// TCP packets that arrive from the tunnel (Write) go to the device
// unchanged. A TCP connection opened from the tunnel toward this host
// therefore does not work in flow mode: its replies, read from the device,
// are diverted into gVisor like all TCP.
//
// # Memory
//
// Per flow: a gVisor endpoint, two goroutines and flow.Splice's buffers (4
// KiB, plus 64 KiB while data moves). Measured with 500 idle flows: about
// 30 KiB of heap and 16 KiB of goroutine stacks per flow (the test's
// upstream stream included), so MaxFlows = 4096 idle flows take about 190
// MiB. gVisor's send and receive buffers start at 1 MiB and are auto-tuned
// up to 4 MiB each, but hold memory only for data queued in them: data from
// the application waiting for the upstream stream's flow control, and data
// from upstream not yet acknowledged by the application. The local hop's
// round trip is microseconds, so both stay small unless one side stalls;
// the worst case is about 8 MiB for a flow whose two ends both stall.
// Closed connections linger in TIME_WAIT for 5 s (not 60 s): duplicates on
// the local hop cannot be older. Shared: the queue toward the device holds
// at most 2048 packets (~3 MiB at MTU 1500), and the device writer owns
// BatchSize buffers of 64 KiB (8 MiB for a Linux TUN, whose Write coalesces
// TCP segments into them).
//
// # Concurrency and shutdown
//
// Read is called by one goroutine at a time (like a TUN's); Write, Stats
// and Close may be called from any goroutine. Close is idempotent: it
// cancels every Connect in progress, aborts every flow (the application gets
// a RST, the upstream stream is reset), stops gVisor, closes the device, and
// makes blocked and later Reads and Writes return os.ErrClosed.
package flowstack
