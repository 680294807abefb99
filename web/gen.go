package web

// Build static/roam.wasm (GOOS=js GOARCH=wasm, -trimpath -ldflags=-s) and
// copy the Go release's wasm_exec.js next to it.
//go:generate go run ./internal/genassets
