// Package control is the local status socket of a running Roam server or
// client: a unix socket that answers each connection's one request with
// a JSON snapshot, for `roam status`.
//
// The protocol is one request line and one JSON reply per connection:
//
//	client: status\n
//	server: {"server": {...ServerStatus...}}\n   (or {"client": {...}})
//	        {"error": "..."}\n                    (an unknown request)
//
// then the server closes the connection. Access control is the socket
// file's mode (0600 by default: the user running Roam, and root).
//
// The package uses only the standard library's unix sockets, so it builds
// wherever they exist (Linux, macOS, Windows 10+); the browser client does
// not import it. Telling a stale socket file from a live one relies on
// ECONNREFUSED (Linux, macOS); elsewhere a stale file is reported, not
// removed.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/roamvpn/roam/tunnel"
)

// Reply is the answer to a status request: exactly one of Server and
// Client is set, or Error.
type Reply struct {
	Server *tunnel.ServerStatus `json:"server,omitempty"`
	Client *tunnel.ClientStatus `json:"client,omitempty"`
	Error  string               `json:"error,omitempty"`
}

// Config says what a status socket serves.
type Config struct {
	// Path is the socket file. Its directory is created (0755, or 0700
	// under $XDG_RUNTIME_DIR) if missing. A stale socket file at Path (no
	// one accepts on it) is removed; a live one or a file that is not a
	// socket is an error.
	Path string
	// Mode is the socket file's permission bits; 0 means 0600. Use 0660
	// to let the file's group query it.
	Mode fs.FileMode
	// Server or Client (exactly one) returns the snapshot to answer with;
	// it is called once per request, possibly concurrently, and the
	// returned value is only read.
	Server func() tunnel.ServerStatus
	Client func() tunnel.ClientStatus
	// Logger gets start/stop lines and failed requests; nil is silent.
	Logger *slog.Logger
}

// requestTimeout bounds one request on either side.
const requestTimeout = 5 * time.Second

// Server is a listening status socket; see Listen.
type Server struct {
	cfg  Config
	log  *slog.Logger
	ln   *net.UnixListener
	info os.FileInfo // the socket file we created, to remove only it
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

// Listen creates the socket at cfg.Path with cfg.Mode and answers requests
// until Close. Exactly one of cfg.Server and cfg.Client must be set.
func Listen(cfg Config) (*Server, error) {
	if (cfg.Server == nil) == (cfg.Client == nil) {
		return nil, errors.New("control: exactly one of Config.Server and Config.Client must be set")
	}
	if cfg.Path == "" {
		return nil, errors.New("control: Config.Path is required")
	}
	if cfg.Mode == 0 {
		cfg.Mode = 0o600
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dirMode := fs.FileMode(0o755)
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" && strings.HasPrefix(cfg.Path, rt+string(filepath.Separator)) {
		dirMode = 0o700
	}
	dir := filepath.Dir(cfg.Path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("status socket directory: %w", err)
	}
	if err := removeStale(cfg.Path); err != nil {
		return nil, err
	}
	// Bind under a temporary name, set the mode, then rename into place:
	// nobody can connect through Path before the mode is right (a umask
	// change would be process-wide).
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", filepath.Base(cfg.Path), os.Getpid()))
	os.Remove(tmp) // a leftover of an earlier crash of this same pid
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", cfg.Path, err)
	}
	ln.SetUnlinkOnClose(false) // Close removes Path, not tmp
	if err := os.Chmod(tmp, cfg.Mode); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("status socket %s: %w", cfg.Path, err)
	}
	// A hard link does not replace a socket another process created at
	// Path since removeStale looked; where sockets cannot be linked,
	// rename.
	err = os.Link(tmp, cfg.Path)
	switch {
	case err == nil:
		os.Remove(tmp)
	case errors.Is(err, fs.ErrExist):
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("status socket %s was created by another process just now; stop it or choose another path", cfg.Path)
	default:
		err = os.Rename(tmp, cfg.Path)
	}
	if err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("status socket %s: %w", cfg.Path, err)
	}
	info, err := os.Lstat(cfg.Path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket %s: %w", cfg.Path, err)
	}
	s := &Server{cfg: cfg, log: log, ln: ln, info: info}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// removeStale removes a socket file at path that no one accepts on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("status socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("status socket %s: the file exists and is not a socket; remove it or choose another path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("status socket %s is in use by a running roam; stop it or choose another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("status socket %s: checking whether it is stale: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("status socket %s: removing the stale socket: %w", path, err)
	}
	return nil
}

// Path returns the socket's path.
func (s *Server) Path() string { return s.cfg.Path }

func (s *Server) serve() {
	defer s.wg.Done()
	s.log.Info("status socket listening", "path", s.cfg.Path)
	defer s.log.Info("status socket closed", "path", s.cfg.Path)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("status socket accept failed", "err", err)
			}
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.answer(c)
		}()
	}
}

// maxRequest bounds the request line.
const maxRequest = 256

func (s *Server) answer(c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(requestTimeout))
	line, err := bufio.NewReaderSize(&limited{c, maxRequest}, maxRequest).ReadString('\n')
	if err != nil {
		s.log.Debug("status request not read", "err", err)
		return
	}
	var r Reply
	switch req := strings.TrimSpace(line); req {
	case "status":
		if s.cfg.Server != nil {
			st := s.cfg.Server()
			r.Server = &st
		} else {
			st := s.cfg.Client()
			r.Client = &st
		}
	default:
		r.Error = fmt.Sprintf("unknown request %q: expected status", req)
	}
	b, err := json.Marshal(r)
	if err != nil {
		s.log.Warn("status reply not encoded", "err", err)
		return
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		s.log.Debug("status reply not sent", "err", err)
	}
}

// limited reads at most n bytes from c, then fails.
type limited struct {
	c *net.UnixConn
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("request line too long")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}

// Close stops accepting, waits for requests in flight (each bounded by a
// timeout), and removes the socket file if it is still the one Listen
// created. It is idempotent.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.err = s.ln.Close()
		s.wg.Wait()
		if fi, err := os.Lstat(s.cfg.Path); err == nil && os.SameFile(fi, s.info) {
			if err := os.Remove(s.cfg.Path); err != nil && s.err == nil {
				s.err = err
			}
		}
	})
	return s.err
}

// Query sends a status request to the socket at path and returns the
// reply. An error reply is returned as an error.
func Query(ctx context.Context, path string) (Reply, error) {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Reply{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("status\n")); err != nil {
		return Reply{}, fmt.Errorf("status socket %s: %w", path, err)
	}
	var r Reply
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		return Reply{}, fmt.Errorf("status socket %s: reading the reply: %w", path, err)
	}
	if r.Error != "" {
		return Reply{}, fmt.Errorf("status socket %s: %s", path, r.Error)
	}
	if r.Server == nil && r.Client == nil {
		return Reply{}, fmt.Errorf("status socket %s: the reply has neither a server nor a client status", path)
	}
	return r, nil
}

// DefaultPath returns the default socket path of kind ("server" or
// "client"): /run/roam/KIND.sock as root, $XDG_RUNTIME_DIR/roam/KIND.sock
// otherwise, or "" when XDG_RUNTIME_DIR is not set (no default).
func DefaultPath(kind string) string {
	if os.Geteuid() == 0 {
		return filepath.Join("/run/roam", kind+".sock")
	}
	if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
		return filepath.Join(rt, "roam", kind+".sock")
	}
	return ""
}
