// Command wasm is Roam's browser client: the Go program (roam.wasm) that
// runs in a Dedicated Worker (static/worker.js). It opens the WebTransport
// session through the JS adapter static/wt.js, signs in with package
// web/client, and serves the page's requests (static/roam.js: connect,
// fetch, dial) that the worker forwards to it. Build it with
// `go generate ./web`, which writes web/static/roam.wasm.
//
// Worker → Go: worker.js calls self.roamHandle(message) for every message
// the page posts. Go → page: Go calls self.roamPost(op, id, payload),
// which posts {op, id, json} or, for a Uint8Array payload, {op, id, data}
// with the buffer transferred.
package main

import (
	"log/slog"
	"os"
	"syscall/js"
)

func main() {
	level := new(slog.LevelVar)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	b := newBridge(newTransport(), log, level)
	js.Global().Set("roamHandle", js.FuncOf(b.onMessage))
	js.Global().Call("roamGoReady")
	select {} // serve callbacks forever
}
