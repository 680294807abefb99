// Package web is Roam's browser client: a page, a JavaScript API and a Go
// program compiled to WebAssembly that reach private services behind a
// Roam server from a browser, with nothing installed.
//
//	page (index.html, app.js) ── roam.js ──postMessage── worker.js
//	                                                       │ roam.wasm (web/wasm, Go)
//	                                                       │ wt.js (WebTransport adapter)
//	                                                       ╰── WebTransport session ── roam server ── TCP ── service
//
// The Go client logic (sign-in, flows, HTTP over flows) is in web/client
// and builds for every GOOS; web/wasm adds the browser transport. The
// wire protocol is tunnel/webproto.
//
// Assets holds the files the server serves at "/": static/, with
// index.html at the root. roam.wasm and wasm_exec.js in it are built, not
// committed: run `go generate ./web` before building the server, or the
// page reports that roam.wasm is missing.
package web

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// Assets is the page and its scripts, with index.html at the root.
var Assets fs.FS = mustSub(static, "static")

func mustSub(f fs.FS, dir string) fs.FS {
	s, err := fs.Sub(f, dir)
	if err != nil {
		panic(err) // dir is a constant path inside the embedded tree
	}
	return s
}
