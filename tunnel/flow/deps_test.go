package flow

import (
	"go/build"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeps enforces the package boundary: flow uses the standard library
// only (no quic-go, no gVisor, no other Roam package), and flowtest adds
// only flow, on every GOOS including js/wasm, so the browser client can
// share it.
func TestDeps(t *testing.T) {
	for _, dir := range []struct {
		path  string
		allow map[string]bool
	}{
		{".", nil},
		{"flowtest", map[string]bool{"github.com/roamvpn/roam/tunnel/flow": true}},
	} {
		for _, goos := range []struct{ os, arch string }{{"linux", "amd64"}, {"darwin", "arm64"}, {"windows", "amd64"}, {"js", "wasm"}} {
			ctx := build.Default
			ctx.GOOS, ctx.GOARCH = goos.os, goos.arch
			pkg, err := ctx.ImportDir(dir.path, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range pkg.Imports {
				first, _, _ := strings.Cut(imp, "/")
				if strings.Contains(first, ".") && !dir.allow[imp] {
					t.Errorf("%s/%s: %s imports %q; only the standard library is allowed", goos.os, goos.arch, pkg.ImportPath, imp)
				}
			}
		}
	}
}

// TestPackageDoc checks that exactly one file of each package carries the
// package doc.
func TestPackageDoc(t *testing.T) {
	for _, dir := range []string{".", "flowtest"} {
		pkg, err := build.ImportDir(dir, 0)
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
