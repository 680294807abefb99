package auth

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPinRoundTrip(t *testing.T) {
	der := []byte("not really DER, but Pin hashes any bytes")
	p := Pin(der)
	sum := sha256.Sum256(der)
	if want := "sha256:" + strings.ToLower(hexOf(sum[:])); p != want {
		t.Fatalf("Pin = %q, want %q", p, want)
	}
	for _, s := range []string{p, strings.ToUpper(p), "SHA256:" + p[7:], "sha256:" + strings.ToUpper(p[7:])} {
		got, err := ParsePin(s)
		if err != nil {
			t.Fatalf("ParsePin(%q): %v", s, err)
		}
		if got != sum || FormatPin(got) != p {
			t.Errorf("ParsePin(%q) = %x, want %x", s, got, sum)
		}
	}
	// The empty certificate's pin is well known.
	if got := Pin(nil); got != "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("Pin(nil) = %q", got)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(digits[c>>4])
		sb.WriteByte(digits[c&15])
	}
	return sb.String()
}

func TestParsePinErrors(t *testing.T) {
	good := Pin([]byte("x"))
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"no prefix", good[7:]},
		{"other hash", "sha1:" + good[7:]},
		{"sha384 prefix", "sha384:" + good[7:]},
		{"colon missing", "sha256" + good[7:] + "0"},
		{"short", good[:len(good)-1]},
		{"long", good + "0"},
		{"non-hex", good[:len(good)-1] + "g"},
		{"space inside", good[:10] + " " + good[11:]},
		{"trailing newline", good + "\n"},
		{"leading space", " " + good},
		{"base64", "sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},
		{"very long", "sha256:" + strings.Repeat("0", 1000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePin(tt.in)
			if err == nil {
				t.Fatalf("ParsePin(%q) = %x, want error", tt.in, got)
			}
			if got != ([32]byte{}) {
				t.Errorf("non-zero result %x with error", got)
			}
			if !errors.Is(err, ErrInvalidPin) || !strings.Contains(err.Error(), "expected sha256:<64 hex digits>") {
				t.Errorf("error %q", err)
			}
			if len(err.Error()) > 200 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestWritePin(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	der := []byte("certificate")
	if err := WritePin(dir, der); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, PinFileName)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != Pin(der)+"\n" {
		t.Errorf("pin file holds %q", b)
	}
	if err := WritePin(dir, []byte("other")); err != nil { // overwrite
		t.Fatal(err)
	}
	got, err := ReadPinFile(path)
	if err != nil || got != sha256.Sum256([]byte("other")) {
		t.Errorf("ReadPinFile = %x, %v", got, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("dir holds %d entries, want 1 (temporary file left behind?)", len(entries))
	}
	writeFile(t, path, []byte("garbage\n"))
	if _, err := ReadPinFile(path); err == nil || !strings.HasPrefix(err.Error(), "pin file "+path+": ") || !errors.Is(err, ErrInvalidPin) {
		t.Errorf("ReadPinFile(garbage) error %v", err)
	}
}

// handshake runs a TLS handshake over loopback TCP between a server
// presenting cert and a client configured by client, and returns the client's
// error. (Not net.Pipe: it has no buffering, so a client that sends an alert
// while the server is still writing its flight would deadlock.)
func handshake(t *testing.T, cert tls.Certificate, client *tls.Config) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		sc, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		err = srv.Handshake()
		if err == nil {
			_, err = srv.Write([]byte("ok"))
		}
		srv.Close()
		done <- err
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cli := tls.Client(cc, client)
	err = cli.Handshake()
	if err == nil {
		buf := make([]byte, 2)
		if _, rerr := io.ReadFull(cli, buf); rerr != nil || string(buf) != "ok" {
			t.Errorf("reading from server: %q, %v", buf, rerr)
		}
	}
	cli.Close()
	<-done
	return err
}

func TestVerifyPinnedHandshake(t *testing.T) {
	cert, _, err := LoadOrCreateCert(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := LoadOrCreateCert(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := ParsePin(Pin(cert.Certificate[0]))
	if err != nil {
		t.Fatal(err)
	}
	wrongPin := sha256.Sum256(other.Certificate[0])

	type mkConf func(pin [32]byte) *tls.Config
	peerCert := func(pin [32]byte) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: VerifyPinned(pin), ServerName: "vpn.example.com"}
	}
	verifyConn := func(pin [32]byte) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, VerifyConnection: VerifyConnectionPinned(pin), ServerName: "vpn.example.com"}
	}
	tests := []struct {
		name    string
		conf    mkConf
		pin     [32]byte
		wantErr bool
	}{
		{"VerifyPinned accepts", peerCert, pin, false},
		{"VerifyPinned rejects", peerCert, wrongPin, true},
		{"VerifyConnectionPinned accepts", verifyConn, pin, false},
		{"VerifyConnectionPinned rejects", verifyConn, wrongPin, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := handshake(t, cert, tt.conf(tt.pin))
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("handshake failed: %v", err)
				}
				return
			}
			var pm *PinMismatchError
			if !errors.As(err, &pm) {
				t.Fatalf("handshake error %v (%T), want *PinMismatchError", err, err)
			}
			if pm.Want != FormatPin(tt.pin) || pm.Got != Pin(cert.Certificate[0]) {
				t.Errorf("Want %s Got %s", pm.Want, pm.Got)
			}
			want := "certificate pin mismatch: server presented " + pm.Got + ", expected " + pm.Want
			if pm.Error() != want {
				t.Errorf("Error() = %q, want %q", pm.Error(), want)
			}
		})
	}

	// Without the pin the same client setup (normal verification) fails: the
	// certificate is self-signed.
	if err := handshake(t, cert, &tls.Config{ServerName: "localhost"}); err == nil {
		t.Error("self-signed certificate accepted without a pin")
	}
	// With the generated certificate as a root, the SANs verify normally.
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := handshake(t, cert, &tls.Config{ServerName: name, RootCAs: roots}); err != nil {
			t.Errorf("normal verification as %s: %v", name, err)
		}
	}
}

