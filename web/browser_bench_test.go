//go:build linux

package web

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBrowserBench measures the browser client in headless chromium on
// loopback (cmd/bench/browser.sh runs it): page load → connected, time to
// first byte of a tunnelled fetch (first fetch of a session, later
// fetches, and the first chunk of a streamed body), and the download
// throughput of a 20 MiB body through roam.fetch, against the same body
// fetched directly by the page with no tunnel. It prints one summary line
// starting with "BENCH browser:". Medians of ROAM_BENCH_RUNS (default 5)
// runs each. It only runs with ROAM_BROWSER_BENCH=1: it is a measurement,
// not a timed test.
func TestBrowserBench(t *testing.T) {
	if os.Getenv("ROAM_BROWSER_BENCH") != "1" {
		t.Skip("a benchmark: run with ROAM_BROWSER_BENCH=1 (cmd/bench/browser.sh)")
	}
	runs := envInt(t, "ROAM_BENCH_RUNS", 5)
	size := envInt(t, "ROAM_BENCH_BYTES", 20<<20)
	e := newBrowserEnv(t)

	// Page load → connected, with the sign-in clicked by script as soon as
	// the page has loaded; each run is a fresh navigation (a new worker and
	// WebTransport session), and the first fetch of the session.
	var loadConn, clickConn, openConn, cfgLoaded, firstFetch []float64
	for i := range runs {
		e.wd.navigate(e.rs.page)
		e.waitFor("the sign-in form", `document.getElementById("token") && document.getElementById("signin")`, 10*time.Second)
		var clicked float64
		if err := e.wd.exec(`const tok = document.getElementById("token");
tok.value = arguments[0];
tok.dispatchEvent(new Event("input", {bubbles: true}));
const t = performance.now();
document.getElementById("signin").click();
return t;`, &clicked, e.rs.token); err != nil {
			t.Fatal(err)
		}
		e.waitFor(`#status "connected"`, `document.getElementById("status").textContent === "connected"`, 15*time.Second)
		var tm map[string]float64
		if err := e.wd.exec(`return window.roamTimings;`, &tm); err != nil {
			t.Fatalf("window.roamTimings: %v", err)
		}
		if tm["connected"] <= 0 {
			t.Fatalf("window.roamTimings = %v: no connected time", tm)
		}
		loadConn = append(loadConn, tm["connected"])
		if tm["signin"] > 0 {
			clicked = tm["signin"] // the page's own mark, inside the click handler
		}
		clickConn = append(clickConn, tm["connected"]-clicked)
		// The session itself: from when both the click and the worker
		// (roam.wasm running) were there.
		openConn = append(openConn, tm["connected"]-max(clicked, tm["workerReady"]))
		cfgLoaded = append(cfgLoaded, tm["configLoaded"])
		var ff float64
		if err := e.wd.execAsync(`const t0 = performance.now();
const r = await window.roam.fetch(arguments[0]);
const rd = r.body.getReader();
const first = await rd.read();
const t1 = performance.now();
while (!(await rd.read()).done) {}
if (first.done) throw new Error("empty body");
return t1 - t0;`, &ff, e.be.url(fmt.Sprintf("/hello?first=%d", i))); err != nil {
			t.Fatalf("first roam.fetch of a session: %v", err)
		}
		firstFetch = append(firstFetch, ff)
		t.Logf("run %d: timings %v, sign-in→connected %.1f ms, first fetch %.1f ms", i, tm, tm["connected"]-clicked, ff)
	}

	// TTFB of later fetches in the session: on the kept-alive connection,
	// and on a new flow each (Connection: close; the backend counts its
	// connections to show it). And of a streamed body: the backend flushes
	// "first chunk" and sends the rest 300 ms later.
	ttfbJS := `const [url, hdrs] = arguments;
const t0 = performance.now();
const r = await window.roam.fetch(url, {headers: hdrs});
const rd = r.body.getReader();
const first = await rd.read();
const t1 = performance.now();
while (!(await rd.read()).done) {}
return [t1 - t0, performance.now() - t0];`
	var ttfb, ttfbNew, streamFirst, streamAll []float64
	for i := range runs {
		var r [2]float64
		if err := e.wd.execAsync(ttfbJS, &r, e.be.url(fmt.Sprintf("/hello?warm=%d", i)), map[string]string{}); err != nil {
			t.Fatalf("roam.fetch: %v", err)
		}
		ttfb = append(ttfb, r[0])
	}
	// The first Connection: close request may still go on the kept-alive
	// connection (and ends it); not measured.
	if err := e.wd.execAsync(ttfbJS, nil, e.be.url("/hello?drop"), map[string]string{"Connection": "close"}); err != nil {
		t.Fatalf("roam.fetch: %v", err)
	}
	conns0 := e.be.conns.Load()
	for i := range runs {
		var r [2]float64
		if err := e.wd.execAsync(ttfbJS, &r, e.be.url(fmt.Sprintf("/hello?new=%d", i)), map[string]string{"Connection": "close"}); err != nil {
			t.Fatalf("roam.fetch: %v", err)
		}
		ttfbNew = append(ttfbNew, r[0])
	}
	if n := e.be.conns.Load() - conns0; n < int64(runs) {
		t.Errorf("%d fetches with Connection: close made %d backend connections, want one each", runs, n)
	}
	for i := range runs {
		var r [2]float64
		if err := e.wd.execAsync(`const t0 = performance.now();
const r = await window.roam.fetch(arguments[0]);
const rd = r.body.getReader();
const dec = new TextDecoder();
const first = await rd.read();
const t1 = performance.now();
let text = dec.decode(first.value, {stream: true});
for (;;) { const c = await rd.read(); if (c.done) break; text += dec.decode(c.value, {stream: true}); }
if (text !== "first chunk\nsecond chunk\n") throw new Error("stream body " + JSON.stringify(text));
return [t1 - t0, performance.now() - t0];`, &r, e.be.url(fmt.Sprintf("/stream?i=%d", i))); err != nil {
			t.Fatalf("roam.fetch of a streamed body: %v", err)
		}
		streamFirst = append(streamFirst, r[0])
		streamAll = append(streamAll, r[1])
	}

	// Throughput: roam.fetch vs a page's own fetch of the same body from
	// 127.0.0.1 (no tunnel). The first tunnelled download is checked
	// byte for byte (SHA-256), outside the timed runs.
	sum := sha256.Sum256(bigPattern(64 << 20)[:size])
	want := hex.EncodeToString(sum[:])
	var got string
	if err := e.wd.execAsync(`const r = await window.roam.fetch(arguments[0]);
const b = await r.arrayBuffer();
const h = new Uint8Array(await crypto.subtle.digest("SHA-256", b));
return Array.from(h, x => x.toString(16).padStart(2, "0")).join("");`, &got, e.be.url(fmt.Sprintf("/bytes?n=%d&check=1", size))); err != nil {
		t.Fatalf("roam.fetch of %d bytes: %v", size, err)
	}
	if got != want {
		t.Fatalf("SHA-256 of the %d bytes through roam.fetch = %s, want %s", size, got, want)
	}
	download := func(api, url string) float64 {
		t.Helper()
		var ms float64
		if err := e.wd.execAsync(`const [api, url, size] = arguments;
const t0 = performance.now();
const r = await (api === "roam" ? window.roam.fetch(url) : fetch(url, {cache: "no-store"}));
const rd = r.body.getReader();
let n = 0;
for (;;) { const c = await rd.read(); if (c.done) break; n += c.value.byteLength; }
const t = performance.now() - t0;
if (n !== size) throw new Error("got " + n + " bytes, want " + size);
return t;`, &ms, api, url, size); err != nil {
			t.Fatalf("%s fetch of %s: %v", api, url, err)
		}
		return ms
	}
	var tunnelMs, directMs []float64
	for i := range runs {
		tunnelMs = append(tunnelMs, download("roam", e.be.url(fmt.Sprintf("/bytes?n=%d&run=%d", size, i))))
		t.Logf("run %d: %d bytes via roam.fetch %.0f ms", i, size, tunnelMs[i])
	}
	// The reference runs in a plain page of the backend's own origin: the
	// Roam page's CSP (connect-src 'self') rightly forbids fetching
	// another origin directly.
	ref := fmt.Sprintf("http://127.0.0.1:%d", e.be.port)
	e.wd.navigate(ref + "/ref.html")
	for i := range runs {
		directMs = append(directMs, download("page", fmt.Sprintf("%s/bytes?n=%d&run=%d", ref, size, i)))
		t.Logf("run %d: %d bytes by the page's own fetch %.0f ms", i, size, directMs[i])
	}

	rate := func(ms float64) (mbs, mbit float64) {
		mbs = float64(size) / 1e6 / (ms / 1e3)
		return mbs, mbs * 8
	}
	tMBs, tMbit := rate(median(tunnelMs))
	dMBs, dMbit := rate(median(directMs))
	fmt.Printf("BENCH browser: %s, median of %d: load→connected %.0f ms (config %.0f ms, sign-in→connected %.0f ms, session open %.0f ms); "+
		"TTFB first fetch of a session %.1f ms, later: kept-alive %.1f ms, new flow %.1f ms, streamed first chunk %.1f ms (all %.0f ms, 300 ms gap); "+
		"%.1f MiB via roam.fetch %.0f ms = %.1f MB/s (%.0f Mbit/s); direct page fetch %.0f ms = %.0f MB/s (%.0f Mbit/s)\n",
		chromiumVersion(), runs, median(loadConn), median(cfgLoaded), median(clickConn), median(openConn),
		median(firstFetch), median(ttfb), median(ttfbNew), median(streamFirst), median(streamAll),
		float64(size)/(1<<20), median(tunnelMs), tMBs, tMbit, median(directMs), dMBs, dMbit)
}

func envInt(t *testing.T, key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || (key == "ROAM_BENCH_BYTES" && n > 64<<20) {
		t.Fatalf("%s=%q: expected a positive integer (bytes at most 64 MiB)", key, v)
	}
	return n
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// chromiumVersion is "Chromium 156.0.8078.114" or the like.
func chromiumVersion() string {
	out, err := exec.Command(chromiumPath, "--version").Output()
	if err != nil {
		return "chromium ?"
	}
	v, _, _ := strings.Cut(strings.TrimSpace(string(out)), " built on")
	return v
}
