//go:build !linux

package systack

import (
	"errors"

	"github.com/roamvpn/roam/datagram"
)

// Stack is the system TCP stack; it exists only on Linux.
type Stack struct{ datagram.Device }

// New fails: the system stack needs Linux (SO_BINDTODEVICE and a TUN with
// virtio-net headers). cfg.Dev is left open.
func New(cfg Config) (*Stack, error) {
	return nil, errors.New("systack: the system stack needs Linux")
}

// Stats returns zero counters.
func (s *Stack) Stats() Stats { return Stats{} }

// Mode returns ModeAuto: there is no Stack to run in a mode.
func (s *Stack) Mode() Mode { return ModeAuto }
