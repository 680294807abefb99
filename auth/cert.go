package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside the state directory.
const (
	CertFileName = "cert.pem"
	KeyFileName  = "key.pem"
	PinFileName  = "pin"
)

// Validity of generated certificates.
const (
	certBackdate = time.Hour
	certLifetime = 10 * 365 * 24 * time.Hour
)

// LoadOrCreateCert returns the server certificate kept in stateDir as
// cert.pem and key.pem, creating stateDir (mode 0700) if it is missing.
//
// If neither file exists it generates a self-signed ECDSA P-256 certificate
// (X.509 v3, random 128-bit serial, valid from one hour ago for 10 years,
// KeyUsage DigitalSignature, ExtKeyUsage ServerAuth, subject alternative names
// dnsNames and ipAddrs plus "localhost", 127.0.0.1 and ::1) and writes it,
// each file atomically (temporary file, fsync, rename; key.pem mode 0600,
// cert.pem mode 0644); created is then true.
//
// If both exist they are loaded as they are: dnsNames and ipAddrs are not
// compared with the stored names and an expired certificate is not renewed
// (clients pin the certificate, so its names and dates are not checked by
// Roam; cert.Leaf lets the caller look). A corrupt or mismatched file, or only
// one of the two files present, is an error naming the file wrapping
// ErrCorruptCert; nothing is ever regenerated silently, since that would
// change the pin every client has.
//
// The returned certificate has Leaf set. Two processes calling
// LoadOrCreateCert on the same empty directory at once may both generate; the
// last writer wins on disk.
func LoadOrCreateCert(stateDir string, dnsNames []string, ipAddrs []net.IP) (cert tls.Certificate, created bool, err error) {
	certFile := filepath.Join(stateDir, CertFileName)
	keyFile := filepath.Join(stateDir, KeyFileName)
	certExists, err := fileExists(certFile)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	keyExists, err := fileExists(keyFile)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	switch {
	case certExists && keyExists:
		cert, err := LoadCert(certFile, keyFile)
		return cert, false, err
	case certExists:
		return tls.Certificate{}, false, fmt.Errorf("%w: state dir %s: %s exists but %s is missing; restore %s, or remove %s to generate a new certificate (clients must then be given the new pin)",
			ErrCorruptCert, stateDir, CertFileName, KeyFileName, KeyFileName, CertFileName)
	case keyExists:
		return tls.Certificate{}, false, fmt.Errorf("%w: state dir %s: %s exists but %s is missing; restore %s, or remove %s to generate a new certificate (clients must then be given the new pin)",
			ErrCorruptCert, stateDir, KeyFileName, CertFileName, CertFileName, KeyFileName)
	}

	cert, certPEM, keyPEM, err := generateCert(dnsNames, ipAddrs, time.Now())
	if err != nil {
		return tls.Certificate{}, false, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return tls.Certificate{}, false, fmt.Errorf("state dir: %w", err)
	}
	// Key first: a crash between the two renames leaves key.pem alone, which
	// the next start reports instead of pairing a new cert with an old key.
	if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := writeFileAtomic(certFile, certPEM, 0o644); err != nil {
		return tls.Certificate{}, false, err
	}
	return cert, true, nil
}

// fileExists reports whether path exists; errors other than "does not exist"
// (permission denied, ...) are returned.
func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// generateCert makes a self-signed ECDSA P-256 server certificate and returns
// it with its PEM encodings.
func generateCert(dnsNames []string, ipAddrs []net.IP, now time.Time) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	cert, err = selfSigned("roam server", now.Add(-certBackdate), now.Add(certLifetime), dnsNames, ipAddrs)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("encode certificate key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return cert, certPEM, keyPEM, nil
}

