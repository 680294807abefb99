//go:build linux

package web

// Browser end-to-end tests: the real `roam server` (userspace NAT, no
// root) serves the page on http://127.0.0.1:PORT, a headless chromium
// driven over WebDriver signs in with a token and fetches a URL through
// the WebTransport tunnel:
//
//	chromium ──page, WebTransport──▶ roam server ──flow──▶ 127.0.0.1:X (test HTTP server)
//	            http(s)://127.0.0.1:PORT             (the page asks for 100.96.0.1:X)
//
// 100.96.0.1 is the pool's gateway address, which the server maps to its
// own loopback (GatewayLoopback). It is not an address of this host, so
// the only way a request for http://100.96.0.1:X/ can reach the test
// server bound to 127.0.0.1 is the tunnel; the test server checks the
// Host header to prove it. Nothing is sent beyond loopback.
//
// Needs Debian's chromium and chromium-driver; skipped without them,
// except under CI=true where that is a failure.

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// gateway4 is the default --pool4 100.96.0.0/16's gateway address.
var gateway4 = netip.MustParseAddr("100.96.0.1")

// buildRoam builds the roam binary once per test binary.
var buildRoam = sync.OnceValues(func() (string, error) {
	dir, err := mkBuildDir("roam-web-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "roam")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/roam").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ../cmd/roam: %v\n%s", err, out)
	}
	return bin, nil
})

// buildWebDir builds the page's files from the current sources into a
// temporary directory for --web-dir: static/ as it is, roam.wasm compiled
// now from ./wasm (as `go generate ./web` does) and the Go release's
// wasm_exec.js. So the test exercises this tree's client, not whatever
// roam.wasm was last generated (and embedded).
var buildWebDir = sync.OnceValues(func() (string, error) {
	dir, err := mkBuildDir("roam-web-assets-")
	if err != nil {
		return "", err
	}
	entries, err := os.ReadDir("static")
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "roam.wasm" || e.Name() == "wasm_exec.js" || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("static", e.Name()))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return "", err
		}
	}
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "roam.wasm"), "./wasm")
	build.Env = append(os.Environ(), "GOOS=js", "GOARCH=wasm", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("GOOS=js GOARCH=wasm go build ./wasm: %v\n%s", err, out)
	}
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT: %v", err)
	}
	loader, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(goroot)), "lib", "wasm", "wasm_exec.js"))
	if err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "wasm_exec.js"), loader, 0o644)
})

// webDirArgs returns the --web-dir flag for the server: ROAM_WEB_DIR if
// set, none (the binary's embedded page) with ROAM_WEB_DIR=embedded, else
// a fresh build of this tree's page.
func webDirArgs(t testing.TB) []string {
	t.Helper()
	switch d := os.Getenv("ROAM_WEB_DIR"); d {
	case "embedded":
		return nil
	case "":
		dir, err := buildWebDir()
		if err != nil {
			t.Fatalf("building the page: %v", err)
		}
		return []string{"--web-dir", dir}
	default:
		return []string{"--web-dir", d}
	}
}

// buildDirs are the directories buildRoam and buildWebDir made, removed
// by TestMain at the end.
var (
	buildDirsMu sync.Mutex
	buildDirs   []string
)

func mkBuildDir(pattern string) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err == nil {
		buildDirsMu.Lock()
		buildDirs = append(buildDirs, dir)
		buildDirsMu.Unlock()
	}
	return dir, err
}

func TestMain(m *testing.M) {
	code := m.Run()
	buildDirsMu.Lock()
	for _, d := range buildDirs {
		os.RemoveAll(d)
	}
	buildDirsMu.Unlock()
	os.Exit(code)
}

// roamServer is one running `roam server --nat userspace` on loopback.
type roamServer struct {
	cmd    *exec.Cmd
	exited <-chan struct{}
	bin    string
	port   int
	page   string // http://127.0.0.1:PORT/
	token  string
	log    *lockedBuffer
}

// newToken returns a fresh token from `roam token`.
func newToken(t testing.TB, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "token").Output()
	if err != nil {
		t.Fatalf("roam token: %v", err)
	}
	tok := strings.TrimSpace(string(out))
	if tok == "" || strings.ContainsAny(tok, " \n") {
		t.Fatalf("roam token printed %q, want one token", out)
	}
	return tok
}

