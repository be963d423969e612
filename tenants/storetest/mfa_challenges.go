package storetest

import (
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testMFAChallenges: a two-factor challenge is spent once, also by
// concurrent spends; a spent one is known as spent across a reopen, until
// it is pruned by a later spend once its token has long expired.
func testMFAChallenges(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	now := time.Now()
	exp := now.Add(5 * time.Minute)
	if spent, err := s.MFAChallengeSpent(ctx, "mfa_a"); spent || err != nil {
		t.Fatalf("MFAChallengeSpent of a new challenge = %v, %v; want false", spent, err)
	}
	if ok, err := s.SpendMFAChallenge(ctx, "mfa_a", exp); !ok || err != nil {
		t.Fatalf("SpendMFAChallenge = %v, %v; want true", ok, err)
	}
	if ok, err := s.SpendMFAChallenge(ctx, "mfa_a", exp); ok || err != nil {
		t.Errorf("SpendMFAChallenge again = %v, %v; want false", ok, err)
	}
	if spent, err := s.MFAChallengeSpent(ctx, "mfa_b"); spent || err != nil {
		t.Errorf("MFAChallengeSpent of another challenge = %v, %v; want false", spent, err)
	}

	// Two completions of one challenge at once (two nodes, say): one spends it.
	if n := concurrently(t, 8, func() (bool, error) { return s.SpendMFAChallenge(ctx, "mfa_c", exp) }); n != 1 {
		t.Errorf("challenge mfa_c spent by %d of 8 concurrent spends, want 1", n)
	}
	if reopen != nil {
		s = reopen()
	}
	for _, id := range []string{"mfa_a", "mfa_c"} {
		if spent, err := s.MFAChallengeSpent(ctx, id); !spent || err != nil {
			t.Errorf("MFAChallengeSpent(%s) after a reopen = %v, %v; want true", id, spent, err)
		}
	}

	// An hour past its expiry a spent challenge is kept (a lagging clock
	// still parses its token); beyond that, the next spend prunes it.
	s.SetClock(func() time.Time { return exp.Add(59 * time.Minute) })
	if ok, err := s.SpendMFAChallenge(ctx, "mfa_d", exp.Add(time.Hour)); !ok || err != nil {
		t.Fatalf("SpendMFAChallenge(mfa_d) = %v, %v; want true", ok, err)
	}
	if spent, _ := s.MFAChallengeSpent(ctx, "mfa_a"); !spent {
		t.Error("mfa_a was pruned 59 minutes past its expiry, want kept for an hour")
	}
	s.SetClock(func() time.Time { return exp.Add(61 * time.Minute) })
	if ok, err := s.SpendMFAChallenge(ctx, "mfa_e", exp.Add(time.Hour)); !ok || err != nil {
		t.Fatalf("SpendMFAChallenge(mfa_e) = %v, %v; want true", ok, err)
	}
	for id, want := range map[string]bool{"mfa_a": false, "mfa_c": false, "mfa_d": true, "mfa_e": true} {
		if spent, err := s.MFAChallengeSpent(ctx, id); spent != want || err != nil {
			t.Errorf("MFAChallengeSpent(%s) 61 minutes past mfa_a's expiry = %v, %v; want %v", id, spent, err, want)
		}
	}
}
