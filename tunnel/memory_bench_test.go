package tunnel

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamvpn/roam/auth"
	"github.com/roamvpn/roam/datagram"
	"github.com/roamvpn/roam/tun/usernat"
	"github.com/roamvpn/roam/tunnel/addrpool"
)

// Environment of the client process of BenchmarkIdleSessionMemory.
const (
	memClientsEnv = "ROAM_MEMBENCH_CLIENTS" // SERVER,PINHEX,N: run TestIdleSessionClients
	memSessions   = 1000
	// memProfileEnv names a file for the server's heap profile with the
	// sessions up (go tool pprof -sample_index=inuse_space FILE).
	memProfileEnv = "ROAM_MEMBENCH_PROFILE"
)

// BenchmarkIdleSessionMemory measures the server's heap per idle
// CONNECT-IP session: 1000 sessions from real clients (Client.connect:
// the QUIC handshake, the request, ADDRESS_ASSIGN and the routes, with
// keepalives, but no device or pump) over loopback. The clients run in a
// child process, so the live heap after GC before and after they connect
// is the server's alone. Run it once:
//
//	go test -run '^$' -bench IdleSessionMemory -benchtime 1x ./tunnel/
//
// It reports B/session (live heap), stack-B/session (goroutine stacks,
// which the heap does not include), total-B/session (the two; target
// <= 64 KiB) and goroutines/session. ROAM_MEMBENCH_PROFILE=FILE writes the
// heap profile with the sessions up to FILE and the goroutines to
// FILE.goroutines.
func BenchmarkIdleSessionMemory(b *testing.B) {
	if raceEnabled {
		b.Skip("needs ~9000 goroutines; the race detector allows 8128")
	}
	b.ReportAllocs()
	for range b.N {
		measureIdleSessions(b, memSessions)
	}
}

