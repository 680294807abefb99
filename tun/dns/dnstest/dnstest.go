// Package dnstest is a tiny authoritative DNS server for tests: it answers
// A and AAAA queries for a fixed set of names over UDP and TCP (RFC 1035
// §4.2.2 two-byte length framing), NXDOMAIN for other names, and counts
// the queries it answered. It never recurses and never sends to anyone but
// the client that asked.
package dnstest

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Server answers queries on one UDP socket and one TCP listener.
type Server struct {
	records map[string][]netip.Addr // lower-case FQDN ("host.example.") -> addresses
	udp     net.PacketConn
	tcp     net.Listener
	wg      sync.WaitGroup
	once    sync.Once

	// Queries counts answered queries (UDP and TCP).
	Queries atomic.Uint64
}

// Serve answers on pc and ln (either may be nil) until Close. records maps
// names ("host.example", with or without the final dot, any case) to the
// addresses returned for A (IPv4 ones) and AAAA (IPv6 ones). Serve owns pc
// and ln and closes them in Close.
func Serve(pc net.PacketConn, ln net.Listener, records map[string][]netip.Addr) *Server {
	s := &Server{records: map[string][]netip.Addr{}, udp: pc, tcp: ln}
	for n, as := range records {
		s.records[fqdn(n)] = as
	}
	if pc != nil {
		s.wg.Go(s.serveUDP)
	}
	if ln != nil {
		s.wg.Go(s.serveTCP)
	}
	return s
}

// Listen opens UDP and TCP on addr ("127.0.0.1:0" picks a free port for
// both; the TCP listener then takes the UDP socket's port) and serves.
func Listen(addr string, records map[string][]netip.Addr) (*Server, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, err
	}
	return Serve(pc, ln, records), nil
}

// AddrPort returns the UDP socket's address.
func (s *Server) AddrPort() netip.AddrPort {
	return s.udp.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close stops serving and waits for the goroutines. Idempotent.
func (s *Server) Close() {
	s.once.Do(func() {
		if s.udp != nil {
			s.udp.Close()
		}
		if s.tcp != nil {
			s.tcp.Close()
		}
		s.wg.Wait()
	})
}

func fqdn(n string) string {
	n = strings.ToLower(n)
	if !strings.HasSuffix(n, ".") {
		n += "."
	}
	return n
}

func (s *Server) serveUDP() {
	buf := make([]byte, 65535)
	for {
		n, from, err := s.udp.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if resp := s.answer(buf[:n]); resp != nil {
			s.udp.WriteTo(resp, from)
		}
	}
}

func (s *Server) serveTCP() {
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		s.wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			for {
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				resp := s.answer(q)
				if resp == nil {
					return
				}
				if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
					return
				}
			}
		})
	}
}

// answer builds the response to query q, or nil if q does not parse.
func (s *Server) answer(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return nil
	}
	question := qs[0]
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	as, ok := s.records[strings.ToLower(question.Name.String())]
	if !ok {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	b.StartQuestions()
	b.Question(question)
	b.StartAnswers()
	rr := dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: 60}
	for _, a := range as {
		switch {
		case question.Type == dnsmessage.TypeA && a.Is4():
			b.AResource(rr, dnsmessage.AResource{A: a.As4()})
		case question.Type == dnsmessage.TypeAAAA && a.Is6():
			b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	s.Queries.Add(1)
	return out
}

// LookupA sends one A query for name (a FQDN such as "host.example.") on
// c, with TCP framing if tcp, and returns the first address of the answer.
// A failed lookup (such as NXDOMAIN) is a *net.DNSError.
func LookupA(c net.Conn, tcp bool, name string) (netip.Addr, error) {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x5253, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		return netip.Addr{}, err
	}
	if tcp {
		q = append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)
	}
	if _, err := c.Write(q); err != nil {
		return netip.Addr{}, err
	}
	resp := make([]byte, 2048)
	var n int
	if tcp {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return netip.Addr{}, err
		}
		resp = resp[:binary.BigEndian.Uint16(l[:])]
		n, err = io.ReadFull(c, resp)
	} else {
		n, err = c.Read(resp)
	}
	if err != nil {
		return netip.Addr{}, err
	}
	var p dnsmessage.Parser
	h, err := p.Start(resp[:n])
	if err != nil {
		return netip.Addr{}, err
	}
	if h.ID != 0x5253 || h.RCode != dnsmessage.RCodeSuccess {
		return netip.Addr{}, &net.DNSError{Err: h.RCode.String(), Name: name}
	}
	if err := p.SkipAllQuestions(); err != nil {
		return netip.Addr{}, err
	}
	if _, err := p.AnswerHeader(); err != nil {
		return netip.Addr{}, err
	}
	a, err := p.AResource()
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.AddrFrom4(a.A), nil
}
