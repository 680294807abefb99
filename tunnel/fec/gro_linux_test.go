//go:build linux

package fec

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// groBatch returns n packets of seg bytes (the last one shorter) as one
// buffer, each starting with a short-header byte and numbered.
func groBatch(n, seg int) []byte {
	buf := make([]byte, 0, n*seg)
	for i := range n {
		size := seg
		if i == n-1 {
			size = seg / 2
		}
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(i*7 + j)
		}
		p[0] = 0x40
		binary.BigEndian.PutUint16(p[1:], uint16(i))
		buf = append(buf, p...)
	}
	return buf
}

// readAll reads packets from c with ms until want bytes came, and returns
// them concatenated and how many ReadBatch calls it took.
func readAll(t *testing.T, c *Conn, ms []ipv4.Message, want int) ([]byte, int, int) {
	t.Helper()
	var got []byte
	calls, pkts := 0, 0
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for len(got) < want {
		n, err := c.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), want, err)
		}
		calls++
		for _, m := range ms[:n] {
			got = append(got, m.Buffers[0][:m.N]...)
			pkts++
			if m.Addr == nil {
				t.Fatal("a packet without its address")
			}
			if bytes.Contains(m.OOB[:m.NN], groMarker()) {
				t.Fatal("the UDP_GRO control message reached the caller")
			}
		}
	}
	return got, calls, pkts
}

// groMarker is the header of a UDP_GRO control message.
func groMarker() []byte {
	b := make([]byte, unix.CmsgLen(0))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_GRO
	h.SetLen(unix.CmsgLen(4))
	return b
}

func testMessages(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1452)}
		ms[i].OOB = make([]byte, 128)
	}
	return ms
}

