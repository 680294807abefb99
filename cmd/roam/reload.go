package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/tunnel"
)

// reloadable are the server flags a reload applies; every other flag needs
// a restart to change (listen, pools, NAT, TUN, certificate, ...).
var reloadable = map[string]bool{"config": true, "tokens": true, "token-key": true, "revocations": true, "route": true}

// tokensFile is the plain tokens file the server reads.
func (f *serverFlags) tokensFile() string {
	if f.tokens != "" {
		return f.tokens
	}
	return filepath.Join(f.stateDir, "tokens")
}

// revocationsFile is the revocation list the server reads.
func (f *serverFlags) revocationsFile() string {
	if f.revocations != "" {
		return f.revocations
	}
	return filepath.Join(f.stateDir, auth.RevocationsFileName)
}

// tokenKeyFiles are the public key files whose signed tokens the server
// accepts.
func (f *serverFlags) tokenKeyFiles() []string {
	if len(f.tokenKeys.vals) > 0 {
		return f.tokenKeys.vals
	}
	return []string{filepath.Join(f.stateDir, auth.PublicKeyFileName)}
}

// authSummary describes what an Authenticator was built from, for the log.
type authSummary struct {
	tokens, keys, revoked, users int
}

// buildAuth builds the server's Authenticator from the files and the
// config file's users that f names: the plain tokens file, the public keys
// of signed tokens, the revocation list. It is used at start and for every
// reload. An empty tokens file is allowed (signed tokens only). Errors
// name the file (and line).
func buildAuth(f *serverFlags) (*auth.Authenticator, authSummary, error) {
	var sum authSummary
	cfg := auth.AuthenticatorConfig{Users: f.users}
	tokens, err := auth.LoadTokens(f.tokensFile())
	switch {
	case errors.Is(err, auth.ErrNoTokens):
		// Only signed tokens.
	case err != nil:
		return nil, sum, err
	default:
		cfg.Tokens = tokens
		sum.tokens = tokens.Len()
	}
	for _, file := range f.tokenKeyFiles() {
		keys, err := auth.LoadPublicKeys(file)
		if err != nil {
			return nil, sum, err
		}
		cfg.PublicKeys = append(cfg.PublicKeys, keys...)
	}
	if cfg.Revoked, err = auth.LoadRevocations(f.revocationsFile()); err != nil {
		return nil, sum, err
	}
	sum.keys, sum.revoked, sum.users = len(cfg.PublicKeys), cfg.Revoked.Len(), len(f.users)
	return auth.NewAuthenticator(cfg), sum, nil
}

// reloader re-reads the server's configuration: the command line again,
// the config file, the tokens file, the public keys and the revocations.
type reloader struct {
	args    []string     // the server's command line (flags still override the file)
	running *serverFlags // what the server started with
	srv     interface {
		Reload(tunnel.ReloadConfig) error
	}
	log *slog.Logger

	mu sync.Mutex // serializes reloads
}

// reload builds a new Authenticator and routes and swaps them into the
// server. On any error nothing changes and the error (naming file and
// line) is returned. Settings that need a restart are logged, not applied.
func (r *reloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, _, err := parseServerFlags(r.args, io.Discard)
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			return errors.New(ue.msg)
		}
		return err
	}
	restart := restartNeeded(r.running, f)
	f.stateDir = r.running.stateDir // the default files stay where the server started
	a, sum, err := buildAuth(f)
	if err != nil {
		return err
	}
	if err := r.srv.Reload(tunnel.ReloadConfig{Auth: a, Routes: f.routes.vals}); err != nil {
		return err
	}
	level, msg := slog.LevelInfo, "configuration reloaded"
	attrs := []any{"config", f.config, "tokens_file", f.tokensFile(), "tokens", sum.tokens,
		"token_keys", sum.keys, "revocations", sum.revoked, "users", sum.users, "routes", routesOrDefault(f.routes.vals)}
	if len(restart) > 0 {
		level, msg = slog.LevelWarn, "configuration reloaded, but changed settings need a restart to take effect (still running with the old values)"
		attrs = append(attrs, "restart_keys", strings.Join(restart, ","))
	}
	r.log.Log(context.Background(), level, msg, attrs...)
	return nil
}

// restartNeeded names (as config keys) the flags whose value differs
// between old and cur but that a reload cannot apply.
func restartNeeded(old, cur *serverFlags) []string {
	var names []string
	old.fs.VisitAll(func(fl *flag.Flag) {
		if reloadable[fl.Name] {
			return
		}
		if nf := cur.fs.Lookup(fl.Name); nf != nil && nf.Value.String() != fl.Value.String() {
			names = append(names, flagKey(fl.Name))
		}
	})
	slices.Sort(names)
	return names
}

func routesOrDefault(r []netip.Prefix) []netip.Prefix {
	if r == nil {
		return tunnel.DefaultRoutes
	}
	return r
}

// handleSIGHUP calls r.reload for every SIGHUP until ctx ends, logging a
// failure with what was wrong (the old configuration keeps running).
func handleSIGHUP(ctx context.Context, r *reloader) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := r.reload(); err != nil {
					for _, line := range strings.Split(err.Error(), "\n") {
						r.log.Error("reload failed; the old configuration keeps running", "err", line)
					}
				}
			}
		}
	}()
}

// ignoreSIGHUP keeps SIGHUP from killing the client until stop is called:
// the client's settings all need a reconnect with a new device, so a
// changed config file takes effect when the client is restarted.
func ignoreSIGHUP(log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: the client has nothing to reload; restart it to apply a changed config")
			}
		}
	}()
	return cancel
}
