// Package check holds the offline checks of Roam's deploy/ folder: the
// Kubernetes manifests decoded strictly into the k8s.io/api types (unknown
// or misspelt fields are errors), the container file's lint, and the
// example TOML configs. It is its own module so the Kubernetes API modules
// never enter Roam's go.mod; run it with `go -C deploy/check test ./...`.
package check
