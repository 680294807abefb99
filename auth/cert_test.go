package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadOrCreateCert(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "sub")
	before := time.Now()
	cert, created, err := LoadOrCreateCert(dir, []string{"vpn.example.com", "VPN.example.com.", "", "192.0.2.7"}, []net.IP{net.ParseIP("203.0.113.5"), net.ParseIP("2001:db8::1"), net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Error("created = false for an empty dir")
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, err %v; want 0700", st.Mode().Perm(), err)
	}
	if st, err := os.Stat(filepath.Join(dir, KeyFileName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, err %v; want 0600", st.Mode().Perm(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("state dir holds %d entries, want cert.pem and key.pem only", len(entries))
	}

	leaf := cert.Leaf
	if leaf == nil || len(cert.Certificate) != 1 || !bytes.Equal(leaf.Raw, cert.Certificate[0]) {
		t.Fatal("Leaf not set to the certificate")
	}
	if leaf.Version != 3 {
		t.Errorf("version %d, want 3", leaf.Version)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %v is not a large positive random number", leaf.SerialNumber)
	}
	if nb := leaf.NotBefore; nb.After(before.Add(-time.Hour+time.Second)) || nb.Before(before.Add(-time.Hour-time.Minute)) {
		t.Errorf("NotBefore %v, want about an hour before %v", nb, before)
	}
	if na := leaf.NotAfter; na.Before(before.AddDate(9, 11, 0)) || na.After(before.AddDate(10, 0, 1)) {
		t.Errorf("NotAfter %v, want about 10 years after %v", na, before)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("key usage %v / %v", leaf.KeyUsage, leaf.ExtKeyUsage)
	}
	if leaf.IsCA {
		t.Error("generated certificate is a CA")
	}
	if want := []string{"vpn.example.com", "localhost"}; !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNS names %q, want %q", leaf.DNSNames, want)
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	if want := []string{"203.0.113.5", "2001:db8::1", "127.0.0.1", "192.0.2.7", "::1"}; !slices.Equal(ips, want) {
		t.Errorf("IP addresses %q, want %q", ips, want)
	}
	for _, host := range []string{"vpn.example.com", "localhost", "127.0.0.1", "::1", "203.0.113.5"} {
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("VerifyHostname(%s): %v", host, err)
		}
	}
	if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}

	// Second call: same certificate from disk, not regenerated; SANs ignored.
	again, created, err := LoadOrCreateCert(dir, []string{"other.example.com"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("created = true on reuse")
	}
	if !bytes.Equal(again.Certificate[0], cert.Certificate[0]) {
		t.Error("second call returned a different certificate")
	}
	if again.Leaf == nil || !again.Leaf.Equal(leaf) {
		t.Error("second call: Leaf not set")
	}
	if !cert.PrivateKey.(*ecdsa.PrivateKey).Equal(again.PrivateKey) {
		t.Error("second call returned a different key")
	}
}

func TestLoadOrCreateCertDefaults(t *testing.T) {
	cert, created, err := LoadOrCreateCert(t.TempDir(), nil, nil)
	if err != nil || !created {
		t.Fatalf("created %v, err %v", created, err)
	}
	if !slices.Equal(cert.Leaf.DNSNames, []string{"localhost"}) || len(cert.Leaf.IPAddresses) != 2 {
		t.Errorf("SANs %q %v", cert.Leaf.DNSNames, cert.Leaf.IPAddresses)
	}
}

func TestLoadOrCreateCertBadSANs(t *testing.T) {
	tests := []struct {
		name  string
		names []string
		ips   []net.IP
		want  string
	}{
		{"space in name", []string{"bad name"}, nil, `certificate DNS name "bad name": expected a host name`},
		{"empty label", []string{"a..b"}, nil, `certificate DNS name "a..b"`},
		{"bad ip length", nil, []net.IP{{1, 2, 3}}, "certificate IP address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, _, err := LoadOrCreateCert(dir, tt.names, tt.ips)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("files written despite the error: %v", entries)
			}
		})
	}
}

