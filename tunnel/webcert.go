package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/roamvpn/roam/auth"
)

// Which certificate the QUIC side presents.
//
// Native Roam clients (and other CONNECT-IP clients such as connect-ip-go)
// pin the long-lived self-signed certificate from the state directory. A
// browser cannot: WebTransport's serverCertificateHashes accepts only an
// ECDSA certificate valid for at most 14 days. So with
// ServerConfig.WebSelfSigned the server keeps a second, short-lived
// certificate for browsers and picks one per handshake by the ClientHello
// (looksLikeBrowser):
//
//   - A ClientHello with a mark of a browser's TLS stack gets the
//     short-lived certificate. The marks are: any RFC 8701 GREASE value
//     (cipher suites, extensions, groups, versions, signature schemes: the
//     form 0x?A?A), the compress_certificate extension (RFC 8879, 0x001b),
//     or the ALPS extension (application_settings, 0x4469 or 0x44cd).
//     Chromium 156's QUIC ClientHello, as measured here, carries no GREASE
//     (BoringSSL leaves it off for QUIC) but both compress_certificate and
//     ALPS 0x44cd: extensions 2b 33 2d 44cd a 10 d 39 1b. Browser TLS
//     stacks (BoringSSL, NSS, Apple's) send at least one of these marks.
//   - All others get the long-lived certificate. Go's crypto/tls, which
//     native Roam clients, connect-ip-go and quic-go use, sends none of
//     them (tests and the interop suite hold Roam to that: a Go client
//     that got the short-lived certificate would fail its pin).
//
// A non-Go client that pins the long-lived certificate while sending such
// a mark would be turned away; no such Roam client exists. Without
// WebSelfSigned (a publicly trusted certificate from --cert/--key)
// everyone gets TLS's certificate and no hashes are published. HTTPS over
// TCP always presents TLS's certificate: a browser loading the page over
// TCP either trusts it (--cert), accepts it once by hand, or loads the page
// from http://127.0.0.1 (loopback).

// certRotation is how long each short-lived certificate is the current
// one; its successor's hash is published that long before it is used.
// With auth.ShortLivedCertValidity of 13 days (1 hour of backdating
// included), a certificate is current from day 0 to day 6 and remains
// valid until day 13 − 1 h, so a page that fetched the hashes just before
// a switch still connects with either.
const certRotation = 6 * 24 * time.Hour

// certRotator holds the current and the next short-lived browser
// certificate. It has no timer: every use (a browser handshake, a request
// for the page configuration) checks whether the next certificate is due
// and switches then, so nothing runs while no browser connects and a
// server that slept past both certificates makes fresh ones. Nothing is
// persisted: a restart makes new certificates (pages re-fetch the hashes).
type certRotator struct {
	now   func() time.Time
	names []string
	ips   []net.IP

	mu        sync.Mutex
	cur, next *tls.Certificate // guarded by mu
	curStart  time.Time        // guarded by mu; next starts at curStart+certRotation
}

