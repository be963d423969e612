package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testFirstProofOfEmail: an account is usable before its email is proved,
// so by whoever signed up with that email. The first proof of the mailbox
// ends what was started before it. A verification (made by someone who
// holds the account) ends every session but the one kept and a two-factor
// setup not confirmed; a reset that is the first proof also ends the
// two-factor sign-in that was on and the API keys made on the account's
// behalf, in every tenant, audited. A reset of a verified account ends
// sessions and a pending setup, but keeps its two-factor and keys.
func testFirstProofOfEmail(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	now := time.Now()
	session := func(a tenants.Account) tenants.Session {
		t.Helper()
		se, err := s.CreateSession(ctx, tenants.SessionAccount, a.ID, "", now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return se
	}
	wantOpen := func(what string, se tenants.Session, open bool) {
		t.Helper()
		_, err := s.Session(ctx, se.ID, now)
		if open && err != nil {
			t.Errorf("%s: %v, want it open", what, err)
		}
		if !open && !errors.Is(err, tenants.ErrUnauthorized) {
			t.Errorf("%s: %v, want it ended", what, err)
		}
	}
	setUpMFA := func(a tenants.Account, enable bool) {
		t.Helper()
		if err := s.SetUpMFA(ctx, a.ID, "sealed-"+a.ID); err != nil {
			t.Fatal(err)
		}
		if enable {
			if err := s.EnableMFA(ctx, a.ID, 100, []string{tenants.HashRecoveryCode("aaaa-bbbb-cccc-dddd")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantMFA := func(what string, a tenants.Account, want bool) {
		t.Helper()
		_, err := s.MFA(ctx, a.ID)
		if want && err != nil {
			t.Errorf("%s: two-factor state %v, want it kept", what, err)
		}
		if !want && !errors.Is(err, tenants.ErrNotFound) {
			t.Errorf("%s: two-factor state %v, want none", what, err)
		}
	}
	key := func(a tenants.Account, tenant string) string {
		t.Helper()
		_, tok, err := s.CreateAPIKey(ctx, tenant, tenants.APIKeyInput{Name: "k"}, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	wantKey := func(what, tok string, works bool) {
		t.Helper()
		_, err := s.AuthenticateAPIKey(ctx, tok)
		if works && err != nil {
			t.Errorf("%s: %v, want it working", what, err)
		}
		if !works && !errors.Is(err, tenants.ErrUnauthorized) {
			t.Errorf("%s: %v, want it revoked", what, err)
		}
	}
	reset := func(a tenants.Account) tenants.ResetCleared {
		t.Helper()
		_, tok, err := s.IssueResetToken(ctx, a.Email)
		if err != nil {
			t.Fatal(err)
		}
		got, cleared, err := s.ResetPassword(ctx, tok, "the owner's new password")
		if err != nil || !got.EmailVerified {
			t.Fatalf("ResetPassword(%s): %+v, %v; want it verified", a.Email, got, err)
		}
		return cleared
	}

	// Someone signs up with the victim's email and sets things up.
	victim := mustAccount(t, s, "victim@example.com")
	bystander := mustVerified(t, s, "bystander@example.com")
	mustTenant(t, s, victim, "hijack-t")
	mustTenant(t, s, bystander, "by-t")
	squatter := session(victim)
	setUpMFA(victim, true)
	squatterKey, bystanderKey := key(victim, "hijack-t"), key(bystander, "by-t")
	bystanderSession := session(bystander)
	_, oldLink, err := s.IssueVerifyToken(ctx, victim.ID)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := s.Account(ctx, victim.ID)

	// The mailbox's owner resets the password.
	cleared := reset(victim)
	if cleared != (tenants.ResetCleared{MFA: true, APIKeys: 1}) {
		t.Errorf("the first-proof reset cleared %+v, want two-factor and 1 API key", cleared)
	}
	wantOpen("the squatter's session after the reset", squatter, false)
	wantMFA("the squatter's two-factor after the reset", victim, false)
	wantKey("the squatter's API key after the reset", squatterKey, false)
	wantKey("another account's API key", bystanderKey, true)
	wantOpen("another account's session", bystanderSession, true)
	_, err = s.VerifyEmail(ctx, oldLink, "")
	wantErr(t, "a verify link mailed before the reset", err, tenants.ErrUnauthorized)
	if after, _ := s.Account(ctx, victim.ID); after.CredentialStamp() == before.CredentialStamp() || after.CredentialStamp() == "" {
		t.Errorf("the credential stamp %q did not change with the reset (was %q)", after.CredentialStamp(), before.CredentialStamp())
	}
	es, _, _ := s.AuditWhere(ctx, "hijack-t", tenants.AuditFilter{Action: "api_key.delete"}, tenants.Page{})
	if len(es) != 1 || es[0].Actor != "account:"+victim.ID {
		t.Errorf("the tenant's audit of the revoked key: %+v, want one api_key.delete by the account", es)
	}
	es, _, _ = s.AccountAudit(ctx, victim.ID, tenants.Page{})
	var actions []string
	for _, e := range es {
		actions = append(actions, e.Action)
	}
	if len(actions) < 2 || actions[0] != "account.password_reset" || actions[1] != "account.mfa.disable" {
		t.Errorf("the account's newest audit = %v, want account.password_reset, account.mfa.disable", actions)
	}

	// A verified account's reset keeps what its owner set up, but ends a
	// setup not confirmed and every session.
	owner := mustVerified(t, s, "owner@example.com")
	mustTenant(t, s, owner, "owner-t")
	setUpMFA(owner, true)
	ownerKey := key(owner, "owner-t")
	ownerSession := session(owner)
	if c := reset(owner); c != (tenants.ResetCleared{}) {
		t.Errorf("a verified account's reset cleared %+v, want nothing", c)
	}
	wantMFA("a verified account's two-factor after a reset", owner, true)
	wantKey("a verified account's API key after a reset", ownerKey, true)
	wantOpen("a verified account's session after a reset", ownerSession, false)
	pending := mustVerified(t, s, "pending@example.com")
	setUpMFA(pending, false)
	reset(pending)
	wantMFA("a two-factor setup not confirmed, after a reset", pending, false)

	// The first verification ends every session but the one kept, and a
	// pending setup; it keeps the keys (whoever verified holds the account).
	eve := mustAccount(t, s, "eve@example.com")
	mustTenant(t, s, eve, "eve-t")
	eveKey := key(eve, "eve-t")
	kept, other := session(eve), session(eve)
	setUpMFA(eve, false)
	_, link, err := s.IssueVerifyToken(ctx, eve.ID)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := s.VerifyTokenAccount(ctx, link); err != nil || a.ID != eve.ID {
		t.Fatalf("VerifyTokenAccount: %+v, %v; want eve's", a, err)
	}
	_, err = s.VerifyTokenAccount(ctx, link+"x")
	wantErr(t, "VerifyTokenAccount with a wrong secret", err, tenants.ErrUnauthorized)
	if got, err := s.VerifyEmail(ctx, link, kept.ID); err != nil || !got.EmailVerified {
		t.Fatalf("VerifyEmail after VerifyTokenAccount: %+v, %v; want verified (looking spends nothing)", got, err)
	}
	wantOpen("the session that verified", kept, true)
	wantOpen("another session of the account, from before", other, false)
	wantMFA("a two-factor setup not confirmed, after the verification", eve, false)
	wantKey("the account's API key after its verification", eveKey, true)
	_, err = s.VerifyTokenAccount(ctx, link)
	wantErr(t, "VerifyTokenAccount of a spent link", err, tenants.ErrUnauthorized)
}
