//go:build race

package tunnel

// raceEnabled: the race detector allows at most 8128 live goroutines,
// fewer than BenchmarkIdleSessionMemory's 1000 sessions need.
const raceEnabled = true