// startRoam starts a roam server on a free 127.0.0.1 port (UDP for QUIC,
// TCP for the page) with one token, and waits until it serves the page
// config and the page over plain HTTP. The page comes from webDirArgs.
func startRoam(t testing.TB, extra ...string) *roamServer {
	t.Helper()
	bin, err := buildRoam()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rs := &roamServer{bin: bin, token: newToken(t, bin)}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("# browser test\n"+rs.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		rs.port = freePort(t)
		rs.page = fmt.Sprintf("http://127.0.0.1:%d/", rs.port)
		rs.log = &lockedBuffer{}
		args := []string{"server",
			"--listen", fmt.Sprintf("127.0.0.1:%d", rs.port),
			"--state-dir", filepath.Join(dir, "state"),
			"--tokens", tokens,
			"--nat", "userspace",
			"--log-level", "debug",
		}
		args = append(args, webDirArgs(t)...)
		args = append(args, extra...)
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = rs.log, rs.log
		rs.cmd, rs.exited = cmd, startProcess(t, cmd)
		ready := waitUntil(15*time.Second, func() bool {
			select {
			case <-rs.exited:
				return true
			default:
			}
			log := rs.log.String()
			if strings.Contains(log, "cannot listen on TCP") {
				return true
			}
			if !strings.Contains(log, "roam server ready") {
				return false
			}
			resp, err := http.Get(rs.page + "roam/config.json")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		// The port was free a moment ago; another process may have taken
		// its UDP or TCP side since. Try another.
		if log := rs.log.String(); attempt < 2 && (strings.Contains(log, "address already in use") || strings.Contains(log, "cannot listen on TCP")) {
			t.Logf("port %d taken meanwhile; retrying:\n%s", rs.port, log)
			rs.stop(t)
			continue
		}
		select {
		case <-rs.exited:
			t.Fatalf("roam server exited:\n%s", rs.log.String())
		default:
		}
		if !ready {
			t.Fatalf("roam server did not serve %sroam/config.json within 15 s:\n%s", rs.page, rs.log.String())
		}
		resp, err := http.Get(rs.page)
		if err != nil {
			t.Fatalf("GET %s: %v", rs.page, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: the server has no page (with ROAM_WEB_DIR=embedded: are the web assets embedded in cmd/roam?)\n%s",
				rs.page, resp.Status, rs.log.String())
		}
		return rs
	}
}

// stop ends the server with SIGTERM (a clean shutdown) and waits for it.
func (rs *roamServer) stop(t testing.TB) {
	t.Helper()
	select {
	case <-rs.exited:
		return
	default:
	}
	rs.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rs.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("roam server still running 10 s after SIGTERM:\n%s", rs.log.String())
	}
}

// waitUntil polls cond every 50 ms until it is true or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// backend is the test's HTTP server on 127.0.0.1, reachable from the page
// only as http://100.96.0.1:PORT through the tunnel.
type backend struct {
	port  int
	nonce string
	conns atomic.Int64 // TCP connections accepted
	mu    sync.Mutex
	hosts []string // Host header and path of every request
}

// body is the exact text /hello serves.
func (b *backend) body() string {
	return "hello from behind the roam server, nonce " + b.nonce + "\nsecond line\n"
}

// url is the tunnel URL of path on the backend.
func (b *backend) url(path string) string {
	return fmt.Sprintf("http://%s:%d%s", gateway4, b.port, path)
}

func (b *backend) seen() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.hosts...)
}

// bigPattern returns n bytes of a fixed pattern (the same every call).
func bigPattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i>>11)
	}
	return p
}

