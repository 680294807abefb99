//go:build linux

package web

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestWebDriverSmoke checks the WebDriver harness itself, without Roam: a
// page with an input and a button, typed into and clicked, an async script
// and the console log. When it fails the browser tests cannot tell
// anything about Roam.
func TestWebDriverSmoke(t *testing.T) {
	requireBrowser(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><input id="in"><button id="b" onclick="
document.getElementById('out').textContent = 'got ' + document.getElementById('in').value;
console.log('clicked');">b</button><pre id="out"></pre>`)
	}))
	defer srv.Close()

	wd := startBrowser(t)
	wd.navigate(srv.URL)
	wd.typeInto("#in", "hello  world")
	wd.click("#b")
	wd.waitFor("the click handler", `document.getElementById('out').textContent !== ''`, 5*time.Second, nil)
	if got, err := wd.text("out"); err != nil || got != "got hello  world" {
		t.Fatalf("out = %q, %v; want %q", got, err, "got hello  world")
	}
	var sum int
	if err := wd.execAsync(`await new Promise(r => setTimeout(r, 10)); return arguments[0] + arguments[1];`, &sum, 2, 3); err != nil || sum != 5 {
		t.Fatalf("execAsync = %d, %v; want 5", sum, err)
	}
	if err := wd.execAsync(`throw new Error("boom");`, nil); err == nil {
		t.Fatal("execAsync of a throwing script returned no error")
	}
	if log := wd.consoleLog(); !strings.Contains(log, "clicked") {
		t.Errorf("console log lacks the page's message:\n%s", log)
	}
}
