package web

import (
	"os/exec"
	"strings"
	"testing"
)

// TestWTAdapter runs the unit test of static/wt.js (the WebTransport
// adapter: read-ahead batching, write backpressure, resets, connect
// failures) under Node with a fake WebTransport. It is skipped without
// node.
func TestWTAdapter(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node on PATH")
	}
	out, err := exec.Command(node, "testdata/wt_test.js", "static/wt.js").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("node testdata/wt_test.js: %v\n%s", err, out)
	}
}
