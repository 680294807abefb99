package web

import (
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// wasmEnv is the environment of a GOOS=js GOARCH=wasm go command.
func wasmEnv() []string { return append(os.Environ(), "GOOS=js", "GOARCH=wasm", "CGO_ENABLED=0") }

func wasmGoTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	return p
}

// TestWasmDeps enforces the browser build's boundary: the js/wasm program
// must not pull in the host side of Roam (TUN, netlink, nftables, gVisor,
// wireguard) or quic-go (the browser has its own QUIC; only quicvarint is
// shared).
func TestWasmDeps(t *testing.T) {
	cmd := exec.Command(wasmGoTool(t), "list", "-deps", "./wasm")
	cmd.Env = wasmEnv()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./wasm (js/wasm): %v\n%s", err, exitStderr(err))
	}
	forbidden := []string{
		"github.com/roamvpn/roam/tun",
		"github.com/roamvpn/roam/tunnel", // except the portable packages below
		"github.com/vishvananda/",
		"github.com/mdlayher/",
		"github.com/google/nftables",
		"golang.org/x/sys/unix",
		"gvisor.dev/",
		"golang.zx2c4.com/",
		"github.com/quic-go/",
	}
	allowed := map[string]bool{
		"github.com/roamvpn/roam/tunnel/flow":     true,
		"github.com/roamvpn/roam/tunnel/webproto": true,
		"github.com/quic-go/quic-go/quicvarint":   true,
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list printed %d packages; want the whole graph", len(deps))
	}
	for _, d := range deps {
		if allowed[d] {
			continue
		}
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, strings.TrimSuffix(f, "/")+"/") || (strings.HasSuffix(f, "/") && strings.HasPrefix(d, f)) {
				t.Errorf("the js/wasm build of web/wasm imports %s (forbidden: %s)", d, f)
			}
		}
	}
}

// TestWasmVet builds and vets every package of web/ for js/wasm.
func TestWasmVet(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the wasm program")
	}
	cmd := exec.Command(wasmGoTool(t), "vet", "./...")
	cmd.Env = wasmEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("GOOS=js GOARCH=wasm go vet ./web/...: %v\n%s", err, out)
	}
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// TestPackageDoc checks that exactly one file of each package under web/
// carries the package doc (for js/wasm, where web/wasm builds).
func TestPackageDoc(t *testing.T) {
	ctx := build.Default
	ctx.GOOS, ctx.GOARCH = "js", "wasm"
	for _, dir := range []string{".", "client", "wasm", "internal/genassets"} {
		pkg, err := ctx.ImportDir(dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		fset := token.NewFileSet()
		var docs []string
		for _, name := range pkg.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(pkg.Dir, name), nil, parser.ParseComments|parser.PackageClauseOnly)
			if err != nil {
				t.Fatal(err)
			}
			if f.Doc != nil {
				docs = append(docs, name)
			}
		}
		if len(docs) != 1 {
			t.Errorf("%s: package doc in %v, want exactly one file", dir, docs)
		}
	}
}

// TestAssets checks that the embedded tree has the page at its root and
// every script it loads; roam.wasm and wasm_exec.js are built and may be
// missing (the page reports it).
func TestAssets(t *testing.T) {
	for _, name := range []string{"index.html", "app.js", "roam.js", "worker.js", "wt.js"} {
		b, err := fs.ReadFile(Assets, name)
		if err != nil || len(b) == 0 {
			t.Errorf("Assets: %s: %v (%d bytes)", name, err, len(b))
		}
	}
	index, _ := fs.ReadFile(Assets, "index.html")
	for _, id := range []string{"token", "signin", "status", "rtt", "bytes", "error", "url", "go", "resp-status", "resp-headers", "resp-body", "resp-frame", "tcp-target", "tcp-connect", "tcp-line", "tcp-send", "tcp-output", "tcp-close"} {
		if !strings.Contains(string(index), `id="`+id+`"`) {
			t.Errorf("index.html has no element id=%q", id)
		}
	}
	if _, err := fs.Stat(Assets, "roam.wasm"); err != nil {
		t.Logf("roam.wasm is not built (run go generate ./web): %v", err)
	}
}
