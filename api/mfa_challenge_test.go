package api_test

import (
	"net/http"
	"testing"
	"time"
)

// TestMFAChallengeOnceOverHTTP: POST /v1/login/mfa takes a challenge once.
// A wrong code leaves it for another try; after a right code has started a
// session, the challenge is refused as a forged one is, and the code sent
// with it is not spent by that.
func TestMFAChallengeOnceOverHTTP(t *testing.T) {
	e := newEnv(t)
	alice := e.signup("alice")
	secret, _ := e.enableMFA(alice)
	forged := e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": "forged", "code": "123456"})
	wantProblem(t, forged, http.StatusUnauthorized, "unauthorized", "", "a forged challenge")

	tok := e.challenge(alice)
	now := code(t, secret, e.clock.Now())
	wrong := "000000"
	if now == wrong {
		wrong = "000001"
	}
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": wrong}),
		http.StatusUnauthorized, "unauthorized", "", "a wrong code")
	r := e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": now})
	want(t, r, http.StatusOK, "the right code after a wrong one")
	want(t, e.do("GET", "/v1/me", r.str("token"), nil), http.StatusOK, "the session")

	e.clock.Advance(30 * time.Second)
	next := code(t, secret, e.clock.Now())
	r = e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": next})
	wantProblem(t, r, http.StatusUnauthorized, "unauthorized", "", "the spent challenge with the next code")
	if got, want := r.str("detail"), forged.str("detail"); got != want {
		t.Errorf("the spent challenge: detail %q, want a forged challenge's %q", got, want)
	}
	r = e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": e.challenge(alice), "code": next})
	want(t, r, http.StatusOK, "a new challenge with the code the spent one was refused with")
}
