package fec

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/reedsolomon"
)

// Policy is how much parity a sender adds: K data packets per block and M
// parity packets per block, or Auto (M follows the loss the peer reports,
// none while the link is clean). The zero Policy is off.
type Policy struct {
	K, M int
	Auto bool
}

// AutoK is the block size of the auto policy.
const AutoK = 16

// Off reports whether p asks for no FEC at all.
func (p Policy) Off() bool { return !p.Auto && p.M == 0 }

// String formats p as ParsePolicy reads it.
func (p Policy) String() string {
	switch {
	case p.Auto:
		return "auto"
	case p.Off():
		return "off"
	}
	return fmt.Sprintf("%d:%d", p.K, p.M)
}

// ParsePolicy reads "auto", "off" or "K:M" (1 <= K <= 64, 1 <= M <= 32).
// Errors say what is expected, so callers can name the flag.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "auto":
		return Policy{K: AutoK, Auto: true}, nil
	case "off", "":
		return Policy{}, nil
	}
	ks, ms, ok := strings.Cut(s, ":")
	k, err1 := strconv.Atoi(ks)
	m, err2 := strconv.Atoi(ms)
	if !ok || err1 != nil || err2 != nil || k < 1 || k > MaxK || m < 1 || m > MaxM {
		return Policy{}, fmt.Errorf("%q is not auto, off or K:M with K in 1..%d and M in 1..%d (e.g. 16:4)", s, MaxK, MaxM)
	}
	return Policy{K: k, M: m}, nil
}

// wantFields is p as a report's want-K and want-M fields.
func (p Policy) wantFields() (int, int) {
	switch {
	case p.Auto:
		return p.K, AutoM
	case p.Off():
		return 0, 0
	}
	return p.K, p.M
}

// policyFromWant is the inverse of wantFields.
func policyFromWant(k, m int) Policy {
	switch {
	case k == 0:
		return Policy{}
	case m == AutoM:
		return Policy{K: k, Auto: true}
	}
	return Policy{K: k, M: m}
}

// residualTarget is the probability of an unrecoverable block the auto
// policy aims below.
const residualTarget = 1e-5

// AutoParity returns the number of parity packets per block of k data
// packets that keeps the chance of more than M losses among k+M packets,
// each lost with probability loss, below residualTarget (at most MaxM, and
// at most k). A loss of 0 gives 0.
func AutoParity(k int, loss float64) int {
	if loss <= 0 {
		return 0
	}
	if loss > 0.5 {
		loss = 0.5
	}
	for m := 1; m <= min(k, MaxM); m++ {
		if binomialTail(k+m, m+1, loss) < residualTarget {
			return m
		}
	}
	return min(k, MaxM)
}

// binomialTail is P(X >= x) for X ~ Binomial(n, p).
func binomialTail(n, x int, p float64) float64 {
	var sum float64
	for i := x; i <= n; i++ {
		lc, _ := math.Lgamma(float64(n + 1))
		l1, _ := math.Lgamma(float64(i + 1))
		l2, _ := math.Lgamma(float64(n - i + 1))
		sum += math.Exp(lc - l1 - l2 + float64(i)*math.Log(p) + float64(n-i)*math.Log1p(-p))
	}
	return sum
}

// lossBound is what the auto policy plans for given decayed counts of lost
// and sent packets: zero on a clean link, else a pessimistic estimate (the
// count plus two standard deviations of a Poisson count, plus one), so
// that a short run of luck does not cut the parity below what the loss
// needs.
func lossBound(lost, total float64) float64 {
	if total <= 0 || lost/total < cleanLoss {
		return 0
	}
	return min(1, (lost+2*math.Sqrt(lost)+1)/total)
}

// codecs caches one Reed-Solomon codec per (data, parity) shape; they are
// safe for concurrent use.
var codecs sync.Map // int(n<<8|m) -> reedsolomon.Encoder

func codec(n, m int) (reedsolomon.Encoder, error) {
	key := n<<8 | m
	if c, ok := codecs.Load(key); ok {
		return c.(reedsolomon.Encoder), nil
	}
	c, err := reedsolomon.New(n, m, reedsolomon.WithMaxGoroutines(1))
	if err != nil {
		return nil, err
	}
	actual, _ := codecs.LoadOrStore(key, c)
	return actual.(reedsolomon.Encoder), nil
}
