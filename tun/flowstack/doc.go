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
// the device goes to gVisor instead of to the caller, except those of
// inbound connections (below); the caller gets the other packets. Read runs gVisor's receive path on the caller's goroutine,
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
// # Inbound TCP
//
// Packets that arrive from the tunnel (Write) go to the device unchanged.
// A TCP connection opened from the tunnel toward this host (the server or
// another client connecting to the host's tunnel address) is carried as
// packets, as in packet mode, by connection tracking: a SYN without ACK
// that Write passes records the connection (addresses and ports, IPv4 or
// IPv6), and Read passes the host's TCP packets of a recorded connection
// through to the caller instead of diverting them into gVisor. An entry
// ends:
//
//   - on a RST in either direction, at once;
//   - 60 s after the last packet once both sides have sent a FIN (the
//     host's TIME_WAIT; conntrack waits 120 s);
//   - after 30 s without a packet while only the peer has sent (its SYN;
//     conntrack's SYN_RECV is 60 s);
//   - otherwise, established or half-closed, after 5 days without a
//     packet (conntrack's default: TCP keepalive's first probe comes
//     after 2 h idle, so a shorter timeout would reset idle connections
//     that keep alive). A host packet of an ended connection goes to
//     gVisor, which answers it with a RST.
//
// A SYN from the peer for a connection in its closing linger starts it
// anew. Expired entries are removed when a packet finds them and by a
// sweep when a SYN adds an entry, at most every 10 s (every 1 s while the
// table is full). At most [Config.MaxInbound] connections are tracked
// (65536 by default, about 160 bytes each); while the table is full, Write
// drops new inbound SYNs (counted in Stats.InboundDropped) and the peer
// retransmits them. Write also drops an inbound SYN whose connection is,
// seen from the host, one of the flows (a gVisor endpoint or a SYN
// waiting for Connect), which would otherwise lose its packets. The
// tracking costs no lock while no connection is tracked, and none for a
// packet whose host port no tracked connection has (every flow's packet:
// flows come from ephemeral ports, inbound connections go to listening
// ports); see BenchmarkConnTable and BenchmarkPacketPath. A host TCP
// packet that is a non-initial IP fragment carries no ports and still goes
// to gVisor: Linux sends TCP with DF set and does not fragment IPv6 TCP,
// so this does not happen with a kernel's TCP. A RST or FIN is not checked
// against the sequence window, as conntrack does: a RST forged with the
// peer's addresses would end the entry even if the host's kernel ignored
// it. The server drops packets whose source address is not the sending
// client's, so only the peer itself (or the server) could send one.
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
// at most 2048 packets (~3 MiB at MTU 1500; while it is full, gVisor waits
// for room rather than dropping, up to 1 s per write of a batch of
// segments; a write whose wait runs out drops the rest of its batch, and
// from then on packets that find the queue full are dropped at once until
// the device writer takes one, so a stuck device costs at most one such
// wait per goroutine, and Close none), and the device writer owns
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
