//go:build !linux

package dns

import "errors"

// resolvedLink is not available off Linux.
type resolvedLink struct{}

func resolvedInUse(string) (bool, string) { return false, "systemd-resolved is Linux-only" }

func configureResolved(int, *Config) (*resolvedLink, error) {
	return nil, errors.New("dns: systemd-resolved is Linux-only")
}

func (*resolvedLink) revert() error { return nil }

func refuseHostFile(string) error { return nil }
