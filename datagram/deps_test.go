package datagram

import (
	"go/build"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeps enforces the package boundary: the standard library and
// quic-go's quicvarint only (never quic-go itself, never another Roam
// package), for every GOOS the package builds for, including js/wasm.
func TestDeps(t *testing.T) {
	for _, goos := range []struct{ os, arch string }{{"linux", "amd64"}, {"darwin", "arm64"}, {"windows", "amd64"}, {"js", "wasm"}} {
		ctx := build.Default
		ctx.GOOS, ctx.GOARCH = goos.os, goos.arch
		pkg, err := ctx.ImportDir(".", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range pkg.Imports {
			first, _, _ := strings.Cut(imp, "/")
			if strings.Contains(first, ".") && imp != "github.com/quic-go/quic-go/quicvarint" {
				t.Errorf("%s/%s: datagram imports %q; only the standard library and quicvarint are allowed", goos.os, goos.arch, imp)
			}
		}
	}
}

// TestPackageDoc checks that exactly one file carries the package doc.
func TestPackageDoc(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
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
		t.Fatalf("package doc in %v, want exactly one file", docs)
	}
}
