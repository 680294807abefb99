package interop

// A minimal CONNECT-IP proxy built from connect-ip-go's server API
// (connectip.ParseProxyRequest, connectip.Proxy), for Direction B. It is
// its own "network": it answers ICMP echo requests and UDP datagrams sent
// to any address of its routes by building the reply packets itself.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	connectip "github.com/quic-go/connect-ip-go"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/yosida95/uritemplate/v3"
)

// proxyConfig is what a testProxy assigns and advertises.
type proxyConfig struct {
	token string
	// assign holds one prefix per address family, assigned to every
	// client.
	assign []netip.Prefix
	// onRequest: assign only in answer to an ADDRESS_REQUEST capsule
	// (RFC 9484 §4.7.2), never unsolicited.
	onRequest bool
	routes    []connectip.IPRoute
}

// seenRequest is a CONNECT-IP request as the proxy received it.
type seenRequest struct {
	Method, Protocol, Host, Path string
	Header                       http.Header
	Status                       int // what the proxy answered
}

// testProxy is a running proxy; see startProxy.
type testProxy struct {
	cfg      proxyConfig
	addr     netip.AddrPort
	pin      string
	template *uritemplate.Template

	requests chan seenRequest                 // every request, in order
	addrReqs chan []netip.Prefix              // every ADDRESS_REQUEST received
	seen     chan ipPacket                    // every packet received from a client (copies)
	ended    chan error                       // one entry per finished session
	logf     func(format string, args ...any) // the test's log
}

// startProxy starts a proxy listening on UDP listen:0 inside network
// namespace ns. It stops when the test ends.
func startProxy(t *testing.T, ns string, listen netip.Addr, cfg proxyConfig) *testProxy {
	t.Helper()
	var pc *net.UDPConn
	err := inNetns(ns, func() (err error) {
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(listen, 0)))
		return err
	})
	if err != nil {
		t.Fatalf("proxy listener in %s: %v", ns, err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	cert := selfSigned(t, listen.AsSlice())
	p := &testProxy{
		cfg:      cfg,
		addr:     addr,
		pin:      pinOf(cert.Certificate[0]),
		requests: make(chan seenRequest, 16),
		addrReqs: make(chan []netip.Prefix, 16),
		seen:     make(chan ipPacket, 1024),
		ended:    make(chan error, 16),
		logf:     t.Logf,
	}
	// connect-ip-go's ParseProxyRequest only takes templates without
	// variables and compares the authority; Roam's client always expands
	// RFC 9484's default template with target=* and ipproto=*.
	p.template = uritemplate.MustNew(fmt.Sprintf("https://%s/.well-known/masque/ip/*/*/", addr))
	srv := &http3.Server{
		Handler:         p,
		EnableDatagrams: true,
		TLSConfig:       &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		QUICConfig: &quic.Config{
			EnableDatagrams:   true,
			InitialPacketSize: 1350,
			MaxIdleTimeout:    60 * time.Second,
		},
	}
	go srv.Serve(pc)
	t.Cleanup(func() {
		srv.Close()
		pc.Close()
	})
	return p
}

func (p *testProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := seenRequest{Method: r.Method, Protocol: r.Proto, Host: r.Host, Path: r.URL.EscapedPath(), Header: r.Header.Clone()}
	if r.Header.Get("Authorization") != "Bearer "+p.cfg.token {
		rec.Status = http.StatusUnauthorized
		p.requests <- rec
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	req, err := connectip.ParseProxyRequest(r, p.template)
	if err != nil {
		rec.Status = http.StatusBadRequest
		var perr *connectip.ProxyRequestParseError
		if errors.As(err, &perr) {
			rec.Status = perr.HTTPStatus
		}
		p.requests <- rec
		p.logf("proxy: refusing request: %v", err)
		w.WriteHeader(rec.Status)
		return
	}
	rec.Status = http.StatusOK
	p.requests <- rec
	conn, err := (&connectip.Proxy{}).Proxy(w, req)
	if err != nil {
		p.ended <- fmt.Errorf("proxy: taking over the stream: %w", err)
		return
	}
	p.ended <- p.session(conn)
}

// session configures one tunnel and answers its packets until it closes.
func (p *testProxy) session(conn *connectip.Conn) error {
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if p.cfg.onRequest {
		go p.answerAddressRequests(ctx, conn)
	} else if err := conn.AssignAddresses(p.cfg.assign); err != nil {
		return fmt.Errorf("proxy: ADDRESS_ASSIGN: %w", err)
	}
	if err := conn.AdvertiseRoute(p.cfg.routes); err != nil {
		return fmt.Errorf("proxy: ROUTE_ADVERTISEMENT: %w", err)
	}
	buf := make([]byte, 2048)
	for {
		n, err := conn.ReadPacket(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return nil // the client closed the tunnel
			}
			return err
		}
		pkt, err := parseIP(append([]byte(nil), buf[:n]...))
		if err != nil {
			p.logf("proxy: received a packet that does not parse (%v): %x", err, buf[:n])
			continue
		}
		select {
		case p.seen <- pkt:
		default: // nobody looks; keep going
		}
		if reply := answer(pkt); reply != nil {
			if _, err := conn.WritePacket(reply); err != nil {
				return fmt.Errorf("proxy: WritePacket: %w", err)
			}
		}
	}
}

// answerAddressRequests answers every ADDRESS_REQUEST with the configured
// address of the requested family (or a refusal).
func (p *testProxy) answerAddressRequests(ctx context.Context, conn *connectip.Conn) {
	for {
		req, err := conn.ReceiveAddressRequest(ctx)
		if err != nil {
			return
		}
		p.addrReqs <- req.Prefixes
		answers := make([]netip.Prefix, len(req.Prefixes))
		for i, want := range req.Prefixes {
			for _, a := range p.cfg.assign {
				if a.Addr().Is4() == want.Addr().Is4() {
					answers[i] = a
				}
			}
		}
		if err := req.Respond(answers, nil); err != nil {
			p.logf("proxy: answering ADDRESS_REQUEST: %v", err)
		}
	}
}

// answer returns the reply to an ICMP echo request or a UDP datagram (its
// payload echoed), or nil for anything else. Packets with a bad upper-layer
// checksum get no answer.
func answer(p ipPacket) []byte {
	l4 := p.Payload
	switch p.Proto {
	case protoUDP:
		if len(l4) < 8 || checksum(pseudoSum(p.Src, p.Dst, protoUDP, len(l4)), l4) != 0 {
			return nil
		}
		sport, dport := uint16(l4[0])<<8|uint16(l4[1]), uint16(l4[2])<<8|uint16(l4[3])
		return buildIP(p.Dst, p.Src, protoUDP, defaultTTL, 0, udpDatagram(p.Dst, p.Src, dport, sport, l4[8:]))
	case icmpProto(p.Src):
		if len(l4) < 8 || l4[0] != echoRequestType(p.Src) || l4[1] != 0 {
			return nil
		}
		var sum uint32
		if p.Src.Is6() {
			sum = pseudoSum(p.Src, p.Dst, protoICMPv6, len(l4))
		}
		if checksum(sum, l4) != 0 {
			return nil
		}
		id, seq := uint16(l4[4])<<8|uint16(l4[5]), uint16(l4[6])<<8|uint16(l4[7])
		return buildIP(p.Dst, p.Src, p.Proto, defaultTTL, 0, icmpEcho(p.Dst, p.Src, true, id, seq, l4[8:]))
	}
	return nil
}
