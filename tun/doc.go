// Package tun is Roam's host side: kernel TUN devices (wireguard-go's tun),
// link addresses, routes and MTU via netlink, nftables NAT for the server, and
// wg-quick style policy routing for a full-tunnel client.
//
// Everything except [Device] and the configuration types needs Linux and
// CAP_NET_ADMIN; on other systems the functions return an error wrapping
// [ErrUnsupported] (use the userspace NAT in tun/usernat there).
//
// # Network namespaces
//
// Every function acts on the network namespace of the calling OS thread, which
// for a normal process is the process's namespace. Objects that undo their
// work later ([Masquerade], [Routing], the restore func of [EnableForwarding],
// the device from [Create]) remember that namespace through file descriptors
// opened at creation, so their Close works from any goroutine. Device.MTU is
// the exception: it asks the namespace of the calling thread.
//
// # Memory
//
// A Linux TUN device reads whole GSO bursts (up to 64 KiB, into one internal
// buffer) and splits them into up to BatchSize() = 128 packets, so a reader
// needs BatchSize() buffers of offset+MTU bytes each: 128 × (16 + 1400) bytes
// ≈ 180 KiB per direction at MTU 1400, ≈ 8 MiB at the largest MTU (65535).
package tun
