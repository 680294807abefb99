package tunnel

import (
	"net/netip"

	"github.com/roamvpn/roam/auth"
)

// ReloadConfig is what Server.Reload swaps in while sessions keep running.
type ReloadConfig struct {
	// Auth replaces ServerConfig.Auth. Required.
	Auth *auth.Authenticator
	// Routes replaces ServerConfig.Routes (nil means DefaultRoutes).
	Routes []netip.Prefix
}
