// Command roam is Roam's one binary: a VPN server and client that carry IP
// packets over QUIC (RFC 9484 CONNECT-IP over HTTP/3).
//
//	roam server [flags]   run a server (prints a ready-to-paste client line)
//	roam client [flags]   connect this host to a server
//	roam token            print a new random token for a tokens file
//	roam token issue      print a signed token (also: revoke, inspect)
//	roam validate FILE    check a config file
//	roam status           show a running server's or client's sessions and counters
//	roam version          print the version
//
// The mains are thin: they parse flags, build a config and call the
// tunnel package.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// usageError is a bad command line: exit status 2 with a one-line message.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

const topUsage = `usage: roam <command> [flags]

commands:
  server    run a Roam server (roam server -h for flags)
  client    connect to a Roam server (roam client -h for flags)
  token     print a new random token; token issue|revoke|inspect: signed tokens (roam token -h)
  validate  check a config file without starting anything (roam validate FILE)
  status    show a running server's or client's sessions, paths and counters
  version   print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line until ctx ends and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, topUsage)
		return 2
	}
	var err error
	switch args[0] {
	case "server":
		err = runServer(ctx, args[1:], stdout, stderr)
	case "client":
		err = runClient(ctx, args[1:], stdout, stderr)
	case "validate":
		err = runValidate(args[1:], stdout, stderr)
	case "token":
		err = runToken(args[1:], stdout, stderr)
	case "status":
		err = runStatus(ctx, args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "roam", version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, topUsage)
	default:
		err = usagef("unknown command %q (want server, client, token, validate or version)", args[0])
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errValidate):
		return 1 // the problems are printed
	case errors.As(err, &ue):
		for _, line := range strings.Split(ue.msg, "\n") { // a config file's problems, one a line
			fmt.Fprintf(stderr, "roam %s\n", line)
		}
		return 2
	default:
		fmt.Fprintf(stderr, "roam: %v\n", err)
		return 1
	}
}

// startLogging returns a text logger on w at the named level and, if debug
// is set, starts the loopback debug listener there.
func startLogging(w io.Writer, level, debug string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("invalid value %q for flag --log-level: expected debug, info, warn or error", level)
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
	if debug != "" {
		if err := serveDebug(debug, log); err != nil {
			return nil, err
		}
	}
	return log, nil
}