func TestVerifyPinnedNoCertificate(t *testing.T) {
	pin := sha256.Sum256([]byte("x"))
	err := VerifyPinned(pin)(nil, nil)
	var pm *PinMismatchError
	if !errors.As(err, &pm) || pm.Got != "" || pm.Want != FormatPin(pin) {
		t.Fatalf("error %#v", err)
	}
	if want := "certificate pin mismatch: server presented no certificate, expected " + FormatPin(pin); err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
	if err := VerifyConnectionPinned(pin)(tls.ConnectionState{}); !errors.As(err, &pm) {
		t.Errorf("VerifyConnectionPinned with no certificate: %v", err)
	}
	if err := VerifyPinned(pin)([][]byte{[]byte("x"), []byte("chain")}, nil); err != nil {
		t.Errorf("matching leaf rejected: %v", err)
	}
	if err := VerifyPinned(pin)([][]byte{[]byte("chain"), []byte("x")}, nil); err == nil {
		t.Error("pin matched a non-leaf certificate")
	}
}

func FuzzParsePin(f *testing.F) {
	cert, _, err := LoadOrCreateCert(f.TempDir(), nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(Pin(cert.Certificate[0]), cert.Certificate[0])
	f.Add(strings.ToUpper(Pin(nil)), []byte{})
	f.Add("sha256:xyz", []byte("der"))
	f.Add("sha256:"+strings.Repeat("0", 63)+"G", []byte{0})
	f.Fuzz(func(t *testing.T, s string, der []byte) {
		// Parsing any string: no panic; success means a canonical round trip.
		if d, err := ParsePin(s); err == nil {
			if FormatPin(d) != strings.ToLower(s) {
				t.Fatalf("ParsePin(%q) = %x, formats as %q", s, d, FormatPin(d))
			}
		} else if !errors.Is(err, ErrInvalidPin) || d != ([32]byte{}) {
			t.Fatalf("ParsePin(%q) = %x, %v", s, d, err)
		}
		// Encoding any DER: ParsePin(Pin(der)) is its digest and verifies.
		p := Pin(der)
		d, err := ParsePin(p)
		if err != nil || d != sha256.Sum256(der) {
			t.Fatalf("ParsePin(Pin(%x)) = %x, %v", der, d, err)
		}
		if err := VerifyPinned(d)([][]byte{der}, nil); err != nil {
			t.Fatalf("VerifyPinned rejects its own certificate: %v", err)
		}
	})
}
