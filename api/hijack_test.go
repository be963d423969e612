package api_test

import (
	"net/http"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// The pre-account hijack: someone signs up with another person's email
// and a password of their own, and waits for the mailbox's owner to
// confirm the account (then trusted, and theirs too) or to take it over
// with "forgot password" (while they stay in). These tests take the
// attacker's view; docs/accounts.md has the design.

// TestVerifyEmailNeedsTheAccount: the mailed link verifies only for
// someone who holds the account: its own session (a click; that session
// stays, the others end) or its password (every session ends). Clicking
// alone — the mailbox's owner, who never chose the password, or a
// stranger signed in as someone else, or an API key — verifies nothing
// and spends nothing.
func TestVerifyEmailNeedsTheAccount(t *testing.T) {
	e := newEnv(t)
	seen := map[string]bool{}
	// The victim's email, the squatter's password.
	r := e.do("POST", "/v1/signup", "", map[string]string{"email": "victim@example.com", "password": "the squatter's password"})
	want(t, r, 201, "the squatter's sign-up")
	squatter := r.str("token")
	_, link := e.waitMail("victim@example.com", "Confirm your email", seen)
	stranger := e.signup("stranger")
	e.mustTenant(stranger, "stranger-t")
	_, strangerKey := e.mustKey(stranger.token, "stranger-t", tenants.RoleOwner)

	// The mailbox's owner clicks; so does a stranger, signed in as
	// themselves or with an API key.
	for name, bearer := range map[string]string{"no sign-in": "", "another account's session": stranger.token, "an API key": strangerKey,
		"a token that is no session": "not-a-token"} {
		wantProblem(t, e.do("POST", "/v1/verify", bearer, map[string]string{"token": link}), 400, "password_required", "password", "verify with "+name)
	}
	wantProblem(t, e.do("POST", "/v1/verify", "", map[string]string{"token": link, "password": "the victim's own guess"}), 400, "invalid", "password",
		"verify with a password that is not the account's")
	wantProblem(t, e.do("POST", "/v1/verify", stranger.token, map[string]string{"token": link, "password": "correct horse battery"}), 400, "invalid", "password",
		"verify signed in as a stranger, with the stranger's own password")
	if r := e.do("GET", "/v1/me", squatter, nil); r.json()["account"].(map[string]any)["email_verified"] != false {
		t.Errorf("the account after the clicks: %s, want it unverified", r.body)
	}
	if r := e.do("GET", "/v1/me", stranger.token, nil); r.status != 200 {
		t.Errorf("the stranger's session after the tries: %d, want it untouched", r.status)
	}

	// The account's own session: a click; it stays, the others end.
	ada := e.signupUnverified("ada")
	adaOther := e.login(ada.email, "correct horse battery")
	_, adaLink := e.waitMail(ada.email, "Confirm your email", seen)
	r = e.do("POST", "/v1/verify", ada.token, map[string]string{"token": adaLink})
	want(t, r, 200, "verify with the account's own session")
	if r.json()["email_verified"] != true {
		t.Errorf("verify answered %s, want email_verified true", r.body)
	}
	want(t, e.do("GET", "/v1/me", ada.token, nil), 200, "the session that verified")
	want(t, e.do("GET", "/v1/me", adaOther, nil), 401, "another session from before the verification")

	// The password, not signed in: every session ends.
	bo := e.signupUnverified("bo")
	_, boLink := e.waitMail(bo.email, "Confirm your email", seen)
	want(t, e.do("POST", "/v1/verify", "", map[string]string{"token": boLink, "password": "correct horse battery"}), 200, "verify with the password")
	want(t, e.do("GET", "/v1/me", bo.token, nil), 401, "bo's session from before the verification")
	wantProblem(t, e.do("POST", "/v1/verify", "", map[string]string{"token": boLink, "password": "correct horse battery"}), 400, "invalid_token", "", "the link again")

	// The squatter's link still works for the owner of the mailbox, who
	// takes the account with a reset instead (TestResetEndsTheUnverifiedPeriod).
	want(t, e.do("POST", "/v1/password/forgot", "", map[string]string{"email": "victim@example.com"}), 202, "forgot")
	_, reset := e.waitMail("victim@example.com", "Reset your Roost password", seen)
	want(t, e.do("POST", "/v1/password/reset", "", map[string]string{"token": reset, "password": "the owner's own password"}), 204, "reset")
	wantProblem(t, e.do("POST", "/v1/verify", "", map[string]string{"token": link, "password": "the squatter's password"}), 400, "invalid_token", "",
		"the squatter's password with a link mailed before the reset")
	want(t, e.do("GET", "/v1/me", squatter, nil), 401, "the squatter's session after the reset")
}

// TestVerifyEmailPasswordThrottled: wrong passwords on a verify link are
// failed logins of the account: past the budget they wait (429), so a link
// is no way around the login throttle.
func TestVerifyEmailPasswordThrottled(t *testing.T) {
	e := newEnv(t)
	ada := e.signupUnverified("ada")
	_, link := e.waitMail(ada.email, "Confirm your email", map[string]bool{})
	var last response
	for range 12 {
		last = e.do("POST", "/v1/verify", "", map[string]string{"token": link, "password": "a wrong password"})
		if last.status == http.StatusTooManyRequests {
			break
		}
	}
	wantProblem(t, last, 429, "too_many_attempts", "", "wrong passwords on a verify link past the login budget")
	if r := e.do("POST", "/v1/login", "", map[string]string{"email": ada.email, "password": "a wrong password"}); r.status != 429 {
		t.Errorf("a login after the verify link's wrong passwords: %d, want 429 (one budget)", r.status)
	}
}

// TestResetEndsTheUnverifiedPeriod: the squatter of an unverified account
// turned two-factor on, made an API key and holds a session and a
// two-factor challenge. The mailbox's owner resets the password: the
// session, the key and the challenge stop working, two-factor is off (it
// was the squatter's), and the owner signs in with the new password alone.
func TestResetEndsTheUnverifiedPeriod(t *testing.T) {
	e := newEnv(t)
	seen := map[string]bool{}
	squatter := e.signupUnverified("victim")
	e.mustTenant(squatter, "squat")
	_, key := e.mustKey(squatter.token, "squat", tenants.RoleOwner)
	secret, _ := e.enableMFA(squatter)
	challenge := e.challenge(squatter)

	want(t, e.do("POST", "/v1/password/forgot", "", map[string]string{"email": squatter.email}), 202, "forgot")
	_, tok := e.waitMail(squatter.email, "Reset your Roost password", seen)
	want(t, e.do("POST", "/v1/password/reset", "", map[string]string{"token": tok, "password": "the owner's own password"}), 204, "reset")

	want(t, e.do("GET", "/v1/me", squatter.token, nil), 401, "the squatter's session after the reset")
	want(t, e.do("GET", "/v1/tenants/squat", key, nil), 401, "the squatter's API key after the reset")
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": challenge, "code": code(t, secret, e.clock.Now())}), 401, "unauthorized", "",
		"the squatter's two-factor challenge from before the reset")
	want(t, e.do("POST", "/v1/login", "", map[string]string{"email": squatter.email, "password": "correct horse battery"}), 401, "the squatter's password")
	r := e.do("POST", "/v1/login", "", map[string]string{"email": squatter.email, "password": "the owner's own password"})
	want(t, r, 200, "the owner's login")
	if r.str("token") == "" || r.json()["mfa_required"] == true {
		t.Fatalf("the owner's login answered %s, want a session (the squatter's two-factor is gone)", r.body)
	}
	owner := r.str("token")
	if r := e.do("GET", "/v1/me", owner, nil); r.json()["account"].(map[string]any)["email_verified"] != true {
		t.Errorf("after the reset: %s, want the email verified", r.body)
	}
	if r := e.do("GET", "/v1/me/mfa", owner, nil); r.json()["enabled"] != false {
		t.Errorf("two-factor after the reset: %s, want it off", r.body)
	}
	es, _, err := e.store.AccountAudit(t.Context(), squatter.id, tenants.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range es {
		actions = append(actions, e.Action)
	}
	if len(actions) < 2 || actions[0] != "account.password_reset" || actions[1] != "account.mfa.disable" {
		t.Errorf("the account's audit, newest first: %v, want account.password_reset, account.mfa.disable", actions)
	}
}

// TestResetRefusesEarlierChallenges: for a verified account with two-factor
// on, a reset keeps two-factor and the API keys, but a challenge earned
// with the old password before the reset cannot be finished after it, even
// with a right code; one earned with the new password can.
func TestResetRefusesEarlierChallenges(t *testing.T) {
	e := newEnv(t)
	ada := e.signup("ada")
	e.mustTenant(ada, "ada-t")
	_, key := e.mustKey(ada.token, "ada-t", tenants.RoleViewer)
	secret, _ := e.enableMFA(ada)
	early := e.challenge(ada)
	// Setting two-factor up again is refused while on; a setup made before
	// would be pending, and a reset would drop it (testFirstProofOfEmail).
	want(t, e.do("POST", "/v1/password/forgot", "", map[string]string{"email": ada.email}), 202, "forgot")
	_, tok := e.waitMail(ada.email, "Reset your Roost password", map[string]bool{})
	want(t, e.do("POST", "/v1/password/reset", "", map[string]string{"token": tok, "password": "a brand new password"}), 204, "reset")
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": early, "code": code(t, secret, e.clock.Now())}), 401, "unauthorized", "",
		"a challenge from before the reset")
	want(t, e.do("GET", "/v1/tenants/ada-t", key, nil), 200, "a verified account's API key after its reset")
	r := e.do("POST", "/v1/login", "", map[string]string{"email": ada.email, "password": "a brand new password"})
	want(t, r, 200, "login with the new password")
	if r.json()["mfa_required"] != true {
		t.Fatalf("login after the reset answered %s, want a two-factor challenge (it stays on)", r.body)
	}
	e.clock.Advance(30 * 1e9)
	want(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": r.str("mfa_token"), "code": code(t, secret, e.clock.Now())}), 200,
		"a challenge from after the reset")
}