func measureIdleSessions(b *testing.B, n int) {
	tokens, err := auth.ParseTokens(strings.NewReader(testToken+"\n"), "bench")
	if err != nil {
		b.Fatal(err)
	}
	cert, _, err := auth.LoadOrCreateCert(b.TempDir(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	pool4, err := addrpool.New(netip.MustParsePrefix("100.64.0.0/16"))
	if err != nil {
		b.Fatal(err)
	}
	pool6, err := addrpool.New(netip.MustParsePrefix("fd00:64::/64"))
	if err != nil {
		b.Fatal(err)
	}
	nat, err := usernat.New(usernat.Config{MTU: TunnelMTU, Gateway4: pool4.Gateway(), Gateway6: pool6.Gateway(),
		Prefixes: []netip.Prefix{pool4.Prefix(), pool6.Prefix()}})
	if err != nil {
		b.Fatal(err)
	}
	defer nat.Close()
	srv, err := NewServer(ServerConfig{TLS: tlsConfigFor(cert), Tokens: tokens, Pool4: pool4, Pool6: pool6,
		Device: nat, DisableWeb: true})
	if err != nil {
		b.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, pc) }()
	defer func() {
		cancel()
		<-served
	}()
	<-srv.Ready()

	heap0, stack0, gr0 := liveHeap()

	pin, err := auth.ParsePin(auth.Pin(cert.Certificate[0]))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleSessionClients$", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", memClientsEnv, pc.LocalAddr(), hex.EncodeToString(pin[:]), n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close() // the clients close their connections and exit
		if err := cmd.Wait(); err != nil {
			b.Errorf("client process: %v", err)
		}
	}()
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if line := sc.Text(); line == "clients ready" {
			ready = true
			break
		} else if strings.HasPrefix(line, "FAIL") || strings.HasPrefix(line, "---") || strings.HasPrefix(line, "clients failed") {
			b.Log(line)
		}
	}
	if !ready {
		b.Fatalf("the client process did not connect %d sessions", n)
	}
	go func() {
		for sc.Scan() {
		}
	}()
	setup := time.Since(start)
	deadline := time.Now().Add(30 * time.Second)
	for srv.Stats().SessionsActive.Load() != int64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("server has %d sessions, want %d", srv.Stats().SessionsActive.Load(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Let the handshakes' transient state (crypto setup, first flights,
	// 0.5-RTT buffers) go the way it goes on an idle server.
	time.Sleep(2 * time.Second)
	heap1, stack1, gr1 := liveHeap()
	if path := os.Getenv(memProfileEnv); path != "" {
		if f, err := os.Create(path); err == nil {
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
		if f, err := os.Create(path + ".goroutines"); err == nil {
			pprof.Lookup("goroutine").WriteTo(f, 1)
			f.Close()
		}
	}
	if got := srv.Stats().SessionsActive.Load(); got != int64(n) {
		b.Fatalf("%d sessions left while measuring, want %d", got, n)
	}
	per := float64(int64(heap1)-int64(heap0)) / float64(n)
	b.ReportMetric(per, "B/session")
	stacks := float64(int64(stack1)-int64(stack0)) / float64(n)
	b.ReportMetric(stacks, "stack-B/session")
	b.ReportMetric(per+stacks, "total-B/session")
	b.ReportMetric(float64(gr1-gr0)/float64(n), "goroutines/session")
	b.Logf("%d idle sessions: server heap %d -> %d bytes (%.1f KiB/session); goroutine stacks %.1f KiB/session more; %.1f KiB/session in all (target <= 64 KiB); goroutines %d -> %d; setup %v",
		n, heap0, heap1, per/1024, stacks/1024, (per+stacks)/1024, gr0, gr1, setup.Round(time.Millisecond))
}

// liveHeap returns the live heap after two GCs, the goroutine stacks'
// memory and the number of goroutines.
func liveHeap() (heap, stacks uint64, goroutines int) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.StackInuse, runtime.NumGoroutine()
}

// TestIdleSessionClients is the client process of
// BenchmarkIdleSessionMemory (skipped unless ROAM_MEMBENCH_CLIENTS is
// set): it connects N sessions, prints "clients ready", holds them until
// stdin closes, then closes them.
func TestIdleSessionClients(t *testing.T) {
	spec := os.Getenv(memClientsEnv)
	if spec == "" {
		t.Skip("the client process of BenchmarkIdleSessionMemory")
	}
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		t.Fatalf("%s=%q: expected SERVER,PINHEX,N", memClientsEnv, spec)
	}
	pinb, err := hex.DecodeString(parts[1])
	if err != nil || len(pinb) != 32 {
		t.Fatalf("%s: bad pin %q", memClientsEnv, parts[1])
	}
	var pin [32]byte
	copy(pin[:], pinb)
	n, err := strconv.Atoi(parts[2])
	if err != nil || n <= 0 {
		t.Fatalf("%s: bad count %q", memClientsEnv, parts[2])
	}
	c, err := NewClient(ClientConfig{
		Server: parts[0], Token: testToken, Pin: &pin,
		ListenPacket: func(netip.Addr) (net.PacketConn, error) { return net.ListenPacket("udp", "127.0.0.1:0") },
		NewDevice:    func(DeviceConfig) (datagram.Device, error) { panic("not used") },
	})
	if err != nil {
		t.Fatal(err)
	}
	links := make([]*link, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 8)
	for i := range links {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := c.connect(ctx, nil)
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("session %d: %w", i, err)
				}
				mu.Unlock()
				return
			}
			links[i] = l
		}()
	}
	wg.Wait()
	defer func() {
		for _, l := range links {
			if l != nil {
				l.close("done")
			}
		}
	}()
	if firstErr != nil {
		fmt.Printf("clients failed: %v\n", firstErr)
		t.Fatal(firstErr)
	}
	fmt.Println("clients ready")
	bufio.NewReader(os.Stdin).ReadByte() // until the benchmark closes stdin
}
