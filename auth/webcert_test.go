package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"
)

// TestGenerateShortLivedCert checks what browsers require of a certificate
// pinned by hash: X.509 v3, ECDSA P-256, total validity at most 14 days
// (backdating included).
func TestGenerateShortLivedCert(t *testing.T) {
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	cert, err := GenerateShortLivedCert(start, []string{"vpn.example.com"}, []net.IP{net.ParseIP("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Version != 3 {
		t.Errorf("version %d, want 3", leaf.Version)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if leaf.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("signature %v, want ECDSA-SHA256", leaf.SignatureAlgorithm)
	}
	total := leaf.NotAfter.Sub(leaf.NotBefore)
	if total != ShortLivedCertValidity || total > 14*24*time.Hour {
		t.Errorf("validity %v, want %v (at most 14 days)", total, ShortLivedCertValidity)
	}
	if want := start.Add(-time.Hour); !leaf.NotBefore.Equal(want) {
		t.Errorf("NotBefore %v, want %v", leaf.NotBefore, want)
	}
	if !cert.Leaf.Equal(leaf) {
		t.Error("Leaf does not match the DER")
	}
	if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if leaf.DNSNames[0] != "vpn.example.com" || !leaf.IPAddresses[0].Equal(net.ParseIP("192.0.2.1")) {
		t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if _, err := GenerateShortLivedCert(start, []string{"bad name"}, nil); err == nil {
		t.Error("a bad DNS name was accepted")
	}
	other, err := GenerateShortLivedCert(start, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if CertHash(other.Certificate[0]) == CertHash(cert.Certificate[0]) {
		t.Error("two certificates have the same hash")
	}
}

func TestCertHash(t *testing.T) {
	der := []byte("not really a certificate")
	h := CertHash(der)
	if len(h) != 64 || strings.ToLower(h) != h || "sha256:"+h != Pin(der) {
		t.Errorf("CertHash = %q, Pin = %q", h, Pin(der))
	}
}