// startBackend serves:
//
//	/hello       text/plain, body()
//	/page.html   a small HTML page carrying the nonce
//	/ref.html    an empty page, for the bench's direct (no tunnel) fetches
//	/stream      "first chunk\n", flushed, then after 300 ms "second chunk\n"
//	/bytes?n=N   N bytes of bigPattern (N ≤ 64 MiB), with Content-Length
func startBackend(t testing.TB) *backend {
	t.Helper()
	nb := make([]byte, 8)
	rand.Read(nb)
	b := &backend{nonce: hex.EncodeToString(nb)}
	var big []byte
	var bigOnce sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, b.body())
	})
	mux.HandleFunc("/page.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html><title>internal</title><h1 id=\"internal\">internal page %s</h1>\n", b.nonce)
	})
	mux.HandleFunc("/ref.html", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, "<!doctype html><title>no tunnel</title><p>reference page for direct fetches\n")
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "first chunk\n")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second chunk\n")
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		var n int
		if _, err := fmt.Sscan(r.URL.Query().Get("n"), &n); err != nil || n < 0 || n > 64<<20 {
			http.Error(w, "n: expected a byte count up to 64 MiB", http.StatusBadRequest)
			return
		}
		bigOnce.Do(func() { big = bigPattern(64 << 20) })
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", fmt.Sprint(n))
		w.Header().Set("Cache-Control", "no-store")
		w.Write(big[:n])
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.port = l.Addr().(*net.TCPAddr).Port
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.hosts = append(b.hosts, r.Host+r.URL.Path)
		b.mu.Unlock()
		mux.ServeHTTP(w, r)
	}), ConnState: func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			b.conns.Add(1)
		}
	}}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return b
}

// startEcho serves a line echo on 127.0.0.1 for the TCP console: every
// line comes back prefixed with "echo: ".
func startEcho(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "echo: %s\n", sc.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// requireGatewayNotLocal fails the test if 100.96.0.1 is an address of this
// host: then a request for it could bypass the tunnel. (The test never
// dials it from the host: it would leave through the default route.)
func requireGatewayNotLocal(t testing.TB) {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == gateway4 {
			t.Fatalf("%v is an address of this host (%v): the test could not tell tunnel traffic from direct", gateway4, a)
		}
	}
}

// browserEnv is one test's world: backend, roam server, browser.
type browserEnv struct {
	t  *testing.T
	be *backend
	rs *roamServer
	wd *webDriver
}

func newBrowserEnv(t *testing.T) *browserEnv {
	requireBrowser(t)
	requireGatewayNotLocal(t)
	e := &browserEnv{t: t, be: startBackend(t)}
	e.rs = startRoam(t)
	e.wd = startBrowser(t)
	t.Cleanup(func() {
		if t.Failed() {
			e.dump()
		}
	})
	return e
}

// dump logs what a failed test needs: the page's status and error, its
// timings, the console log, the server log and chromedriver's log.
func (e *browserEnv) dump() {
	t := e.t
	var state map[string]any
	err := e.wd.exec(`const g = id => { const e = document.getElementById(id); return e ? e.textContent : null; };
return {url: location.href, status: g("status"), error: g("error"), respStatus: g("resp-status"),
  respBody: (g("resp-body") || "").slice(0, 500), tcpOutput: (g("tcp-output") || "").slice(0, 500),
  timings: window.roamTimings || null, api: typeof window.roam};`, &state)
	t.Logf("page state: %v (err %v)", state, err)
	t.Logf("browser console:\n%s", e.wd.consoleLog())
	t.Logf("roam server log:\n%s", e.rs.log.String())
	t.Logf("chromedriver log (tail):\n%s", e.wd.driverLog())
	t.Logf("backend requests: %q", e.be.seen())
}

// waitFor waits for the JS condition, dumping state on timeout.
func (e *browserEnv) waitFor(what, cond string, timeout time.Duration) {
	e.t.Helper()
	e.wd.waitFor(what, cond, timeout, nil)
}

// text returns an element's textContent or fails the test.
func (e *browserEnv) text(id string) string {
	e.t.Helper()
	s, err := e.wd.text(id)
	if err != nil {
		e.t.Fatalf("reading #%s: %v", id, err)
	}
	return s
}

// signIn opens the page and signs in with token; it does not wait for the
// outcome.
func (e *browserEnv) signIn(token string) {
	e.t.Helper()
	e.wd.navigate(e.rs.page)
	e.waitFor("the sign-in form", `document.getElementById("token") && document.getElementById("signin")`, 10*time.Second)
	e.wd.typeInto("#token", token)
	e.wd.click("#signin")
}

// connect signs in with the server's token and waits for "connected".
func (e *browserEnv) connect() {
	e.t.Helper()
	e.signIn(e.rs.token)
	e.waitFor(`#status "connected"`, `document.getElementById("status").textContent === "connected"`, 15*time.Second)
}

