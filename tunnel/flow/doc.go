// Package flow is the part of Roam's per-flow streams that both ends share:
// one TCP connection carried as one reliable byte stream (an HTTP/3 CONNECT
// request stream from the native client, a WebTransport stream from the
// browser client), independent of how that stream arrived.
//
//	app ──TCP── client ─────── Stream (CONNECT, :authority = dst) ─────── server ──TCP── dst
//	            (flowstack terminates TCP)        Splice          Dialer.DialFlow + Splice
//
// What it provides:
//
//   - [Stream]: one flow's byte stream to the peer, with half-close
//     ([Stream.CloseWrite] = FIN) and reset ([Stream.Abort]); a transport
//     adapter reports the peer's reset as an error wrapping [ErrReset].
//   - [Splice]: copies bytes both ways between a Stream and a net.Conn,
//     turning a FIN on one side into a half-close on the other and a reset
//     (or any error) on either side into a reset of both.
//   - [Error] and [ErrorKind]: why a flow could not be opened, mapped to and
//     from the RFC 9209 Proxy-Status error types ([Error.ProxyStatus],
//     [ParseProxyStatus]) so that the client can give the local application
//     the right outcome (RST for refused, ICMP unreachable, ...).
//   - [Dialer]: the server's dial of a flow's destination with a policy
//     check and a timeout, classifying failures ([Classify]); [DenySpecial]
//     is the address policy every server applies.
//   - [Limiter]: bounds a session's concurrent flows; a client that opens
//     flows faster than they finish waits (is slowed) instead of costing the
//     server, and is refused beyond a hard cap of waiters.
//
// # Memory per flow
//
// Splice owns two copy buffers per flow: a 2 KiB one per direction, held
// for the flow's life, and while data is moving a 32 KiB one per direction
// from a shared pool, so N busy flows cost at most N × 64 KiB of copy
// buffers (4096 flows: 256 MiB) and an idle flow 4 KiB. Everything else a
// flow holds is in the Stream and the net.Conn (QUIC stream flow-control
// windows, socket or gVisor buffers) and is bounded there.
//
// The package uses the standard library only and builds for GOOS=js; only
// Dialer.DialFlow's default dialer needs a real network.
package flow
