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
	// refused as a wrong or used code.
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
				case !errors.Is(err, auth.ErrBadCode):
					t.Errorf("CompleteMFA = %+v, %v; want a session or ErrBadCode", is, err)
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