// browse enters url in the address bar, clicks go and waits until the
// page shows a response status or an error.
func (e *browserEnv) browse(url string) {
	e.t.Helper()
	// Clear the previous outcome so the wait below sees the new one.
	if err := e.wd.exec(`for (const id of ["resp-status", "resp-body", "error"]) {
  const el = document.getElementById(id); if (el) el.textContent = ""; }`, nil); err != nil {
		e.t.Fatal(err)
	}
	e.wd.typeInto("#url", url)
	e.wd.click("#go")
	// go() disables #go until the body is shown or the error is.
	e.waitFor("a response or an error", `!document.getElementById("go").disabled &&
  (document.getElementById("resp-status").textContent !== "" || document.getElementById("error").textContent !== "")`, 15*time.Second)
}

func TestBrowserFetch(t *testing.T) {
	e := newBrowserEnv(t)
	e.connect()

	// The address bar: exact body and status.
	url := e.be.url("/hello")
	e.browse(url)
	if got := e.text("error"); got != "" {
		t.Fatalf("#error = %q after fetching %s", got, url)
	}
	if got := e.text("resp-status"); got != "200 OK" {
		t.Errorf("#resp-status = %q, want %q", got, "200 OK")
	}
	if got, want := e.text("resp-body"), e.be.body(); got != want {
		t.Errorf("#resp-body = %q, want %q", got, want)
	}
	var timings map[string]float64
	e.wd.exec(`return window.roamTimings;`, &timings)
	t.Logf("page: #resp-status %q, #resp-body %q; backend saw %q; roamTimings %v",
		e.text("resp-status"), e.text("resp-body"), e.be.seen(), timings)
	wantHost := fmt.Sprintf("%s:%d/hello", gateway4, e.be.port)
	if seen := e.be.seen(); len(seen) == 0 || seen[len(seen)-1] != wantHost {
		t.Errorf("backend saw %q, want a request for %q (through the tunnel)", seen, wantHost)
	}

	// The JS API: roam.fetch returns a real Response.
	var res struct {
		IsResponse bool   `json:"isResponse"`
		Status     int    `json:"status"`
		Type       string `json:"type"`
		Body       string `json:"body"`
	}
	err := e.wd.execAsync(`const r = await window.roam.fetch(arguments[0]);
return {isResponse: r instanceof Response, status: r.status, type: r.headers.get("content-type"), body: await r.text()};`,
		&res, e.be.url("/hello?api=1"))
	if err != nil {
		t.Fatalf("roam.fetch: %v", err)
	}
	if !res.IsResponse || res.Status != 200 || res.Body != e.be.body() || !strings.HasPrefix(res.Type, "text/plain") {
		t.Errorf("roam.fetch = %+v; want a Response, 200, text/plain, body %q", res, e.be.body())
	}

	// An HTML page goes to the sandboxed frame.
	e.browse(e.be.url("/page.html"))
	if got := e.text("resp-status"); got != "200 OK" {
		t.Errorf("#resp-status for the HTML page = %q, want 200 OK (error %q)", got, e.text("error"))
	}
	var frame struct {
		Exists     bool   `json:"exists"`
		Hidden     bool   `json:"hidden"`
		HasSandbox bool   `json:"hasSandbox"`
		Sandbox    string `json:"sandbox"`
		Srcdoc     string `json:"srcdoc"`
		Opaque     bool   `json:"opaque"`
		Leaked     bool   `json:"leaked"`
	}
	// Wait for the frame's document: contentDocument is only meaningful
	// once it has loaded.
	e.waitFor("the frame to load", `(() => { const f = document.getElementById("resp-frame");
  return f && !f.hidden && f.srcdoc !== ""; })()`, 5*time.Second)
	if err := e.wd.exec(`const f = document.getElementById("resp-frame");
return f ? {exists: true, hidden: f.hidden, hasSandbox: f.hasAttribute("sandbox"), sandbox: f.getAttribute("sandbox") || "",
  srcdoc: f.srcdoc || "", opaque: f.contentDocument === null,
  leaked: document.getElementById("internal") !== null} : {exists: false};`, &frame); err != nil {
		t.Fatal(err)
	}
	if !frame.Exists || frame.Hidden || !frame.HasSandbox {
		t.Errorf("#resp-frame = %+v; want a shown, sandboxed iframe", frame)
	}
	for _, tok := range strings.Fields(frame.Sandbox) {
		if tok == "allow-scripts" || tok == "allow-same-origin" {
			t.Errorf("#resp-frame sandbox %q has %s: tunnelled HTML must run no script and have an opaque origin", frame.Sandbox, tok)
		}
	}
	if !frame.Opaque {
		t.Error("the page can reach the frame's document: the tunnelled HTML is not in an opaque origin")
	}
	if !strings.Contains(frame.Srcdoc, e.be.nonce) {
		t.Errorf("#resp-frame srcdoc lacks the page's nonce: %.200q", frame.Srcdoc)
	}
	// The HTML is shown as text in #resp-body, never parsed into the page.
	if frame.Leaked {
		t.Error("the tunnelled page's <h1 id=internal> is in Roam's page: HTML was inserted as markup")
	}
}

