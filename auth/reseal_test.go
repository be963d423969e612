package auth_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestResealMFA: after the operator token changed, ResealMFA seals the
// two-factor secrets sealed under the earlier token (on or only set up)
// again under the current one, so that a process without the earlier
// token signs their accounts in; a secret that does not open is left,
// counted, every pass. Run on SQLite and Postgres.
func TestResealMFA(t *testing.T) {
	for _, db := range []string{"SQLite", "Postgres"} {
		t.Run(db, func(t *testing.T) {
			url := ""
			if db == "Postgres" {
				url = testenv.PostgresURL(t)
			}
			testResealMFA(t, url)
		})
	}
}

func testResealMFA(t *testing.T, databaseURL string) {
	ctx := context.Background()
	clk := testenv.NewClock(time.Now())
	auth.SetMFAResealPage(t, 1)                                  // a page per account: the paging is walked
	before, store := newService(t, databaseURL, clk, &mailbox{}) // under operatorToken
	const newToken = "rop_the-new-operator-token-456789"
	service := func(sealer *dataout.Sealer) *auth.Service {
		t.Helper()
		svc, err := auth.New(auth.Config{Store: store, SigningKey: bytes.Repeat([]byte("s"), 32), AdminToken: newToken,
			Now: clk.Now, Mailer: &mailbox{}, PublicURL: "https://hub.example.com", Sealer: sealer})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.Close)
		return svc
	}
	ringSealer, err := dataout.NewSealer(dataout.KeyFromToken(newToken), dataout.KeysFromTokens(operatorToken)...)
	if err != nil {
		t.Fatal(err)
	}
	currentSealer, _ := dataout.NewSealer(dataout.KeyFromToken(newToken))
	ring, current := service(ringSealer), service(currentSealer)

	// ada has two-factor on, bob only set up, eve a secret that does not
	// open (sealed for another account's row).
	accounts := map[string]tenants.Account{}
	secrets := map[string]string{}
	for _, name := range []string{"ada", "bob", "eve"} {
		is, err := before.SignUp(ctx, tenants.Signup{Email: name + "@example.com", Password: "correct horse battery"}, "192.0.2.1")
		if err != nil {
			t.Fatal(err)
		}
		accounts[name] = is.Account
		setup, err := before.SetUpMFA(ctx, is.Account)
		if err != nil {
			t.Fatal(err)
		}
		secrets[name] = setup.Secret
	}
	if _, err := before.EnableMFA(ctx, accounts["ada"], totpCode(t, secrets["ada"], clk.Now()), "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	oldSealer, _ := dataout.NewSealer(dataout.KeyFromToken(operatorToken))
	if err := store.SetUpMFA(ctx, accounts["eve"].ID, oldSealer.Seal([]byte(secrets["eve"]), "account-mfa/"+accounts["ada"].ID)); err != nil {
		t.Fatal(err)
	}
	signIn := func(svc *auth.Service) error {
		t.Helper()
		clk.Advance(31 * time.Second) // a code not used yet
		is, err := svc.LogIn(ctx, "ada@example.com", "correct horse battery", "192.0.2.1")
		if err != nil || is.MFAToken == "" {
			t.Fatalf("LogIn = %+v, %v; want a challenge", is, err)
		}
		_, err = svc.CompleteMFA(ctx, is.MFAToken, totpCode(t, secrets["ada"], clk.Now()), "192.0.2.1")
		return err
	}
	if err := signIn(current); err == nil {
		t.Fatal("a process without the earlier token signed ada in before the reseal")
	}

	if n, err := ring.ResealMFA(ctx); err != nil || n.Resealed != 2 || n.Failed != 1 {
		t.Fatalf("ResealMFA = %+v, %v; want 2 resealed (ada, bob), 1 failed (eve)", n, err)
	}
	if err := signIn(current); err != nil {
		t.Fatalf("after the reseal, without the earlier token: %v", err)
	}
	// bob's setup, sealed again, still turns two-factor on.
	if _, err := current.EnableMFA(ctx, accounts["bob"], totpCode(t, secrets["bob"], clk.Now()), "192.0.2.1"); err != nil {
		t.Fatalf("bob enables two-factor after the reseal: %v", err)
	}
	if n, err := ring.ResealMFA(ctx); err != nil || n.Resealed != 0 || n.Failed != 1 {
		t.Errorf("a second pass = %+v, %v; want nothing resealed, eve failed again", n, err)
	}
	if n, err := current.ResealMFA(ctx); err != nil || n != (dataout.ResealCount{}) {
		t.Errorf("with no earlier key = %+v, %v; want nothing done", n, err)
	}
}