// TestConnGRO sends GSO batches larger than the caller's messages over
// loopback: with GRO on, the Conn reads them coalesced and hands out every
// packet in order, byte exact, both plain and framed.
func TestConnGRO(t *testing.T) {
	for _, framed := range []bool{false, true} {
		name := "plain"
		if framed {
			name = "framed"
		}
		t.Run(name, func(t *testing.T) {
			a, b := udp(t), udp(t)
			b.SetReadBuffer(4 << 20)
			aaddr, baddr := a.LocalAddr().(*net.UDPAddr), b.LocalAddr().(*net.UDPAddr)
			cb := NewConn(b, Config{})
			if !cb.gro {
				t.Fatal("UDP_GRO could not be turned on")
			}
			write := a.WriteMsgUDP
			if framed {
				ca := NewConn(a, Config{})
				ca.Enable(baddr, Policy{K: 8, M: 2})
				cb.Enable(aaddr, Policy{K: 8, M: 2})
				write = ca.WriteMsgUDP
			}
			ms := testMessages(8)
			const seg = 1200
			for _, n := range []int{3, 8, 20, 40} {
				buf := groBatch(n, seg)
				before := cb.coalesced.Load()
				if _, _, err := write(buf, appendSegment(nil, seg), baddr); err != nil {
					t.Fatal(err)
				}
				got, calls, pkts := readAll(t, cb, ms, len(buf))
				if !bytes.Equal(got, buf) {
					t.Fatalf("%d packets: the bytes read differ from those sent", n)
				}
				if pkts != n {
					t.Fatalf("%d packets sent, %d read", n, pkts)
				}
				if cb.coalesced.Load() == before {
					t.Fatalf("%d packets: no coalesced datagram read", n)
				}
				if n > len(ms) && calls < (n+len(ms)-1)/len(ms) {
					t.Fatalf("%d packets in %d calls of %d messages", n, calls, len(ms))
				}
			}
			s := cb.Stats()
			if s.Malformed != 0 || s.NoPeer != 0 || s.Lost != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

// groOOB builds control messages: a TOS byte, then a UDP_GRO message
// with body.
func groOOB(body []byte) []byte {
	tos := make([]byte, unix.CmsgSpace(1))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&tos[0]))
	h.Level = unix.IPPROTO_IP
	h.Type = unix.IP_TOS
	h.SetLen(unix.CmsgLen(1))
	tos[unix.CmsgLen(0)] = 2 // ECT(0)
	g := make([]byte, unix.CmsgSpace(len(body)))
	h = (*unix.Cmsghdr)(unsafe.Pointer(&g[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_GRO
	h.SetLen(unix.CmsgLen(len(body)))
	copy(g[unix.CmsgLen(0):], body)
	return append(tos, g...)
}

// injected returns a GRO Conn whose next ReadBatch handles a datagram of
// data with control messages oob, as if the socket had read it.
func injected(t testing.TB, data, oob []byte) *Conn {
	c := NewConn(udp(t), Config{})
	c.gro = true
	m := &c.rmsgs[0]
	m.N = copy(m.Buffers[0], data)
	m.NN = copy(m.OOB, oob)
	m.Addr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	c.rn, c.ri, c.roff, c.rnow = 1, 0, 0, time.Now()
	return c
}

func int32Body(v int32) []byte {
	return binary.NativeEndian.AppendUint32(nil, uint32(v))
}

// TestConnGROMalformed: a segment size of 0, negative, the datagram's
// length or more, or a truncated UDP_GRO message makes the datagram one
// packet; a valid one splits it, and the TOS message reaches every packet.
func TestConnGROMalformed(t *testing.T) {
	data := groBatch(5, 300) // 4×300 + 150
	for _, tc := range []struct {
		name string
		body []byte
		pkts int
	}{
		{"zero", int32Body(0), 1},
		{"negative", int32Body(-300), 1},
		{"length", int32Body(int32(len(data))), 1},
		{"beyond", int32Body(1 << 20), 1},
		{"short body", []byte{1}, 1},
		{"valid", int32Body(300), 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := injected(t, data, groOOB(tc.body))
			ms := make([]ipv4.Message, 2)
			for i := range ms {
				ms[i].Buffers = [][]byte{make([]byte, 2048)}
				ms[i].OOB = make([]byte, 128)
			}
			var got []byte
			pkts := 0
			for len(got) < len(data) {
				n, err := c.ReadBatch(ms, 0)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range ms[:n] {
					got = append(got, m.Buffers[0][:m.N]...)
					pkts++
					oob := m.OOB[:m.NN]
					if m.NN != unix.CmsgSpace(1) || oob[unix.CmsgLen(0)] != 2 {
						t.Fatalf("control messages %x: want the TOS one only", oob)
					}
				}
			}
			if !bytes.Equal(got, data) || pkts != tc.pkts {
				t.Fatalf("%d packets, equal %v; want %d", pkts, bytes.Equal(got, data), tc.pkts)
			}
		})
	}
}

// FuzzConnGRO: no segment size or control message bytes crash the read,
// and the packets handed out are the datagram, in order.
func FuzzConnGRO(f *testing.F) {
	f.Add(600, int32(100), []byte{})
	f.Add(600, int32(0), []byte{1, 2, 3})
	f.Add(50, int32(-1), []byte{})
	f.Add(1, int32(7), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, n int, seg int32, junk []byte) {
		n = min(max(n, 0), 2048)
		data := bytes.Repeat([]byte{0x40}, n)
		oob := append(groOOB(int32Body(seg)), junk...)
		if len(oob) > 256 {
			oob = oob[:256]
		}
		c := injected(t, data, oob)
		ms := testMessages(3)
		var got []byte
		for c.ri < c.rn || len(c.ready) > 0 {
			k, err := c.ReadBatch(ms, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms[:k] {
				got = append(got, m.Buffers[0][:m.N]...)
			}
		}
		if !bytes.Equal(got, data[:len(got)]) || len(got) > len(data) {
			t.Fatalf("%d bytes read of %d", len(got), len(data))
		}
		if seg > 0 && int(seg) <= 1452 && len(got) != len(data) {
			t.Fatalf("%d bytes read of %d with segments of %d", len(got), len(data), seg)
		}
	})
}
