//go:build race

package datagram

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// allocation counts of pool users are meaningless under -race.
const raceEnabled = true
