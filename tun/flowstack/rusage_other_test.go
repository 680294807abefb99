//go:build !unix

package flowstack

import "time"

// cpuTime is not measured on this OS.
func cpuTime() time.Duration { return 0 }