// selfSigned makes a self-signed X.509 v3 server certificate with a new
// ECDSA P-256 key, a random 128-bit serial, KeyUsage DigitalSignature,
// ExtKeyUsage ServerAuth, the given validity and the subject alternative
// names of certSANs. The result has Leaf set.
func selfSigned(commonName string, notBefore, notAfter time.Time, dnsNames []string, ipAddrs []net.IP) (tls.Certificate, error) {
	names, ips, err := certSANs(dnsNames, ipAddrs)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate certificate serial: %w", err)
	}
	serial.SetBit(serial, 127, 1) // never zero, always 16 bytes
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              names,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parse generated certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// certSANs returns dnsNames and ipAddrs plus the loopback names, without
// duplicates, in order. IP literals among dnsNames become IP SANs; empty
// names are skipped; invalid ones are errors.
func certSANs(dnsNames []string, ipAddrs []net.IP) ([]string, []net.IP, error) {
	var (
		names []string
		extra []net.IP // IP literals passed as names
		seen  = map[string]bool{}
	)
	for _, n := range append(append([]string(nil), dnsNames...), "localhost") {
		n = strings.TrimSuffix(strings.ToLower(n), ".")
		if n == "" || seen[n] {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			extra = append(extra, ip)
			continue
		}
		if err := checkDNSName(n); err != nil {
			return nil, nil, err
		}
		seen[n] = true
		names = append(names, n)
	}
	var ips []net.IP
	all := append(append(append([]net.IP(nil), ipAddrs...), extra...), net.IPv4(127, 0, 0, 1), net.IPv6loopback)
	for _, ip := range all {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, nil, fmt.Errorf("certificate IP address %v: expected 4 or 16 bytes, got %d", ip, len(ip))
		}
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		dup := false
		for _, have := range ips {
			dup = dup || have.Equal(ip)
		}
		if !dup {
			ips = append(ips, ip)
		}
	}
	return names, ips, nil
}

// checkDNSName accepts host names (letters, digits, '-', '.', and a leading
// "*." wildcard label), the forms a certificate SAN can carry.
func checkDNSName(n string) error {
	body := strings.TrimPrefix(n, "*.")
	ok := len(n) <= 253 && body != ""
	for _, label := range strings.Split(body, ".") {
		if label == "" || len(label) > 63 {
			ok = false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				ok = false
			}
		}
	}
	if !ok {
		return fmt.Errorf("certificate DNS name %q: expected a host name such as vpn.example.com", n)
	}
	return nil
}

// LoadCert loads a certificate chain and its private key from the PEM files
// certFile and keyFile (as given by --cert and --key). The first CERTIFICATE
// block of certFile is the leaf; further ones are sent as the chain. The key
// may be PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) and must match the leaf. Errors
// name the file at fault and wrap ErrCorruptCert (or the I/O error). The
// returned certificate has Leaf set.
func LoadCert(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate file %s: %w", certFile, unwrapPathError(err))
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key file %s: %w", keyFile, unwrapPathError(err))
	}
	var (
		cert   tls.Certificate
		sawKey bool
	)
	for rest := certPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "CERTIFICATE":
			cert.Certificate = append(cert.Certificate, block.Bytes)
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			sawKey = true // a combined cert+key file is fine; the key is read from keyFile
		}
	}
	if len(cert.Certificate) == 0 {
		hint := ""
		if sawKey {
			hint = " (it holds a private key; is it the key file?)"
		}
		return tls.Certificate{}, fmt.Errorf("%w: certificate file %s: no PEM \"CERTIFICATE\" block found%s", ErrCorruptCert, certFile, hint)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: certificate file %s: %w", ErrCorruptCert, certFile, err)
	}
	cert.Leaf = leaf

	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: key file %s: %w", ErrCorruptCert, keyFile, err)
	}
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return tls.Certificate{}, fmt.Errorf("%w: key file %s does not match certificate file %s", ErrCorruptCert, keyFile, certFile)
	}
	cert.PrivateKey = key
	return cert, nil
}

// parsePrivateKeyPEM returns the first private key in a PEM file.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	sawCert := false
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			sawCert = true
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			continue
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM %q block: %w", block.Type, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
		return s, nil
	}
	if sawCert {
		return nil, errors.New(`no PEM "PRIVATE KEY" block found (it holds a certificate; is it the certificate file?)`)
	}
	return nil, errors.New(`no PEM "PRIVATE KEY" block found`)
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, fsyncs it, renames it over path and fsyncs the directory, so
// readers see either the old or the new content, never a partial file.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // best effort: makes the rename durable on most file systems
		d.Close()
	}
	return nil
}

// unwrapPathError drops the *fs.PathError wrapper (whose message repeats the
// path the caller already names) but keeps the operation and the cause, so
// errors.Is(err, fs.ErrNotExist) still works.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}
