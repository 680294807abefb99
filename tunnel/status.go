package tunnel

import (
	"net/netip"
	"time"
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
	// TxPackets/TxBytes are packets sent to the client, RxPackets/RxBytes
	// packets received from it (IP packet bytes; datagrams only).
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
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
}

// PathStatus is one QUIC path of the client's connection.
type PathStatus struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
	Active bool   `json:"active"`
}
