//go:build race

package fec

// raceEnabled: the race detector changes allocation counts.
const raceEnabled = true
