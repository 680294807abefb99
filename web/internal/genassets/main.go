// Command genassets builds the browser client's generated assets: it
// compiles web/wasm to web/static/roam.wasm (GOOS=js GOARCH=wasm,
// -trimpath, -ldflags=-s) and copies wasm_exec.js from the Go release
// ($(go env GOROOT)/lib/wasm, misc/wasm before Go 1.24) beside it, so
// that the loader always matches the compiler. `go generate ./web` runs
// it from the web directory; -dir sets another one.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	dir := flag.String("dir", ".", "the web directory (holding static/ and wasm/)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("genassets: ")
	if err := run(*dir); err != nil {
		log.Fatal(err)
	}
}

func run(dir string) error {
	static := filepath.Join(dir, "static")
	if _, err := os.Stat(filepath.Join(dir, "wasm")); err != nil {
		return fmt.Errorf("-dir %q: no wasm directory: %w", dir, err)
	}
	out := filepath.Join(static, "roam.wasm")
	tmp := out + ".tmp"
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", tmp, "./wasm")
	build.Dir = dir
	build.Env = append(os.Environ(), "GOOS=js", "GOARCH=wasm")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("building roam.wasm: %w", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}

	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return fmt.Errorf("go env GOROOT: %w", err)
	}
	root := strings.TrimSpace(string(goroot))
	var src []byte
	for _, p := range []string{"lib/wasm/wasm_exec.js", "misc/wasm/wasm_exec.js"} {
		if src, err = os.ReadFile(filepath.Join(root, p)); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("wasm_exec.js not found in %s/lib/wasm or misc/wasm: %w", root, err)
	}
	dst := filepath.Join(static, "wasm_exec.js")
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, src) {
		return nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.WriteFile(dst, src, 0o644)
}