func TestBrowserTCPConsole(t *testing.T) {
	e := newBrowserEnv(t)
	echo := startEcho(t)
	e.connect()

	e.wd.typeInto("#tcp-target", fmt.Sprintf("%s:%d", gateway4, echo))
	e.wd.click("#tcp-connect")
	line := "ping " + e.be.nonce
	// Sending may need the connection to be open first; the console shows
	// it opened in its output or enables the send button.
	e.waitFor("the TCP console to connect", `(() => { const s = document.getElementById("tcp-send");
  return s && !s.disabled; })()`, 10*time.Second)
	e.wd.typeInto("#tcp-line", line)
	e.wd.click("#tcp-send")
	e.waitFor("the echoed line", fmt.Sprintf(`document.getElementById("tcp-output").textContent.includes(%q)`, "echo: "+line), 10*time.Second)
	e.wd.click("#tcp-close")

	e.waitFor("the console to close", `document.getElementById("tcp-send").disabled`, 5*time.Second)

	// The JS API: roam.dial gives a connection with send, onmessage, close.
	var got string
	err := e.wd.execAsync(`const [host, port, line] = arguments;
const c = await window.roam.dial(host, port);
const got = new Promise((resolve, reject) => {
  let s = "";
  const dec = new TextDecoder();
  c.onmessage = (u8) => { s += dec.decode(u8, {stream: true}); if (s.endsWith("\n")) resolve(s); };
  c.onclose = (err) => reject(new Error("closed before the echo: " + (err && err.message)));
  setTimeout(() => reject(new Error("no echo in 5 s, got " + JSON.stringify(s))), 5000);
});
await c.send(line + "\n");
const s = await got;
c.close();
return s;`, &got, gateway4.String(), echo, "api "+e.be.nonce)
	if err != nil {
		t.Fatalf("roam.dial: %v", err)
	}
	if want := "echo: api " + e.be.nonce + "\n"; got != want {
		t.Errorf("roam.dial echo = %q, want %q", got, want)
	}
}

func TestBrowserWrongToken(t *testing.T) {
	e := newBrowserEnv(t)
	wrong := newToken(t, e.rs.bin) // well-formed, not in the tokens file
	e.signIn(wrong)
	e.waitFor(`#error "Wrong token"`, `document.getElementById("error").textContent.includes("Wrong token")`, 15*time.Second)
	if got := e.text("status"); got == "connected" {
		t.Errorf("#status = %q with a wrong token", got)
	}
	// window.roam is only set for a connected session.
	var state any
	if err := e.wd.exec(`return window.roam ? window.roam.status.state : null;`, &state); err != nil {
		t.Fatal(err)
	}
	if state != nil {
		t.Errorf("window.roam is set (state %v) after a wrong token", state)
	}
}

func TestBrowserRefused(t *testing.T) {
	e := newBrowserEnv(t)
	e.connect()

	// Nothing listens on this port (it was free a moment ago).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().(*net.TCPAddr).Port
	l.Close()

	for _, tt := range []struct {
		name, url string
		want      []string // in #error, lowercased
	}{
		// Loopback is outside every server's flow policy
		// (flow.DenySpecial), even though the backend listens there.
		{"policy", fmt.Sprintf("http://127.0.0.1:%d/hello", e.be.port), []string{"refused", "policy"}},
		// Allowed, but nothing accepts the connection.
		{"closed port", fmt.Sprintf("http://%s:%d/", gateway4, closed), []string{"connection refused"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := tt.url
			e.browse(url)
			shown := e.text("error")
			for _, w := range tt.want {
				if !strings.Contains(strings.ToLower(shown), w) {
					t.Errorf("fetching %s: #error = %q, want it to say %q", url, shown, w)
				}
			}
			if st := e.text("resp-status"); st != "" {
				t.Errorf("fetching %s: #resp-status = %q, want none", url, st)
			}
			if got := e.text("status"); got != "connected" {
				t.Errorf("#status = %q after a failed flow, want still connected", got)
			}
		})
	}
	for _, s := range e.be.seen() {
		if strings.HasPrefix(s, "127.0.0.1:") {
			t.Errorf("backend saw a request for %q, which the policy refuses", s)
		}
	}
}

