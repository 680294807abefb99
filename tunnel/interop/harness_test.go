package interop

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Timeouts are generous: the tests must pass on a loaded 2-core machine.
// None of them is an assertion about speed.
const (
	startTimeout  = 60 * time.Second // a roam process is up (server ready, "tunnel up")
	replyTimeout  = 5 * time.Second  // one attempt of a request/reply exchange
	replyAttempts = 6                // attempts before an exchange fails
	exitTimeout   = 30 * time.Second // a roam process exits after SIGTERM
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// requireRoot fails the test when CI=true and skips it elsewhere if the test
// cannot create network namespaces and TUN devices, or lacks a tool.
func requireRoot(t *testing.T, tools ...string) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (network namespaces, TUN devices)"
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil && why == "" {
			why = fmt.Sprintf("needs %s on PATH", tool)
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI=true, so this is a failure, not a skip", why)
	}
	t.Skip(why)
}

// repoRoot is the main module's directory: ../.. (the tests run in
// tunnel/interop), or $ROAM_REPO if set, to test another checkout of Roam.
func repoRoot() (string, error) {
	dir := os.Getenv("ROAM_REPO")
	if dir == "" {
		dir = filepath.Join("..", "..")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("looking for the main module at %s: %w", dir, err)
	}
	if !bytes.Contains(b, []byte("module github.com/roamvpn/roam\n")) {
		return "", fmt.Errorf("%s/go.mod is not github.com/roamvpn/roam's", dir)
	}
	return dir, nil
}

var binDir string // removed by TestMain

// buildRoam builds the roam binary from the main module, once per test
// binary. The build uses the main module's own go.mod, so Roam runs with its
// pinned quic-go while this module uses connect-ip-go's.
var buildRoam = sync.OnceValues(func() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	if binDir, err = os.MkdirTemp("", "roam-interop-bin-"); err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "roam")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/roam")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/roam in %s: %v\n%s", root, err, out)
	}
	return bin, nil
})

func roamBinary(t *testing.T) string {
	t.Helper()
	bin, err := buildRoam()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is a running roam process with its output captured.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *lockedBuffer
	stderr *lockedBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, valid after done
}

// startProc starts args[0] with args[1:]. The process is killed (if still
// running) when the test ends, and its output is logged if the test failed.
func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s (%s) stdout:\n%s\nstderr:\n%s", p.name, strings.Join(args, " "), p.stdout, p.stderr)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitOutput waits until the process has printed want on stdout or stderr.
// It fails the test if the process exits first or the wait times out.
func (p *proc) waitOutput(t *testing.T, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if strings.Contains(p.stdout.String(), want) || strings.Contains(p.stderr.String(), want) {
			return
		}
		if p.exited() {
			t.Fatalf("%s exited (%v) before printing %q\nstderr:\n%s", p.name, p.err, want, p.stderr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within %v\nstderr:\n%s", p.name, want, d, p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for the process to exit; it fails the test
// if the exit is unclean or takes longer than exitTimeout.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if p.exited() {
		t.Fatalf("%s had already exited (%v)\nstderr:\n%s", p.name, p.err, p.stderr)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("%s exited with %v after SIGTERM\nstderr:\n%s", p.name, p.err, p.stderr)
		}
	case <-time.After(exitTimeout):
		t.Fatalf("%s did not exit within %v of SIGTERM\nstderr:\n%s", p.name, exitTimeout, p.stderr)
	}
}

// wait waits for the process to exit on its own and returns its error.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("%s did not exit within %v\nstderr:\n%s", p.name, d, p.stderr)
		return nil
	}
}

// freeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// pinOf returns the pin of a DER certificate in Roam's form.
func pinOf(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// parsePin parses Roam's "sha256:<64 hex digits>".
func parsePin(s string) ([32]byte, error) {
	var pin [32]byte
	h, ok := strings.CutPrefix(strings.TrimSpace(s), "sha256:")
	if !ok {
		return pin, fmt.Errorf("pin %q: expected sha256:<64 hex digits>", s)
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 32 {
		return pin, fmt.Errorf("pin %q: expected sha256:<64 hex digits>", s)
	}
	copy(pin[:], b)
	return pin, nil
}

// pinnedTLS is a client TLS config that accepts exactly the certificate
// whose SHA-256 is pin (Roam's trust model for self-signed servers).
func pinnedTLS(pin [32]byte) *tls.Config {
	return &tls.Config{
		NextProtos:         []string{"h3"},
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			if len(rawCerts) == 0 {
				return errors.New("no server certificate")
			}
			if sha256.Sum256(rawCerts[0]) != pin {
				return fmt.Errorf("server certificate pin %s does not match", pinOf(rawCerts[0]))
			}
			return nil
		},
	}
}

// selfSigned returns a fresh ECDSA P-256 certificate for ips.
func selfSigned(t *testing.T, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "connect-ip-go interop proxy"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// run runs a command and fails the test if it fails.
func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates an empty network namespace with lo up; it is deleted
// (after killing whatever still runs in it) when the test ends.
func newNetns(t *testing.T, name string) {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, pid := range strings.Fields(string(out)) {
				if pid != strconv.Itoa(os.Getpid()) { // never this test process
					exec.Command("kill", "-9", pid).Run()
				}
			}
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("deleting namespace %s: %v %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// inNetns runs fn on a goroutine whose OS thread is in namespace ns, and
// switches the thread back afterwards. Sockets created in fn stay in ns after
// fn returns. fn must not call t.Fatal (it runs on another goroutine); it
// returns an error instead.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// If switching back fails the thread stays locked, so the
		// runtime discards it when this goroutine ends.
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("namespace %s: %w", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns, err)
			return
		}
		err = fn()
		if rerr := netns.Set(orig); rerr == nil {
			runtime.UnlockOSThread()
		} else if err == nil {
			err = fmt.Errorf("returning from namespace %s: %w", ns, rerr)
		}
		errc <- err
	}()
	return <-errc
}
