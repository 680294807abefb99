package tunnel

import (
	"crypto/rand"
	"net/netip"
	"testing"
	"time"
)

// TestReconnectAfterServerRestart: the server stops and a new one starts on
// the same port; the client reconnects by itself with the same addresses
// and the same device, and traffic flows again. With the same secret the
// client resumes with 0-RTT; with a new secret its ticket is refused and it
// falls back to a full handshake.
func TestReconnectAfterServerRestart(t *testing.T) {
	for _, tt := range []struct {
		name       string
		sameSecret bool
	}{
		{"same-secret", true},
		{"new-secret", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			secret := make([]byte, 32)
			rand.Read(secret)
			ts := startTestServerWith(t, testServerOpts{secret: secret})
			cert := ts.srv.cfg.TLS.Certificates[0]
			tc, err := startTestClient(t, ts, nil)
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			gw := netip.MustParseAddr("100.96.0.1")
			pingOnce(t, tc.net, gw)

			ts.stop()
			if !tt.sameSecret {
				secret = make([]byte, 32)
				rand.Read(secret)
			}
			ts2 := startTestServerWith(t, testServerOpts{addr: ts.addr, cert: cert, secret: secret})
			waitForCond(t, "the client to reconnect", 20*time.Second, func() bool { return tc.client.reconnects.Load() == 1 })
			for _, a := range tc.info.Addresses {
				if s := ts2.srv.sessionFor(a.Addr()); s == nil {
					t.Fatalf("the new server has no session for the client's address %v", a)
				}
			}
			pingOnce(t, tc.net, gw)
			if n := ts2.srv.Stats().SessionsTotal.Load(); n != 1 {
				t.Fatalf("the new server saw %d sessions, want 1", n)
			}
		})
	}
}

func waitForCond(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
