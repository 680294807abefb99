//go:build linux

package web

// A minimal W3C WebDriver client for the browser tests: it starts
// Debian's chromedriver, which starts a headless chromium, and speaks the
// WebDriver HTTP/JSON protocol to it with net/http. Only what the tests use
// is here: navigate, find, type, click, run a script (sync or async), and
// read the browser console log.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Where the browser and its driver live (Debian: chromium, chromium-driver).
var (
	chromiumPath     = envOr("ROAM_CHROMIUM", "/usr/bin/chromium")
	chromedriverPath = envOr("ROAM_CHROMEDRIVER", "chromedriver")
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// requireBrowser skips the test when chromium or chromedriver is missing,
// unless CI=true, where that is a failure.
func requireBrowser(t testing.TB) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath(chromiumPath); err != nil {
		why = "needs chromium (apt-get install chromium chromium-driver): " + err.Error()
	} else if _, err := exec.LookPath(chromedriverPath); err != nil {
		why = "needs chromedriver (apt-get install chromium-driver): " + err.Error()
	} else if _, err := exec.LookPath("go"); err != nil {
		why = "needs go on PATH to build roam"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI=true, so this is a failure, not a skip", why)
	}
	t.Skip(why)
}

// lockedBuffer collects a child process's output for failure dumps.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProcess starts cmd in its own process group and registers a cleanup
// that kills that group (the process and anything it started that stayed
// in the group) and waits for it. The returned channel is closed when the
// process has exited.
func startProcess(t testing.TB, cmd *exec.Cmd) <-chan struct{} {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
			// Exited on its own long ago: its group id may be reused
			// by now, so signal nothing.
			return
		default:
		}
		pid := cmd.Process.Pid
		syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			syscall.Kill(-pid, syscall.SIGKILL)
			<-done
		}
		// Children that outlived their parent in the group (chromium
		// under chromedriver) keep the group id alive until they go.
		syscall.Kill(-pid, syscall.SIGKILL)
	})
	return done
}

// freePort returns a port number that is free on 127.0.0.1 for both TCP
// and UDP at the time of the call.
func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP on 127.0.0.1")
	return 0
}

// webDriver is one chromedriver process with one browser session.
type webDriver struct {
	t       testing.TB
	base    string // http://127.0.0.1:PORT
	session string // session URL prefix: base/session/ID
	hc      *http.Client
	log     *lockedBuffer // chromedriver's own log
	logPath string
}

// elementKey is the W3C web element identifier key.
const elementKey = "element-6066-11e4-a52e-4f735466cecf"

// chromiumArgs are the flags QUIC-FACTS.md lists for headless chromium
// with WebTransport (no --disable-quic; no QUIC flags are needed with
// serverCertificateHashes).
func chromiumArgs(userDataDir string) []string {
	return []string{
		"--headless=new",
		"--no-sandbox",
		"--disable-gpu",
		"--no-first-run",
		"--disable-background-networking",
		"--disable-component-update",
		"--disable-sync",
		"--disable-dev-shm-usage",
		"--user-data-dir=" + userDataDir,
	}
}

