package auth_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// totpCode is the TOTP code of secret at t.
func totpCode(t *testing.T, secret string, at time.Time) string { return testenv.TOTP(t, secret, at) }

// TestMFACodeOnce: a TOTP code is accepted once across every flow that
// takes one (sign-in, turning two-factor off, new recovery codes), and so
// is a recovery code, also when several sign-ins present it at once. Run
// on SQLite and on Postgres, where the step is compared and set in one
// statement.
func TestMFACodeOnce(t *testing.T) {
	for _, db := range []string{"SQLite", "Postgres"} {
		t.Run(db, func(t *testing.T) {
			url := ""
			if db == "Postgres" {
				url = testenv.PostgresURL(t)
			}
			testMFACodeOnce(t, url)
		})
	}
}

func testMFACodeOnce(t *testing.T, databaseURL string) {
	ctx := context.Background()
	clk := testenv.NewClock(time.Now())
	svc, _ := newService(t, databaseURL, clk, &mailbox{})
	is, err := svc.SignUp(ctx, tenants.Signup{Email: "ada@example.com", Password: "correct horse battery"}, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	a := is.Account
	setup, err := svc.SetUpMFA(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	enabling := totpCode(t, setup.Secret, clk.Now())
	recovery, err := svc.EnableMFA(ctx, a, enabling, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	challenge := func() string {
		t.Helper()
		is, err := svc.LogIn(ctx, a.Email, "correct horse battery", "192.0.2.1")
		if err != nil || is.MFAToken == "" {
			t.Fatalf("LogIn = %+v, %v; want a challenge", is, err)
		}
		return is.MFAToken
	}
	// signIns completes the challenge with code from n addresses at once
	// and returns how many sign-ins started a session; the others must be
	// refused as a wrong or used code, or (once one signed in with it) a
	// spent challenge: unauthorized either way.
	signIns := func(n int, code string) int {
		t.Helper()
		tok := challenge()
		var mu sync.Mutex
		var wg sync.WaitGroup
		won := 0
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				is, err := svc.CompleteMFA(ctx, tok, code, fmt.Sprintf("198.51.100.%d", i+1))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil && is.Token != "":
					won++
				case !errors.Is(err, tenants.ErrUnauthorized):
					t.Errorf("CompleteMFA = %+v, %v; want a session or ErrUnauthorized", is, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		return won
	}

	// quiet lets an hour pass: it forgives the wrong codes tried (the
	// account's second-factor budget allows five in a row), so that the
	// next sign-ins at once all get to try theirs.
	quiet := func() { clk.Advance(time.Hour + time.Minute) }

	// The code that turned it on is spent.
	if n := signIns(1, enabling); n != 0 {
		t.Errorf("the enabling code signed in")
	}
	// A fresh code, presented by four sign-ins at once, signs in once,
	// then neither turns two-factor off nor makes recovery codes.
	quiet()
	now := totpCode(t, setup.Secret, clk.Now())
	if n := signIns(4, now); n != 1 {
		t.Errorf("one code started %d sessions from 4 concurrent sign-ins, want 1", n)
	}
	if err := svc.DisableMFA(ctx, a, now, "192.0.2.1"); !errors.Is(err, auth.ErrBadCode) {
		t.Errorf("DisableMFA with the code used to sign in: %v, want ErrBadCode", err)
	}
	if _, err := svc.NewRecoveryCodes(ctx, a, now, "192.0.2.1"); !errors.Is(err, auth.ErrBadCode) {
		t.Errorf("NewRecoveryCodes with the code used to sign in: %v, want ErrBadCode", err)
	}
	// A code used for new recovery codes does not sign in after, nor
	// does a recovery code they replaced.
	quiet()
	now = totpCode(t, setup.Secret, clk.Now())
	fresh, err := svc.NewRecoveryCodes(ctx, a, now, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if n := signIns(1, now); n != 0 {
		t.Errorf("the code that made recovery codes signed in")
	}
	if n := signIns(1, recovery[0]); n != 0 {
		t.Errorf("a replaced recovery code signed in")
	}
	// A recovery code, presented by four sign-ins at once, signs in once,
	// then does not turn two-factor off.
	quiet()
	if n := signIns(4, fresh[0]); n != 1 {
		t.Errorf("one recovery code started %d sessions from 4 concurrent sign-ins, want 1", n)
	}
	if err := svc.DisableMFA(ctx, a, fresh[0], "192.0.2.1"); !errors.Is(err, auth.ErrBadCode) {
		t.Errorf("DisableMFA with a used recovery code: %v, want ErrBadCode", err)
	}
	if st, _ := svc.MFAStatus(ctx, a.ID); !st.Enabled || st.RecoveryLeft != tenants.RecoveryCodeCount-1 {
		t.Errorf("MFAStatus = %+v; want on, %d recovery codes left", st, tenants.RecoveryCodeCount-1)
	}
	if err := svc.DisableMFA(ctx, a, fresh[1], "192.0.2.1"); err != nil {
		t.Errorf("DisableMFA with an unused recovery code: %v", err)
	}
}

// TestMFAChallengeOnce: a challenge starts one session. A wrong code
// leaves it for another try; once a right code has started a session,
// the challenge is refused as one that is not valid, with no code spent;
// and a challenge completed at once with several right codes starts one
// session. Run on SQLite and on Postgres, where the challenge is recorded
// spent by one insert-if-absent.
func TestMFAChallengeOnce(t *testing.T) {
	for _, db := range []string{"SQLite", "Postgres"} {
		t.Run(db, func(t *testing.T) {
			url := ""
			if db == "Postgres" {
				url = testenv.PostgresURL(t)
			}
			testMFAChallengeOnce(t, url)
		})
	}
}

func testMFAChallengeOnce(t *testing.T, databaseURL string) {
	ctx := context.Background()
	clk := testenv.NewClock(time.Now())
	svc, _ := newService(t, databaseURL, clk, &mailbox{})
	is, err := svc.SignUp(ctx, tenants.Signup{Email: "ada@example.com", Password: "correct horse battery"}, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	a := is.Account
	setup, err := svc.SetUpMFA(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	recovery, err := svc.EnableMFA(ctx, a, totpCode(t, setup.Secret, clk.Now()), "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	challenge := func() string {
		t.Helper()
		is, err := svc.LogIn(ctx, a.Email, "correct horse battery", "192.0.2.1")
		if err != nil || is.MFAToken == "" {
			t.Fatalf("LogIn = %+v, %v; want a challenge", is, err)
		}
		return is.MFAToken
	}
	_, forged := svc.CompleteMFA(ctx, "not-a-challenge", "123456", "192.0.2.1")
	if !errors.Is(forged, tenants.ErrUnauthorized) || errors.Is(forged, auth.ErrBadCode) {
		t.Fatalf("CompleteMFA with a forged challenge: %v, want ErrUnauthorized, not ErrBadCode", forged)
	}
	// wantSpent fails unless err is the answer to a challenge not valid.
	wantSpent := func(what string, err error) {
		t.Helper()
		if err == nil || err.Error() != forged.Error() || !errors.Is(err, tenants.ErrUnauthorized) {
			t.Errorf("%s: %v, want %v", what, err, forged)
		}
	}

	// A wrong code, then the right one: the retry signs in.
	clk.Advance(30 * time.Second)
	tok := challenge()
	now := totpCode(t, setup.Secret, clk.Now())
	wrong := "000000"
	if now == wrong {
		wrong = "000001"
	}
	if _, err := svc.CompleteMFA(ctx, tok, wrong, "192.0.2.1"); !errors.Is(err, auth.ErrBadCode) {
		t.Fatalf("CompleteMFA with a wrong code: %v, want ErrBadCode", err)
	}
	if is, err := svc.CompleteMFA(ctx, tok, now, "192.0.2.1"); err != nil || is.Token == "" {
		t.Fatalf("CompleteMFA after a wrong code = %+v, %v; want a session", is, err)
	}

	// The challenge that signed in is spent: a later code, or a recovery
	// code, with it is refused, and neither code is spent by that.
	clk.Advance(30 * time.Second)
	next := totpCode(t, setup.Secret, clk.Now())
	_, err = svc.CompleteMFA(ctx, tok, next, "192.0.2.1")
	wantSpent("the challenge again with the next code", err)
	_, err = svc.CompleteMFA(ctx, tok, recovery[0], "192.0.2.1")
	wantSpent("the challenge again with a recovery code", err)
	if is, err := svc.CompleteMFA(ctx, challenge(), next, "192.0.2.1"); err != nil || is.Token == "" {
		t.Errorf("a new challenge with the code refused with the spent one = %+v, %v; want a session", is, err)
	}
	if st, _ := svc.MFAStatus(ctx, a.ID); st.RecoveryLeft != tenants.RecoveryCodeCount {
		t.Errorf("recovery codes left %d, want %d: the spent challenge spent one", st.RecoveryLeft, tenants.RecoveryCodeCount)
	}

	// One challenge, completed at once with four right codes (a TOTP code
	// and three recovery codes): one session; the others are refused as
	// a spent challenge.
	clk.Advance(time.Hour + time.Minute) // forgives the attempts so far
	tok = challenge()
	codes := []string{totpCode(t, setup.Secret, clk.Now()), recovery[1], recovery[2], recovery[3]}
	var mu sync.Mutex
	var wg sync.WaitGroup
	won := 0
	start := make(chan struct{})
	for i, code := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			is, err := svc.CompleteMFA(ctx, tok, code, fmt.Sprintf("198.51.100.%d", i+1))
			mu.Lock()
			defer mu.Unlock()
			if err == nil && is.Token != "" {
				won++
				return
			}
			wantSpent(fmt.Sprintf("concurrent completion with code %d", i), err)
		}()
	}
	close(start)
	wg.Wait()
	if won != 1 {
		t.Errorf("one challenge started %d sessions from %d concurrent completions with right codes, want 1", won, len(codes))
	}
	_, err = svc.CompleteMFA(ctx, tok, recovery[4], "192.0.2.1")
	wantSpent("the challenge after the concurrent completions", err)
}
