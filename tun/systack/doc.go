// Package systack is flow mode's "system stack": the client's TCP
// terminator built on the host kernel's own TCP instead of gVisor (package
// flowstack, which it can replace one for one). Like flowstack's Stack,
// [Stack] is itself a packet device (it has the method set of
// datagram.Device) wrapping the TUN: the packet pump reads from and writes
// to it as it would to the TUN.
//
// It runs in one of two modes ([Config.Mode]; [ModeAuto], the default,
// picks redirect mode if it can start and logs which one runs):
//
//   - redirect mode: an nftables rule sends the applications' connections
//     to a loopback listener before they reach the TUN; conntrack does the
//     address translation, and no packet of them crosses the TUN;
//   - rewrite mode, the fallback without nftables NAT: Read rewrites the
//     applications' packets from the TUN toward a listener bound to the
//     TUN and writes them back.
//
// Either way the listener's accept loop calls [Config.Connect] for each
// accepted connection and splices it with the returned stream (see
// "Connect and its outcomes").
//
// # Redirect mode
//
//	app A:sp ──► OUTPUT (oifname TUN: redirect) ──► lo ──► listener 127.0.0.1:L / [::1]:L
//	   (to D:dp)                                            │ accept: remote A:sp, SO_ORIGINAL_DST D:dp
//	                                                        └► Config.Connect ─► flow.Splice
//
// New opens listeners on one free port L of 127.0.0.1 and ::1 (if the
// host has IPv6 on loopback), starts accepting, then creates the nftables
// table "inet roamsys_<TUN>" (tun.RedirectTableName; one atomic
// transaction that replaces a table of that name a crashed run left) with
// a nat chain on the OUTPUT hook:
//
//	oifname <TUN> tcp flags syn / syn,ack fib daddr type != local ct status & confirmed == 0 meta nfproto ipv4 redirect to :L
//	(the same for ipv6)
//
// An application's SYN that the host's routing sends into the TUN is
// redirected in the OUTPUT hook, where the kernel rewrites the destination
// to the loopback address of the packet's family (127.0.0.1, ::1; the
// source, the TUN's address A, stays) and routes it again, over loopback,
// to the listener; conntrack translates every later packet of the
// connection both ways, so the application's socket sees its peer D:dp.
// Loopback delivery needs no route_localnet and passes no reverse-path
// filter (the packet never arrives on another interface), and the
// client's policy routing leaves the local table, which holds 127.0.0.1,
// ::1 and A, first. The accept loop takes the application's address from
// the accepted connection's remote address and D:dp from the conntrack
// entry (getsockopt SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST). The listeners
// are not reachable from other hosts (a loopback destination arriving on
// another interface is dropped as a martian); a local process that
// connects to one itself has no original destination and is reset
// (Stats.AcceptUnknown).
//
// The rule only sees the first packet of a connection (a nat chain is
// consulted until the connection's NAT is set up). What it leaves alone
// goes into the TUN and Read passes it to the caller, to go through the
// tunnel as packets, as inbound connections do (see "Inbound TCP"):
//
//   - a connection whose first SYN left before the table existed (the
//     TUN and its routes are up before New: a short window at start):
//     with conntrack active (the client's reply-mark table of
//     tun.InstallRouting makes it so), its conntrack entry has no NAT and
//     is confirmed, so its retransmitted SYNs are not redirected either
//     and the connection is carried as packets for its lifetime. (Without
//     conntrack active before New, the first SYN has no entry, and a
//     retransmit after a second without answer would be redirected.)
//   - a connection conntrack picks up in the middle (it forgot it, or the
//     connection is older than the host's conntrack), which has no SYN;
//   - connections to the host's own addresses (the route of the host's
//     own IPv6 addresses names the device that holds them).
//
// Close closes the listeners, resets the flows and only then deletes the
// table: without a nat chain the kernel stops translating the redirected
// connections. A table a crashed run left would redirect the SYNs to a
// port no one listens on, or that any local user could then take and
// receive the tunnelled connections. So the table is owned by the
// Stack's nftables socket (NFT_TABLE_F_OWNER, Linux 5.12+): the kernel
// deletes it when the process dies, and no other process can change it.
// On older kernels (logged at New) tun.InstallRouting, which every client
// start runs on the TUN before its stack (whichever it is), deletes a
// stale one, and so does New in rewrite mode. Redirect
// mode needs nf_tables with NAT in the inet family (Linux 5.2) and
// CAP_NET_ADMIN. Config.MaxFlows bounds its accepted connections (one
// over the limit is reset: Stats.DropTableFull); none of Stats' other packet
// and NAT counters move. Inbound connections from the tunnel are not touched:
// the host's answers to them are not a connection's first packet.
//
// It costs less than rewrite mode: BenchmarkKernelTUN (whole local path,
// the application's and the upstream's sockets included; a loaded 2-core
// machine) 0.16-0.17 CPU-seconds per Gbit/s in redirect mode against
// 0.21-0.25 in rewrite mode, whose 780 rewritten packets per MiB are gone.
//
// # Rewrite mode
//
//	app A:sp ──► TUN ──Read: rewrite──► TUN ──► listener A:L ──accept──► Config.Connect ─► flow.Stream
//	   (to D:dp)      D:N → A:L                    (kernel TCP)     flow.Splice ◄───────────┘
//	app ◄── TUN ◄─rewrite: D:dp → A:sp── TUN ◄── listener's answer A:L → D:N
//
// The Stack listens on a free port L of every address, bound to the TUN
// (SO_BINDTODEVICE). A TCP packet Read takes from the device, sent by an
// application from A:sp to D:dp, is rewritten to come from D:N and go to
// A:L, where N is the connection's NAT port, and written back into the
// TUN: the kernel delivers it to the listener. The listener's answers
// (A:L → D:N) leave through the TUN, because its socket is bound to it;
// Read rewrites them to D:dp → A:sp and writes them back too, so the
// application's socket sees its peer D:dp. The rewrite swaps the two
// addresses and replaces the two ports, so the IPv4 header checksum and
// the TCP pseudo-header do not change and the TCP checksum is updated
// from the ports alone (RFC 1624): a few instructions per packet, no
// allocation (TestRewritePathZeroAllocs), done on each packet the TUN
// splits from a GSO burst; the write-back goes through the TUN's Write,
// which coalesces consecutive segments of a connection again (GRO), so
// both kernel sockets keep their offloads. Read uses its own buffers of
// 64 KiB (BatchSize of them: 8 MiB for a Linux TUN) so that Write has room
// to coalesce into; the packets it returns (UDP, ICMP, inbound TCP) are
// copied once into the caller's buffers. BenchmarkProcess: about 50 ns
// per packet for parse, lookup and rewrite; BenchmarkKernelTUN compares
// the whole path with flowstack's. No address is invented: D is where the application's
// packets were routed into the TUN, so the routes and policy rules that
// tun.InstallRouting installs (and reverse-path filtering) accept it as a
// source on the TUN, and the listener's socket, bound to the TUN, sends
// there whatever the routing tables say about D; it needs no route, rule
// or mark of its own, and a socket mark would be wrong (it would select
// the main table). The listener takes IPv4 and IPv6 (dual-stack); on a
// host without IPv6 it takes IPv4 only and IPv6 TCP passes to the caller
// as packets.
//
// # Connect and its outcomes
//
// The local handshake completes in the kernel before the Stack learns of
// the connection: connect(2) succeeds at once. The listener's accept loop
// then finds the addresses (redirect mode: the connection's remote address
// and its original destination; rewrite mode: the NAT entry of its remote
// address D:N) and calls [Config.Connect](ctx, A:sp, D:dp); bytes the application
// sends meanwhile wait in the listener socket's receive buffer. On success
// flow.Splice copies both ways, with FIN and reset propagated in both
// directions. On any error (Refused, Prohibited, LimitReached,
// Unreachable, Timeout, Other, a Connect that outlives ConnectTimeout) the
// accepted connection is closed with SO_LINGER 0: the application gets a
// RST, so its next read or write fails with ECONNRESET (or connect(2)
// itself does, if the RST comes before it returns). This differs from
// flowstack, which connects before it answers the SYN and can therefore
// refuse the connection (ECONNREFUSED) or answer with an ICMP unreachable
// (EHOSTUNREACH): here the handshake is already done, and an ICMP error
// would not reach the established socket, so Unreachable also gives a
// reset. An application that retries on ECONNREFUSED but not on
// ECONNRESET sees the difference.
//
// At most [Config.MaxPending] accepted connections wait for Connect; then
// the accept loop (one per listener, each holding at most one more
// accepted connection) waits, the listener's backlog fills and the kernel
// drops further SYNs, which the applications retransmit.
//
// # NAT table (rewrite mode)
//
// A SYN without ACK from an application opens an entry (its tuple A:sp →
// D:dp and a NAT port N, handed out in turn from 1024..65535 so that a
// port is reused as late as possible). Packets of the tuple and the
// listener's packets to N refresh it. An entry ends after a time without
// packets that depends on its state, as conntrack's do:
//
//   - 30 s while the listener has not answered the SYN (conntrack's
//     SYN_SENT: 120 s);
//   - 5 days once it has, until both sides have sent a FIN (conntrack's
//     ESTABLISHED; TCP keepalive's first probe comes after 2 h idle). Both
//     ends are this host's sockets, which send a FIN or RST when they
//     close, so entries do not stay behind this way;
//   - 60 s after both FINs (the sockets' TIME_WAIT; conntrack: 120 s);
//   - 10 s after a RST (conntrack's CLOSE).
//
// A SYN for the tuple of an ended entry (both FINs or a RST) opens a new
// entry with a new port. Expired entries are removed when a packet finds
// them and by a sweep when a SYN adds an entry, at most every 10 s (every
// 1 s while the table is full). At most [Config.MaxFlows] entries exist
// (16384 by default, at most 32768 so that free ports stay easy to find;
// about 150 bytes each, plus a 512 KiB port index); while the table is
// full, new SYNs are dropped and counted (Stats.DropTableFull) and the
// applications retransmit them. A listener packet whose entry is gone is
// dropped and counted (Stats.DropNoEntry). A TCP IP fragment is dropped
// (Linux sends TCP with DF and does not fragment IPv6 TCP).
//
// # Inbound TCP
//
// Packets from the tunnel (Write) go to the device unchanged. In redirect
// mode Read passes every packet it reads to the caller. In rewrite mode: A TCP
// connection opened toward this host from the tunnel is carried as
// packets, as in packet mode, without a table of its own: the host's
// packets of it (a SYN-ACK first) are not SYNs without ACK and have no NAT
// entry, so Read passes them to the caller (Stats.PacketsPassed). Every
// flow starts with a SYN from the host, which an inbound connection never
// sends. Unlike flowstack, which answers a stray TCP packet of no known
// connection with a RST from gVisor, the system stack passes it to the
// tunnel as a packet. A connection from the tunnel to the listener's port
// itself has no NAT entry: it is reset (Stats.AcceptUnknown).
//
// # Requirements and limits
//
// Linux only, with CAP_NET_ADMIN (the TUN, nftables) and, on older
// kernels, CAP_NET_RAW (rewrite mode's SO_BINDTODEVICE): the client has
// both as root. New opens the listeners and the nftables table in the
// calling thread's network namespace, which must be the TUN's. Redirect
// mode needs loopback up and accepted from by the host firewall (nearly
// every firewall accepts it). In rewrite mode, a host firewall that drops
// TCP arriving on the TUN toward the host's own
// address (an INPUT policy of drop without an accept for the TUN) blocks
// the listener: the applications' SYNs then go unanswered, which the Stack
// counts (Stats.SYNUnanswered) and logs once as a warning, since New
// cannot see it coming. Host conntrack sees the rewritten connections (A:L ↔ D:N)
// as ordinary local ones. If New fails (no interface; in rewrite mode no
// SO_BINDTODEVICE or no listener; with ModeRedirect no nftables table),
// it leaves Config.Dev open and the caller can fall back to flowstack
// (roam client --stack system does, with a warning).
//
// # Concurrency and shutdown
//
// Read is called by one goroutine at a time (like a TUN's); Write, Stats
// and Close may be called from any goroutine. Close is idempotent: it
// closes the listeners, cancels every Connect in progress and aborts every
// flow (the upstream stream is reset, the accepted connection closed with
// a RST); in redirect mode it deletes the table; in rewrite mode it waits
// until a Read in progress has written the RST of each flow it aborted
// toward that flow's application (it waits on each flow, not on a count;
// at most a second, closeDrain); then it closes the device and
// makes blocked and later Reads and Writes return os.ErrClosed. In
// rewrite mode, if no Read runs then (the pump stopped first), the
// applications' connections are not reset and time out once the TUN is
// gone; in redirect mode the resets go over loopback.
package systack
