// Package tunnel implements Roam's sessions: the RFC 9484 CONNECT-IP
// request and response over HTTP/3, the capsules that assign addresses and
// advertise routes, the server's session table and packet dispatch, the
// client's dial and data path, and per-flow TCP streams (an HTTP/3 CONNECT
// per flow, dialed by the server under its destination policy).
//
// The server's UDP port also takes the browser client's WebTransport
// sessions (Extended CONNECT, :protocol webtransport, at webproto.Path,
// from an allowed Origin). Inside a session the control stream carries
// the token (HELLO → WELCOME or SESSION_ERROR) and every further
// bidirectional stream is one TCP flow, served by the same flow handler
// as a native CONNECT (see package webproto and websession.go). The server
// also serves the browser page over HTTP/3 and, on TCP at the same port
// number, over HTTPS (and plain HTTP to loopback clients; webpage.go), and
// presents browsers a short-lived certificate they can pin (webcert.go).
//
// Wire format (RFC 9484 over RFC 9297 and RFC 9114):
//
//	client                                             server
//	  HEADERS  :method CONNECT, :protocol connect-ip,
//	           :path /.well-known/masque/ip/*/*/,
//	           authorization: Bearer <token>,
//	           capsule-protocol: ?1                ──►
//	                                               ◄──  HEADERS :status 200, capsule-protocol: ?1
//	                                               ◄──  DATA [ADDRESS_ASSIGN][ROUTE_ADVERTISEMENT]
//	  DATA [ADDRESS_REQUEST 0.0.0.0/32, ::/128]   ──►
//	  QUIC DATAGRAM [quarter stream ID][context 0][IP packet]  ◄──►
//
// quic-go's http3 package copies and allocates for every HTTP datagram it
// sends, so Roam sends its datagrams straight on the QUIC connection,
// writing the quarter-stream-ID and context-ID prefix in place in front of
// each packet (see package datagram). On the server, received datagrams go
// through http3, which sorts them into per-stream queues whenever the peer
// enabled HTTP datagrams (WebTransport needs that). The client reads the
// connection's datagrams itself and checks the quarter stream ID: http3's
// sorting drops a fifth of them under load, so the client keeps the
// server's SETTINGS from http3 and sends its CONNECT-IP request on a
// request stream of its own (h3client.go). The bytes on the wire are
// exactly RFC 9297's.
package tunnel
