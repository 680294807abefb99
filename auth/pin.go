package auth

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// pinPrefix starts every pin string.
const pinPrefix = "sha256:"

// pinForm is the expected form quoted in pin errors.
const pinForm = "expected sha256:<64 hex digits>"

// Pin returns the pin of a DER-encoded certificate: "sha256:" followed by the
// lowercase hex SHA-256 digest of der.
func Pin(der []byte) string {
	return FormatPin(sha256.Sum256(der))
}

// FormatPin returns the string form of a digest: "sha256:" + lowercase hex.
// ParsePin(FormatPin(d)) == d.
func FormatPin(digest [32]byte) string {
	return pinPrefix + hex.EncodeToString(digest[:])
}

// ParsePin parses "sha256:<64 hex digits>"; the hex digits and the "sha256"
// prefix are case-insensitive. Surrounding whitespace is not accepted (trim
// it first, or use ReadPinFile). Errors wrap ErrInvalidPin and name the
// expected form.
func ParsePin(s string) ([32]byte, error) {
	var d [32]byte
	if len(s) != len(pinPrefix)+2*len(d) || !strings.EqualFold(s[:len(pinPrefix)], pinPrefix) {
		return d, pinError(s)
	}
	if _, err := hex.Decode(d[:], []byte(s[len(pinPrefix):])); err != nil {
		return [32]byte{}, pinError(s)
	}
	return d, nil
}

func pinError(s string) error {
	const max = 80
	if len(s) > max {
		s = s[:max] + "..."
	}
	return fmt.Errorf("%w %q: %s", ErrInvalidPin, s, pinForm)
}

// ReadPinFile reads a pin file as written by WritePin (surrounding whitespace
// is ignored) and parses it. Errors name the file.
func ReadPinFile(path string) ([32]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}, fmt.Errorf("pin file %s: %w", path, unwrapPathError(err))
	}
	d, err := ParsePin(string(trimASCIISpace(b)))
	if err != nil {
		return [32]byte{}, fmt.Errorf("pin file %s: %w", path, err)
	}
	return d, nil
}

// WritePin writes Pin(der) and a newline to the file "pin" in stateDir,
// atomically (temporary file and rename), mode 0644, creating stateDir (mode
// 0700) if it is missing.
func WritePin(stateDir string, der []byte) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return writeFileAtomic(filepath.Join(stateDir, PinFileName), []byte(Pin(der)+"\n"), 0o644)
}

// VerifyPinned returns a function for tls.Config.VerifyPeerCertificate, to be
// used with InsecureSkipVerify: true. It accepts the handshake only when the
// leaf certificate (rawCerts[0]) hashes to pin, and otherwise returns a
// *PinMismatchError carrying both pins; the chain, names and validity dates
// are not checked (the pin replaces them). It keeps no state and does not
// retain rawCerts.
//
// As crypto/tls documents, VerifyPeerCertificate is not called on resumed
// TLS sessions; that is safe as long as the session cache is not shared with
// a config that trusts other certificates. VerifyConnectionPinned checks
// resumed sessions too.
func VerifyPinned(pin [32]byte) func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	return func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			return &PinMismatchError{Want: FormatPin(pin)}
		}
		return checkPin(pin, rawCerts[0])
	}
}

// VerifyConnectionPinned returns a function for tls.Config.VerifyConnection,
// to be used with InsecureSkipVerify: true. It applies the same check as
// VerifyPinned to the peer's leaf certificate, and, unlike
// VerifyPeerCertificate, is also called for resumed sessions.
func VerifyConnectionPinned(pin [32]byte) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return &PinMismatchError{Want: FormatPin(pin)}
		}
		return checkPin(pin, cs.PeerCertificates[0].Raw)
	}
}

func checkPin(pin [32]byte, der []byte) error {
	// The pin is public: a plain comparison is fine.
	if got := sha256.Sum256(der); got != pin {
		return &PinMismatchError{Want: FormatPin(pin), Got: FormatPin(got)}
	}
	return nil
}
