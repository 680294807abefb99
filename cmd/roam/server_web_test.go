package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBadWebFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o600)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "--web-origin", "https://x.example/"}, "--web-origin"},
		{[]string{"server", "--web-origin", "x.example"}, "--web-origin"},
		{[]string{"server", "--web-origin", "ftp://x.example"}, "--web-origin"},
		{[]string{"server", "--web-dir", filepath.Join(dir, "missing")}, "--web-dir"},
		{[]string{"server", "--web-dir", file}, "--web-dir"},
		{[]string{"server", "--web=false", "--web-dir", dir}, "--web=false"},
		{[]string{"server", "--web=maybe"}, "--web"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := runArgs(t, context.Background(), tt.args...)
			if code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and one line mentioning %q", code, stderr, tt.want)
			}
		})
	}
	if f, _, err := parseServerFlags([]string{"--web-origin", "HTTPS://Portal.Example.com", "--web-origin", "http://localhost:3000"}, io.Discard); err != nil ||
		strings.Join(f.webOrigins.vals, " ") != "https://portal.example.com:443 http://localhost:3000" {
		t.Fatalf("--web-origin parsed as %v (%v)", f.webOrigins.vals, err)
	}
}

// TestServerWeb: `roam server --web-dir DIR` serves DIR's page over plain
// HTTP to loopback, publishes the browser certificate hashes (the
// certificate is self-signed), and prints the browser URL.
func TestServerWeb(t *testing.T) {
	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	os.Mkdir(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte("<!doctype html>roam page\n"), 0o644)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("cmd-web-test-token-0123456789\n"), 0o600)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"server", "--listen", addr, "--state-dir", filepath.Join(dir, "state"), "--tokens", tokens,
			"--nat", "userspace", "--log-level", "warn", "--web-dir", www}, &out, &out)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("server exited %d: %s", code, out.String())
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "Browser client:") {
		if time.Now().After(deadline) {
			t.Fatalf("no browser line: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if want := "Browser client: https://" + addr + "/ (on this host also http://" + addr + "/)"; !strings.Contains(out.String(), want) {
		t.Errorf("output %q lacks %q", out.String(), want)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "<!doctype html>roam page\n" {
		t.Fatalf("GET / = %d %q", resp.StatusCode, body)
	}
	resp, err = c.Get("http://" + addr + "/roam/config.json")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		CertHashes []string `json:"cert_hashes"`
		Server     string   `json:"server"`
	}
	err = json.NewDecoder(resp.Body).Decode(&cfg)
	resp.Body.Close()
	if err != nil || len(cfg.CertHashes) != 2 || len(cfg.CertHashes[0]) != 64 || !strings.HasPrefix(cfg.Server, "roam ") {
		t.Fatalf("config.json: %+v (%v)", cfg, err)
	}
}