// writeState creates a state dir with a fresh certificate and returns it.
func writeState(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, _, err := LoadOrCreateCert(dir, nil, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadOrCreateCertCorrupt(t *testing.T) {
	otherDir := writeState(t)
	otherKey, err := os.ReadFile(filepath.Join(otherDir, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(dir string) error
		want   string // substring; "{cert}" and "{key}" are replaced by paths
	}{
		{"garbage cert", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, CertFileName), []byte("not a certificate\n"), 0o644)
		}, `certificate file {cert}: no PEM "CERTIFICATE" block found`},
		{"empty cert", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, CertFileName), nil, 0o644)
		}, `certificate file {cert}: no PEM "CERTIFICATE" block found`},
		{"bad DER in cert", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, CertFileName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), 0o644)
		}, "certificate file {cert}: x509: "},
		{"garbage key", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, KeyFileName), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
		}, `key file {key}: PEM "PRIVATE KEY" block: `},
		{"truncated key", func(dir string) error {
			b, err := os.ReadFile(filepath.Join(dir, KeyFileName))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, KeyFileName), b[:len(b)/2], 0o600)
		}, `key file {key}: no PEM "PRIVATE KEY" block found`},
		{"cert in key file", func(dir string) error {
			b, err := os.ReadFile(filepath.Join(dir, CertFileName))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, KeyFileName), b, 0o600)
		}, "(it holds a certificate; is it the certificate file?)"},
		{"key mismatch", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, KeyFileName), otherKey, 0o600)
		}, "key file {key} does not match certificate file {cert}"},
		{"key missing", func(dir string) error {
			return os.Remove(filepath.Join(dir, KeyFileName))
		}, "cert.pem exists but key.pem is missing"},
		{"cert missing", func(dir string) error {
			return os.Remove(filepath.Join(dir, CertFileName))
		}, "key.pem exists but cert.pem is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeState(t)
			if err := tt.modify(dir); err != nil {
				t.Fatal(err)
			}
			snapshot := readDir(t, dir)
			_, created, err := LoadOrCreateCert(dir, nil, nil)
			want := strings.NewReplacer("{cert}", filepath.Join(dir, CertFileName), "{key}", filepath.Join(dir, KeyFileName)).Replace(tt.want)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error %v, want it to contain %q", err, want)
			}
			if !errors.Is(err, ErrCorruptCert) {
				t.Errorf("error %v does not wrap ErrCorruptCert", err)
			}
			if created {
				t.Error("created = true on error")
			}
			if after := readDir(t, dir); !mapsEqual(snapshot, after) {
				t.Error("state dir changed: a corrupt certificate was regenerated")
			}
		})
	}
}

func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = string(b)
	}
	return m
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestLoadCert(t *testing.T) {
	dir := writeState(t)
	certFile, keyFile := filepath.Join(dir, CertFileName), filepath.Join(dir, KeyFileName)
	want, err := LoadCert(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if want.Leaf == nil {
		t.Fatal("Leaf not set")
	}
	certPEM, _ := os.ReadFile(certFile)
	keyPEM, _ := os.ReadFile(keyFile)

	// SEC 1 "EC PRIVATE KEY" form, and a combined file with the key first.
	ecDER, err := x509.MarshalECPrivateKey(want.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	ecKeyFile := filepath.Join(dir, "ec.pem")
	writeFile(t, ecKeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	combined := filepath.Join(dir, "combined.pem")
	writeFile(t, combined, append(append([]byte(nil), keyPEM...), certPEM...))
	for _, pair := range [][2]string{{certFile, ecKeyFile}, {combined, combined}} {
		got, err := LoadCert(pair[0], pair[1])
		if err != nil {
			t.Fatalf("LoadCert(%s, %s): %v", pair[0], pair[1], err)
		}
		if !bytes.Equal(got.Certificate[0], want.Certificate[0]) || got.Leaf == nil {
			t.Errorf("LoadCert(%s, %s) returned a different certificate", pair[0], pair[1])
		}
	}

	// RSA PKCS#1 key and certificate, with a chain of two.
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: bigOne(), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"rsa.test"}}
	rsaDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &rsaKey.PublicKey, rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaCert, rsaKeyFile := filepath.Join(dir, "rsa.crt"), filepath.Join(dir, "rsa.key")
	writeFile(t, rsaCert, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rsaDER}), certPEM...))
	writeFile(t, rsaKeyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}))
	got, err := LoadCert(rsaCert, rsaKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Certificate) != 2 || !bytes.Equal(got.Leaf.Raw, rsaDER) {
		t.Errorf("RSA chain: %d certificates, leaf matches %v", len(got.Certificate), bytes.Equal(got.Leaf.Raw, rsaDER))
	}

	// Errors name the flag-provided paths.
	missing := filepath.Join(dir, "nope.pem")
	tests := []struct {
		name, cert, key, want string
	}{
		{"missing cert", missing, keyFile, "certificate file " + missing + ": open: "},
		{"missing key", certFile, missing, "key file " + missing + ": open: "},
		{"key as cert", keyFile, keyFile, "certificate file " + keyFile + `: no PEM "CERTIFICATE" block found (it holds a private key; is it the key file?)`},
		{"cert as key", certFile, certFile, "key file " + certFile + `: no PEM "PRIVATE KEY" block found (it holds a certificate`},
		{"wrong key", rsaCert, keyFile, "key file " + keyFile + " does not match certificate file " + rsaCert},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadCert(tt.cert, tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := LoadCert(missing, keyFile); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file error %v does not wrap fs.ErrNotExist", err)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func bigOne() *big.Int { return big.NewInt(1) }
