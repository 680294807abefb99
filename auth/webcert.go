package auth

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"net"
	"time"
)

// Validity of the short-lived certificates browsers pin with WebTransport's
// serverCertificateHashes. Browsers accept such a certificate only if its
// total validity (NotAfter − NotBefore) is at most 14 days; Chromium 156
// was measured here to accept 335 h and reject 337 h.
const (
	// ShortLivedCertValidity is NotAfter − NotBefore of a short-lived
	// certificate, the backdating included: 13 days, a day of margin
	// below the browsers' 14.
	ShortLivedCertValidity = 13 * 24 * time.Hour
	// ShortLivedCertBackdate is how long before its start a short-lived
	// certificate becomes valid, for clients whose clocks are behind.
	ShortLivedCertBackdate = time.Hour
)

// GenerateShortLivedCert returns a new self-signed certificate for a
// browser to pin by hash (WebTransport serverCertificateHashes): X.509 v3,
// an ECDSA P-256 key, a random 128-bit serial, KeyUsage DigitalSignature,
// ExtKeyUsage ServerAuth, valid from start − ShortLivedCertBackdate for
// ShortLivedCertValidity in total (so until start + 13 days − 1 hour). start
// may lie in the future: a server makes its next certificate ahead of time
// to publish its hash. The subject alternative names are dnsNames and
// ipAddrs plus "localhost", 127.0.0.1 and ::1, as for LoadOrCreateCert
// (browsers do not check them when pinning by hash). The certificate is not
// written anywhere; the returned value has Leaf set.
func GenerateShortLivedCert(start time.Time, dnsNames []string, ipAddrs []net.IP) (tls.Certificate, error) {
	notBefore := start.Add(-ShortLivedCertBackdate).UTC().Truncate(time.Second)
	return selfSigned("roam server (browser)", notBefore, notBefore.Add(ShortLivedCertValidity), dnsNames, ipAddrs)
}

// CertHash returns the SHA-256 digest of a DER-encoded certificate as 64
// lowercase hex digits: the value WebTransport's serverCertificateHashes
// takes (as bytes) and the page configuration publishes. It is Pin without
// the "sha256:" prefix.
func CertHash(der []byte) string {
	d := sha256.Sum256(der)
	return hex.EncodeToString(d[:])
}
