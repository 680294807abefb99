package tunnel

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/quic-go/quic-go"
)

// ticketPeriod is how long one session-ticket key is used to seal tickets;
// a ticket is accepted during its period and the next one, so tickets live
// between one and two periods.
const ticketPeriod = 24 * time.Hour

// serverKeys are the keys a server derives from its persistent secret, so
// that they survive a restart: clients of the previous process get a
// stateless reset at once (instead of waiting for their idle timeout) and
// can resume their TLS session with 0-RTT.
type serverKeys struct {
	secret []byte
	reset  quic.StatelessResetKey
	now    func() time.Time
}

func newServerKeys(secret []byte) (*serverKeys, error) {
	if secret == nil {
		secret = make([]byte, 32)
		rand.Read(secret)
	}
	if len(secret) < 16 {
		return nil, fmt.Errorf("tunnel: ServerConfig.Secret has %d bytes, want at least 16", len(secret))
	}
	k := &serverKeys{secret: secret, now: time.Now}
	copy(k.reset[:], k.derive("roam stateless reset", len(k.reset)))
	return k, nil
}

func (k *serverKeys) derive(label string, n int) []byte {
	b, err := hkdf.Key(sha256.New, k.secret, nil, label, n)
	if err != nil {
		panic("tunnel: hkdf: " + err.Error()) // only for n > 255*32
	}
	return b
}

func (k *serverKeys) ticketAEAD(period uint32) cipher.AEAD {
	var info [4]byte
	binary.BigEndian.PutUint32(info[:], period)
	block, err := aes.NewCipher(k.derive("roam session ticket "+string(info[:]), 32))
	if err != nil {
		panic(err) // unreachable: 32-byte key
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err) // unreachable
	}
	return aead
}

func (k *serverKeys) period() uint32 {
	return uint32(k.now().Unix() / int64(ticketPeriod/time.Second))
}

// configureTickets makes conf seal session tickets with keys derived from
// the secret (tls.Config.WrapSession/UnwrapSession). A ticket is
// period (4 bytes) || nonce || AES-256-GCM(session state), with the
// period as additional data.
func (k *serverKeys) configureTickets(conf *tls.Config) {
	conf.WrapSession = func(_ tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		state, err := ss.Bytes()
		if err != nil {
			return nil, err
		}
		p := k.period()
		aead := k.ticketAEAD(p)
		out := make([]byte, 4, 4+aead.NonceSize()+len(state)+aead.Overhead())
		binary.BigEndian.PutUint32(out, p)
		nonce := make([]byte, aead.NonceSize())
		rand.Read(nonce)
		out = append(out, nonce...)
		return aead.Seal(out, nonce, state, out[:4]), nil
	}
	conf.UnwrapSession = func(identity []byte, _ tls.ConnectionState) (*tls.SessionState, error) {
		if len(identity) < 4+12+16 {
			return nil, nil // not ours: full handshake
		}
		p := binary.BigEndian.Uint32(identity)
		if now := k.period(); p != now && p+1 != now {
			return nil, nil // expired (or from the future)
		}
		aead := k.ticketAEAD(p)
		nonce, sealed := identity[4:4+aead.NonceSize()], identity[4+aead.NonceSize():]
		state, err := aead.Open(nil, nonce, sealed, identity[:4])
		if err != nil {
			return nil, nil
		}
		ss, err := tls.ParseSessionState(state)
		if err != nil {
			return nil, nil
		}
		return ss, nil
	}
}
