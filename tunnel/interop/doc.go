// Package interop holds Roam's interoperability tests against
// github.com/quic-go/connect-ip-go, an independent RFC 9484 (CONNECT-IP)
// implementation. It has no non-test code: everything is in the _test.go
// files.
//
// The package is its own Go module so that connect-ip-go's quic-go version
// never bends the main module's pins. For the same reason it imports none of
// Roam's packages: the tests build the roam binary from the main module
// (../..) and drive it as a user would.
//
//   - Direction A (server_test.go): connect-ip-go's client dials a running
//     `roam server --nat userspace` and exchanges ICMP echo and UDP packets
//     with the server host (the gateway addresses), IPv4 and IPv6, checked
//     byte for byte. No privileges needed.
//   - Direction B (client_test.go): `roam client`, in a network namespace the
//     test creates, connects to a minimal proxy built from connect-ip-go's
//     server API (proxy_test.go) in a second namespace; packets flow both
//     ways through the client's TUN device. Needs root; fails instead of
//     skipping when CI=true.
//
// See README.md for the connect-ip-go version and how to run the tests.
package interop
