package flowstack

import (
	"go/build"
	"go/parser"
	"go/token"
	"path/filepath"
	"testing"
)

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
