package usernat

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestEchoProxyLoopback drives the echo proxy directly against the host's
// loopback (through the stack, loopback destinations are refused), in each
// socket mode this process may use.
func TestEchoProxyLoopback(t *testing.T) {
	for _, fam := range []struct {
		name   string
		v6     bool
		dst    netip.Addr
		client netip.Addr
	}{
		{"ipv4", false, netip.MustParseAddr("127.0.0.1"), testClient4},
		{"ipv6", true, netip.IPv6Loopback(), testClient6},
	} {
		for _, mode := range []echoMode{echoPing, echoRaw} {
			t.Run(fam.name+"/"+mode.String(), func(t *testing.T) {
				ping, raw := hostICMP(fam.v6)
				if mode == echoPing && !ping {
					t.Skip("ping sockets not allowed for this process (sysctl net.ipv4.ping_group_range)")
				}
				if mode == echoRaw && !raw {
					requireRoot(t, "raw ICMP socket needs CAP_NET_RAW")
					t.Skip("raw ICMP socket not permitted")
				}
				got := make(chan []byte, 10)
				var sent, replies, drops atomic.Uint64
				p := newEchoProxy(fam.v6, time.Minute, 1500, slog.New(slog.DiscardHandler),
					func(b []byte) bool { got <- b; return true }, &sent, &replies, &drops)
				p.forceMode = mode
				defer p.close()

				data := []byte("usernat echo proxy")
				for seq := uint16(1); seq <= 3; seq++ {
					p.send(fam.client, fam.dst, 0x4242, seq, data)
					var pkt []byte
					select {
					case pkt = <-got:
					case <-time.After(10 * time.Second):
						t.Fatalf("seq %d: no reply (sent %d drops %d)", seq, sent.Load(), drops.Load())
					}
					checkEchoReply(t, pkt, fam.dst, fam.client, 0x4242, seq, data)
				}
				if sent.Load() != 3 || replies.Load() != 3 || drops.Load() != 0 {
					t.Errorf("sent %d replies %d drops %d", sent.Load(), replies.Load(), drops.Load())
				}
				// A second client with the same identifier gets its own
				// mapping and its own replies.
				other := netip.MustParseAddr("10.77.0.3")
				if fam.v6 {
					other = netip.MustParseAddr("fd77::3")
				}
				p.send(other, fam.dst, 0x4242, 9, data)
				select {
				case pkt := <-got:
					checkEchoReply(t, pkt, fam.dst, other, 0x4242, 9, data)
				case <-time.After(10 * time.Second):
					t.Fatal("second client: no reply")
				}
				if n := p.forgetClient(fam.client); n != 1 {
					t.Errorf("forgetClient = %d, want 1", n)
				}
			})
		}
	}
}

// checkEchoReply verifies a reply packet built by the proxy.
func checkEchoReply(t *testing.T, pkt []byte, src, dst netip.Addr, id, seq uint16, data []byte) {
	t.Helper()
	var info pktInfo
	(&addrRules{}).classify(pkt, &info)
	if info.src != src || info.dst != dst || info.end != len(pkt) {
		t.Fatalf("reply %v -> %v (len %d of %d), want %v -> %v", info.src, info.dst, info.end, len(pkt), src, dst)
	}
	hl := 20
	if src.Is6() {
		hl = 40
	} else if fold(sum16(0, pkt[:20])) != 0 {
		t.Error("bad IPv4 header checksum")
	}
	m := pkt[hl:]
	if !icmpChecksumOK(src.Is6(), src, dst, m) {
		t.Error("bad ICMP checksum")
	}
	wantType := byte(icmpv4EchoReply)
	if src.Is6() {
		wantType = icmpv6EchoReply
	}
	if m[0] != wantType || binary.BigEndian.Uint16(m[4:]) != id || binary.BigEndian.Uint16(m[6:]) != seq || !bytes.Equal(m[8:], data) {
		t.Errorf("reply type %d id %#x seq %d data %q", m[0], binary.BigEndian.Uint16(m[4:]), binary.BigEndian.Uint16(m[6:]), m[8:])
	}
}

func TestEchoProxyFallback(t *testing.T) {
	tests := []struct {
		name     string
		pingErr  error
		rawErr   error
		wantMode echoMode
	}{
		{"ping allowed", nil, nil, echoPing},
		{"ping denied", syscall.EACCES, nil, echoRaw},
		{"both denied", syscall.EACCES, syscall.EPERM, echoNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sent, replies, drops atomic.Uint64
			p := newEchoProxy(false, time.Minute, 1500, slog.New(slog.DiscardHandler), func([]byte) bool { return true }, &sent, &replies, &drops)
			p.listen = func(network, address string) (icmpConn, error) {
				var err error
				if network == "udp4" {
					err = tt.pingErr
				} else {
					err = tt.rawErr
				}
				if err != nil {
					return nil, err
				}
				// A socket that works: an ordinary UDP socket stands in.
				return net.ListenPacket("udp4", "127.0.0.1:0")
			}
			p.mu.Lock()
			p.chooseModeLocked()
			mode := p.mode
			p.mu.Unlock()
			p.close()
			if mode != tt.wantMode {
				t.Fatalf("mode %v, want %v", mode, tt.wantMode)
			}
		})
	}
}
