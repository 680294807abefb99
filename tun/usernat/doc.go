// Package usernat is Roam's userspace NAT: a packet device, shaped like a TUN
// device, behind which a userspace TCP/IP stack (gVisor's tcpip, as
// wireguard-go's tun/netstack uses it) terminates the clients' TCP, UDP and
// ICMP echo and re-originates them from ordinary host sockets. The server uses
// it when it cannot create a kernel TUN device and nftables NAT (no root, or
// not Linux): it writes client packets into [Stack.Write] and reads the reply
// packets from [Stack.Read], exactly as it would with a TUN device.
//
// # What happens to a client packet
//
//   - TCP: each SYN is handed to a forwarder; the real destination is dialed
//     first (with [Config.DialTimeout]); only if that succeeds is the client's
//     handshake completed, then bytes are copied both ways, a FIN in one
//     direction becomes a half-close (CloseWrite) in the other, and a reset
//     on one side becomes a reset on the other. If the dial fails for any
//     reason (refused, timeout, unreachable), the client gets a RST; no ICMP
//     unreachable is generated.
//   - UDP: each (client address:port, destination address:port) pair is a
//     flow with its own connected host UDP socket; datagrams are copied both
//     ways; a flow idle for [Config.UDPIdleTimeout] is closed.
//   - ICMP echo requests to any address but the gateways are taken out before
//     the stack sees them (in promiscuous mode gVisor would answer them itself,
//     a fake reply) and re-sent from a host ICMP socket (unprivileged ping
//     socket, else raw socket); the replies are turned back into packets from
//     the original destination. Echo requests to the gateways are answered by
//     the stack.
//   - Traffic to [Config.Gateway4] / [Config.Gateway6] is for the server host
//     itself: TCP and UDP to Gateway4:port are dialed to 127.0.0.1:port,
//     Gateway6:port to [::1]:port, except port 53 when [Config.DNS] is set:
//     DNS over UDP and TCP to either gateway goes to that resolver (the
//     server pushes the gateways as the clients' DNS servers).
//   - Dropped and counted ([Stats]), never answered: packets that do not parse,
//     sources outside [Config.Prefixes], destinations that are loopback,
//     multicast, broadcast, unspecified, link-local (this keeps clients away
//     from 169.254.169.254 cloud metadata services) or other pool addresses
//     (client-to-client traffic is the tunnel's job), protocols other than
//     TCP, UDP and ICMP, fragmented ICMP to remote addresses, and ICMP types
//     other than echo request and errors.
//
// Outbound (toward clients), ICMP errors from the host (port unreachable, time
// exceeded, ...) are not translated; a TCP dial failure is a RST and a UDP
// datagram to a closed port just gets no answer.
//
// # Memory
//
// Per TCP flow: a gVisor endpoint (a few KiB when idle), two goroutines, one
// host socket and two 2 KiB copy buffers; while data moves, a 64 KiB buffer
// per direction from a shared pool. gVisor's send and receive buffers start at
// 1 MiB and are auto-tuned up to 8 MiB each (moderate receive buffer, send
// buffer sized from the congestion window); they hold memory only for data
// queued in them, so the worst case is about 16 MiB for a flow whose two ends
// both stall. Per UDP flow: a gVisor endpoint, two goroutines, one host socket;
// on Unix no buffer is held while waiting (64 KiB pooled buffers only while a
// datagram is copied). Per ICMP echo mapping in ping-socket mode: a host
// socket, a goroutine and an MTU-sized buffer. [Config.MaxFlows] bounds TCP+UDP
// flows; echo mappings are bounded at 1024 per address family. The queue
// toward Read holds at most 1024 packets.
//
// # Concurrency
//
// Write, Read, Stats and CloseClientFlows may be called from any goroutines.
// Close is idempotent and makes blocked and later Reads (and later Writes)
// return os.ErrClosed.
package usernat
