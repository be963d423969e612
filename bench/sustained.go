package bench

import (
	"context"
	"time"
)

// SustainedResult is the outcome of a search for the highest rate a
// broker sustains.
type SustainedResult struct {
	// PerSecond is the highest offered rate that every message arrived at,
	// once and in order, with a p99 under the bound; 0 if none did.
	PerSecond float64     `json:"sustained_per_second"`
	Steps     []P2PResult `json:"steps"`
	Offered   []int       `json:"offered"`
}

// Sustainable is how a p2p run at a fixed rate is judged: nothing lost,
// duplicated or reordered, nothing failed, the rate was kept up (at least
// 95% of what was offered was sent) and p99 is below p99Bound.
func Sustainable(r P2PResult, offered int, d time.Duration, p99Bound time.Duration) bool {
	kept := float64(r.Sent) >= 0.95*float64(offered)*d.Seconds()
	return r.FirstError == "" && r.Tally.Lost == 0 && r.Tally.Duplicates == 0 && r.Tally.OutOfOrder == 0 &&
		kept && r.P99 < ms(p99Bound)
}

// MaxSustained searches for the highest p2p rate a broker sustains with
// pairs publisher/subscriber pairs, its p99 below p99Bound: it doubles the
// offered rate from start until a step fails, then bisects between the
// last good and the first bad rate, steps runs of d in all.
func MaxSustained(ctx context.Context, t Target, pairs int, qos byte, size, start int, d time.Duration, steps int, p99Bound time.Duration) (SustainedResult, error) {
	var res SustainedResult
	good, bad := 0, 0
	rate := start
	for range steps {
		r, err := P2P(ctx, t, pairs, qos, size, rate, d)
		if err != nil {
			return res, err
		}
		res.Steps, res.Offered = append(res.Steps, r), append(res.Offered, rate)
		if Sustainable(r, rate, d, p99Bound) {
			good = rate
			res.PerSecond = float64(rate)
		} else {
			bad = rate
		}
		if bad == 0 {
			rate *= 2
		} else {
			rate = (good + bad) / 2
			if bad-good <= max(bad/50, 1) {
				break
			}
		}
	}
	return res, nil
}