// startBrowser starts chromedriver and a headless chromium session with a
// fresh profile. Cleanup deletes the session (chromium quits) and kills
// the driver's process group.
func startBrowser(t testing.TB) *webDriver {
	t.Helper()
	dir := t.TempDir() // registered first, so removed after the kills below
	port := freePort(t)
	wd := &webDriver{
		t:       t,
		base:    fmt.Sprintf("http://127.0.0.1:%d", port),
		hc:      &http.Client{Timeout: 70 * time.Second},
		log:     &lockedBuffer{},
		logPath: filepath.Join(dir, "chromedriver.log"),
	}
	cmd := exec.Command(chromedriverPath, fmt.Sprintf("--port=%d", port), "--log-path="+wd.logPath)
	cmd.Stdout, cmd.Stderr = wd.log, wd.log
	startProcess(t, cmd)

	deadline := time.Now().Add(10 * time.Second)
	for {
		var st struct {
			Ready bool `json:"ready"`
		}
		if err := wd.call("GET", wd.base+"/status", nil, &st); err == nil && st.Ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chromedriver not ready after 10 s\n%s", wd.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	caps := map[string]any{
		"capabilities": map[string]any{
			"alwaysMatch": map[string]any{
				"browserName":      "chrome",
				"pageLoadStrategy": "normal",
				"timeouts":         map[string]int{"script": 60000, "pageLoad": 20000, "implicit": 0},
				"goog:chromeOptions": map[string]any{
					"binary": chromiumPath,
					"args":   chromiumArgs(filepath.Join(dir, "profile")),
				},
				"goog:loggingPrefs": map[string]string{"browser": "ALL"},
			},
		},
	}
	var sess struct {
		SessionID string `json:"sessionId"`
	}
	if err := wd.call("POST", wd.base+"/session", caps, &sess); err != nil {
		t.Fatalf("creating a chromium session: %v\nchromedriver log:\n%s", err, wd.driverLog())
	}
	wd.session = wd.base + "/session/" + sess.SessionID
	t.Cleanup(func() {
		// Quits chromium; the process-group kill is the fallback.
		hc := &http.Client{Timeout: 5 * time.Second}
		req, _ := http.NewRequest("DELETE", wd.session, nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	return wd
}

// driverLog is the tail of chromedriver's log file.
func (wd *webDriver) driverLog() string {
	b, _ := os.ReadFile(wd.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return wd.log.String() + string(b)
}

// wdError is an error a WebDriver command returned.
type wdError struct {
	Error      string `json:"error"`
	Message    string `json:"message"`
	Stacktrace string `json:"stacktrace"`
}

// call does one WebDriver command and decodes the "value" of the answer
// into out (if not nil).
func (wd *webDriver) call(method, url string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := wd.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("webdriver %s %s: HTTP %d: %.200s", method, url, resp.StatusCode, b)
	}
	if resp.StatusCode != http.StatusOK {
		var e wdError
		json.Unmarshal(env.Value, &e)
		return fmt.Errorf("webdriver %s %s: %s: %s", method, strings.TrimPrefix(url, wd.session), e.Error, firstLine(e.Message))
	}
	if out == nil {
		return nil
	}
	// Session creation answers {"value": {"sessionId": ..., "capabilities": ...}}.
	return json.Unmarshal(env.Value, out)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// navigate loads url and waits for its load event.
func (wd *webDriver) navigate(url string) {
	wd.t.Helper()
	if err := wd.call("POST", wd.session+"/url", map[string]string{"url": url}, nil); err != nil {
		wd.t.Fatalf("navigating to %s: %v", url, err)
	}
}

// element returns the id of the element matched by the CSS selector.
func (wd *webDriver) element(css string) (string, error) {
	var el map[string]string
	if err := wd.call("POST", wd.session+"/element", map[string]string{"using": "css selector", "value": css}, &el); err != nil {
		return "", err
	}
	return el[elementKey], nil
}

// typeInto clears the element matched by css and types text into it.
func (wd *webDriver) typeInto(css, text string) {
	wd.t.Helper()
	id, err := wd.element(css)
	if err != nil {
		wd.t.Fatalf("finding %s: %v", css, err)
	}
	if err := wd.call("POST", wd.session+"/element/"+id+"/clear", map[string]any{}, nil); err != nil {
		wd.t.Fatalf("clearing %s: %v", css, err)
	}
	if err := wd.call("POST", wd.session+"/element/"+id+"/value", map[string]string{"text": text}, nil); err != nil {
		wd.t.Fatalf("typing into %s: %v", css, err)
	}
}

// click clicks the element matched by css.
func (wd *webDriver) click(css string) {
	wd.t.Helper()
	id, err := wd.element(css)
	if err != nil {
		wd.t.Fatalf("finding %s: %v", css, err)
	}
	if err := wd.call("POST", wd.session+"/element/"+id+"/click", map[string]any{}, nil); err != nil {
		wd.t.Fatalf("clicking %s: %v", css, err)
	}
}

// exec runs script synchronously in the page (arguments are args) and
// decodes its return value into out.
func (wd *webDriver) exec(script string, out any, args ...any) error {
	if args == nil {
		args = []any{}
	}
	return wd.call("POST", wd.session+"/execute/sync", map[string]any{"script": script, "args": args}, out)
}

// execAsync runs an async function body in the page: script may use
// await, and its return value (JSON-serialisable) is decoded into out. A
// thrown error is returned as an error carrying its message.
func (wd *webDriver) execAsync(script string, out any, args ...any) error {
	if args == nil {
		args = []any{}
	}
	wrapped := `const done = arguments[arguments.length - 1];
const args = Array.prototype.slice.call(arguments, 0, arguments.length - 1);
(async function () {` + script + `}).apply(null, args).then(
  v => done({ok: true, value: v === undefined ? null : v}),
  e => done({ok: false, error: String(e && e.stack || e)}));`
	var res struct {
		OK    bool            `json:"ok"`
		Value json.RawMessage `json:"value"`
		Error string          `json:"error"`
	}
	if err := wd.call("POST", wd.session+"/execute/async", map[string]any{"script": wrapped, "args": args}, &res); err != nil {
		return err
	}
	if !res.OK {
		return errors.New(res.Error)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(res.Value, out)
}

// text returns the textContent of the element with id, "" if it does not
// exist, and the error of the script call.
func (wd *webDriver) text(id string) (string, error) {
	var s string
	err := wd.exec(`const e = document.getElementById(arguments[0]); return e ? e.textContent : "";`, &s, id)
	return s, err
}

// waitFor polls cond (a JS expression) every 50 ms until it is truthy, or
// fails the test after timeout with the page state and logs.
func (wd *webDriver) waitFor(what, cond string, timeout time.Duration, dump func()) {
	wd.t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		var ok bool
		lastErr = wd.exec("return !!("+cond+");", &ok)
		if lastErr == nil && ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if dump != nil {
		dump()
	}
	wd.t.Fatalf("timed out after %v waiting for %s (%s); last script error: %v", timeout, what, cond, lastErr)
}

// consoleLog returns the browser console messages collected since the last
// call (goog:loggingPrefs browser=ALL), one per line.
func (wd *webDriver) consoleLog() string {
	var entries []struct {
		Level     string  `json:"level"`
		Message   string  `json:"message"`
		Timestamp float64 `json:"timestamp"`
	}
	err := wd.call("POST", wd.session+"/se/log", map[string]string{"type": "browser"}, &entries)
	if err != nil {
		// Older chromedrivers only have the legacy endpoint.
		if err2 := wd.call("POST", wd.session+"/log", map[string]string{"type": "browser"}, &entries); err2 != nil {
			return fmt.Sprintf("(no console log: %v; %v)", err, err2)
		}
	}
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%s %s\n", e.Level, e.Message)
	}
	return b.String()
}