// newCertRotator makes the first two certificates, with base's subject
// alternative names.
func newCertRotator(base *x509.Certificate, now func() time.Time) (*certRotator, error) {
	r := &certRotator{now: now}
	if base != nil {
		r.names = append(r.names, base.DNSNames...)
		r.ips = append(r.ips, base.IPAddresses...)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.renewLocked(now()); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certRotator) generate(start time.Time) (*tls.Certificate, error) {
	c, err := auth.GenerateShortLivedCert(start, r.names, r.ips)
	if err != nil {
		return nil, fmt.Errorf("tunnel: browser certificate: %w", err)
	}
	return &c, nil
}

// renewLocked makes a fresh current certificate starting at t and its
// successor. Caller holds r.mu.
func (r *certRotator) renewLocked(t time.Time) error {
	cur, err := r.generate(t)
	if err != nil {
		return err
	}
	next, err := r.generate(t.Add(certRotation))
	if err != nil {
		return err
	}
	r.cur, r.next, r.curStart = cur, next, t
	return nil
}

// certs returns the current and the next certificate, switching first if
// the next one is due. The certificates are shared and must not be
// modified.
func (r *certRotator) certs() (cur, next *tls.Certificate, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.now()
	switch since := t.Sub(r.curStart); {
	case since < -auth.ShortLivedCertBackdate || since >= 2*certRotation:
		// The clock jumped back before the current certificate, or so far
		// ahead that the next one is due to be replaced too.
		if err := r.renewLocked(t); err != nil {
			return nil, nil, err
		}
	case since >= certRotation:
		start := r.curStart.Add(certRotation)
		next, err := r.generate(start.Add(certRotation))
		if err != nil {
			return nil, nil, err
		}
		r.cur, r.next, r.curStart = r.next, next, start
	}
	return r.cur, r.next, nil
}

// hashes returns the lowercase hex SHA-256 of the current and the next
// certificate, for webproto.PageConfig.CertHashes.
func (r *certRotator) hashes() ([]string, error) {
	cur, next, err := r.certs()
	if err != nil {
		return nil, err
	}
	return []string{auth.CertHash(cur.Certificate[0]), auth.CertHash(next.Certificate[0])}, nil
}

// isGREASE reports whether v is an RFC 8701 GREASE value (0x0A0A, 0x1A1A,
// ..., 0xFAFA).
func isGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

// TLS extensions only browser TLS stacks send (see the top of this file).
const (
	extCompressCertificate = 0x001b // RFC 8879
	extALPSOld             = 0x4469 // application_settings, BoringSSL's first codepoint
	extALPS                = 0x44cd // application_settings, current codepoint
)

// looksLikeBrowser reports whether a ClientHello carries a mark of a
// browser's TLS stack: a GREASE value, compress_certificate or ALPS (see
// the comment at the top of this file).
func looksLikeBrowser(chi *tls.ClientHelloInfo) bool {
	for _, v := range chi.Extensions {
		if isGREASE(v) || v == extCompressCertificate || v == extALPSOld || v == extALPS {
			return true
		}
	}
	for _, v := range chi.CipherSuites {
		if isGREASE(v) {
			return true
		}
	}
	for _, v := range chi.SupportedVersions {
		if isGREASE(v) {
			return true
		}
	}
	for _, v := range chi.SupportedCurves {
		if isGREASE(uint16(v)) {
			return true
		}
	}
	for _, v := range chi.SignatureSchemes {
		if isGREASE(uint16(v)) {
			return true
		}
	}
	return false
}

// baseCertificate returns the one certificate of conf, with Leaf set.
func baseCertificate(conf *tls.Config) (*tls.Certificate, error) {
	if conf == nil || len(conf.Certificates) != 1 {
		return nil, errors.New("TLS must hold exactly one certificate (the self-signed one native clients pin)")
	}
	c := conf.Certificates[0]
	if c.Leaf == nil {
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("parsing the TLS certificate: %w", err)
		}
		c.Leaf = leaf
	}
	return &c, nil
}

// configureQUICCert makes conf (the QUIC listener's copy of
// ServerConfig.TLS) present the short-lived certificate to browsers, per
// the rule at the top of this file. Without WebSelfSigned it leaves conf
// alone.
func (s *Server) configureQUICCert(conf *tls.Config) error {
	if s.certs == nil {
		return nil
	}
	base, err := baseCertificate(conf)
	if err != nil {
		return fmt.Errorf("tunnel: ServerConfig.WebSelfSigned: %w", err)
	}
	// crypto/tls asks GetCertificate only when Certificates is empty or
	// the client sent a server name.
	conf.Certificates = nil
	conf.GetCertificate = func(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if !looksLikeBrowser(chi) {
			return base, nil
		}
		cur, _, err := s.certs.certs()
		if s.log.Enabled(context.Background(), slog.LevelDebug) {
			var remote string
			if chi.Conn != nil {
				remote = chi.Conn.RemoteAddr().String()
			}
			s.log.Debug("browser TLS handshake: presenting the short-lived certificate", "remote", remote, "err", err)
		}
		return cur, err
	}
	return nil
}