func TestBrowserServerGone(t *testing.T) {
	e := newBrowserEnv(t)
	e.connect()
	start := time.Now()
	e.rs.stop(t)
	// The page notices the end of the session and says so.
	e.waitFor("the page to notice the server stopped", `document.getElementById("status").textContent !== "connected" &&
  document.getElementById("error").textContent !== ""`, 15*time.Second)
	msg := e.text("error")
	t.Logf("server stopped: after %v #status %q, #error %q", time.Since(start).Round(time.Millisecond), e.text("status"), msg)
	l := strings.ToLower(msg)
	if strings.Contains(e.rs.log.String(), "code=shutdown") {
		// The server said why (SESSION_ERROR shutdown): the page must too.
		if !strings.Contains(l, "shutting down") {
			t.Errorf("#error = %q after the server sent SESSION_ERROR shutdown, want it to say the server is shutting down", msg)
		}
	} else if !strings.Contains(l, "lost") && !strings.Contains(l, "shutting down") {
		t.Errorf("#error = %q after the server stopped, want it to say the session was lost or the server is shutting down", msg)
	}

	// Signing in again fails with "server unreachable", not a hang.
	start = time.Now()
	e.wd.typeInto("#token", e.rs.token)
	e.wd.click("#signin")
	e.waitFor("an error", `document.getElementById("status").textContent !== "connecting…" &&
  document.getElementById("error").textContent !== ""`, 20*time.Second)
	msg = e.text("error")
	t.Logf("server gone: after %v #status %q, #error %q", time.Since(start).Round(time.Millisecond), e.text("status"), msg)
	if got := e.text("status"); got == "connected" {
		t.Fatalf("#status = %q with the server stopped", got)
	}
	if l := strings.ToLower(msg); !strings.Contains(l, "unreachable") && !strings.Contains(l, "no answer") {
		t.Errorf("#error = %q signing in with the server stopped, want \"Server unreachable\" or \"No answer\"", msg)
	}
}

// TestBrowserConcurrentSignIn signs in twice at once through the JS API
// and then closes what connected: every session the server opened must
// end. (A sign-in that another one overtook must not leave its session
// open in the worker.)
func TestBrowserConcurrentSignIn(t *testing.T) {
	e := newBrowserEnv(t)
	e.wd.navigate(e.rs.page)
	e.waitFor("roam.js", `typeof window.Roam === "function"`, 10*time.Second)
	var res struct {
		OK    int      `json:"ok"`
		Codes []string `json:"codes"`
	}
	if err := e.wd.execAsync(`const tok = arguments[0];
const rs = await Promise.allSettled([Roam.connect({token: tok}), Roam.connect({token: tok})]);
const ok = rs.filter(r => r.status === "fulfilled").map(r => r.value);
const codes = rs.filter(r => r.status === "rejected").map(r => String(r.reason && r.reason.code));
for (const r of ok) await r.close();
return {ok: ok.length, codes};`, &res, e.rs.token); err != nil {
		t.Fatal(err)
	}
	t.Logf("two concurrent sign-ins: %d connected, rejected with %q", res.OK, res.Codes)
	if res.OK < 1 {
		t.Errorf("no sign-in of two succeeded (rejections %q)", res.Codes)
	}
	for _, c := range res.Codes {
		if c != "canceled" {
			t.Errorf("a sign-in failed with %q; want only \"canceled\" (overtaken)", c)
		}
	}
	count := func() (opened, ended int) {
		log := e.rs.log.String()
		return strings.Count(log, "browser session opened"), strings.Count(log, "browser session ended")
	}
	if !waitUntil(10*time.Second, func() bool { o, n := count(); return o > 0 && o == n }) {
		o, n := count()
		t.Errorf("the server opened %d browser sessions and saw %d end after the page closed its one: a session leaked", o, n)
	}
}
