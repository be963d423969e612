package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// code is the TOTP code of secret at t.
func code(t *testing.T, secret string, at time.Time) string { return testenv.TOTP(t, secret, at) }

// enableMFA turns two-factor sign-in on for u and returns the secret and
// the recovery codes.
func (e *env) enableMFA(u user) (string, []string) {
	e.t.Helper()
	r := e.do("POST", "/v1/me/mfa/setup", u.token, nil)
	want(e.t, r, http.StatusCreated, "set up two-factor")
	secret := r.str("secret")
	if !strings.HasPrefix(r.str("otpauth_url"), "otpauth://totp/") || len(secret) < 32 {
		e.t.Fatalf("setup answered %s", r.body)
	}
	r = e.do("POST", "/v1/me/mfa/enable", u.token, map[string]string{"code": code(e.t, secret, e.clock.Now())})
	want(e.t, r, http.StatusOK, "enable two-factor")
	var codes []string
	for _, c := range asSlice(r.json()["recovery_codes"]) {
		codes = append(codes, c.(string))
	}
	if len(codes) != tenants.RecoveryCodeCount {
		e.t.Fatalf("got %d recovery codes, want %d", len(codes), tenants.RecoveryCodeCount)
	}
	// The next code is of the next step: the one that enabled it is spent.
	e.clock.Advance(30 * time.Second)
	return secret, codes
}

// challenge logs u in with the password and returns the mfa_token.
func (e *env) challenge(u user) string {
	e.t.Helper()
	r := e.do("POST", "/v1/login", "", map[string]string{"email": u.email, "password": "correct horse battery"})
	want(e.t, r, http.StatusOK, "login")
	if r.json()["mfa_required"] != true || r.str("mfa_token") == "" || r.str("token") != "" {
		e.t.Fatalf("login of an account with two-factor on answered %s, want a challenge and no session", r.body)
	}
	return r.str("mfa_token")
}

// TestMFALogin: a TOTP secret is set up and confirmed with a code; from
// then on a login answers a challenge, which a current code or a recovery
// code completes, each once. Codes of the neighbouring steps pass (clock
// drift), older ones do not; a challenge expires after five minutes.
func TestMFALogin(t *testing.T) {
	e := newEnv(t)
	alice := e.signup("alice")
	r := e.do("GET", "/v1/me/mfa", alice.token, nil)
	want(t, r, 200, "two-factor state")
	if r.json()["enabled"] != false {
		t.Fatalf("a new account has two-factor on: %s", r.body)
	}
	wantProblem(t, e.do("POST", "/v1/me/mfa/enable", alice.token, map[string]string{"code": "123456"}), 409, "conflict", "", "enable before setup")
	r = e.do("POST", "/v1/me/mfa/setup", alice.token, nil)
	want(t, r, 201, "setup")
	secret := r.str("secret")
	// Not yet in force: a login still starts a session.
	r = e.do("POST", "/v1/login", "", map[string]string{"email": alice.email, "password": "correct horse battery"})
	want(t, r, 200, "login before enabling")
	if r.str("token") == "" {
		t.Fatalf("a login before enabling answered %s, want a session", r.body)
	}
	wrong := "000000"
	if code(t, secret, e.clock.Now()) == wrong {
		wrong = "000001"
	}
	wantProblem(t, e.do("POST", "/v1/me/mfa/enable", alice.token, map[string]string{"code": wrong}), 401, "unauthorized", "", "enable with a wrong code")
	used := code(t, secret, e.clock.Now())
	r = e.do("POST", "/v1/me/mfa/enable", alice.token, map[string]string{"code": used})
	want(t, r, 200, "enable")
	codes := asSlice(r.json()["recovery_codes"])
	if len(codes) != 10 {
		t.Fatalf("got %d recovery codes, want 10", len(codes))
	}
	wantProblem(t, e.do("POST", "/v1/me/mfa/setup", alice.token, nil), 409, "conflict", "", "set up again while on")

	// The code that enabled it does not sign in: each code works once.
	tok := e.challenge(alice)
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": used}), 401, "unauthorized", "", "the enabling code again")
	// A code of the step before the current one passes (drift).
	e.clock.Advance(60 * time.Second)
	r = e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now().Add(-30*time.Second))})
	want(t, r, 200, "login with the previous step's code")
	session := r.str("token")
	if session == "" {
		t.Fatalf("no session: %s", r.body)
	}
	want(t, e.do("GET", "/v1/me", session, nil), 200, "the session works")
	// The same code, and any older one, is refused; two steps back too.
	tok = e.challenge(alice)
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now().Add(-30*time.Second))}),
		401, "unauthorized", "", "the code again")
	e.clock.Advance(90 * time.Second)
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now().Add(-60*time.Second))}),
		401, "unauthorized", "", "a code two steps old")

	// A recovery code signs in once, in any case and with spaces.
	rc := codes[0].(string)
	r = e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": strings.ToUpper(strings.ReplaceAll(rc, "-", " "))})
	want(t, r, 200, "login with a recovery code")
	tok = e.challenge(alice)
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": rc}), 401, "unauthorized", "", "the recovery code again")
	r = e.do("GET", "/v1/me/mfa", alice.token, nil)
	if r.json()["enabled"] != true || r.json()["recovery_codes_left"] != float64(9) {
		t.Errorf("two-factor state after one recovery code: %s", r.body)
	}

	// Challenges: expired, forged, or a session token in its place.
	e.clock.Advance(6 * time.Minute)
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now())}), 401, "unauthorized", "", "an expired challenge")
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": session, "code": code(t, secret, e.clock.Now())}), 401, "unauthorized", "", "a session token as the challenge")
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": "x", "code": "1"}), 401, "unauthorized", "", "a forged challenge")
	// A challenge is no session.
	tok = e.challenge(alice)
	wantProblem(t, e.do("GET", "/v1/me", tok, nil), 401, "unauthorized", "", "the challenge as a bearer token")
	// Sign-up with the email and password answers the challenge too.
	r = e.do("POST", "/v1/signup", "", map[string]string{"email": alice.email, "password": "correct horse battery"})
	want(t, r, 200, "sign-up of an account with two-factor on")
	if r.json()["mfa_required"] != true || r.str("token") != "" {
		t.Errorf("sign-up answered %s, want a challenge", r.body)
	}

	// New recovery codes replace the old; turning off needs a code.
	e.clock.Advance(30 * time.Second)
	r = e.do("POST", "/v1/me/mfa/recovery-codes", alice.token, map[string]string{"code": code(t, secret, e.clock.Now())})
	want(t, r, 200, "new recovery codes")
	fresh := asSlice(r.json()["recovery_codes"])
	tok = e.challenge(alice)
	wantProblem(t, e.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": codes[1].(string)}), 401, "unauthorized", "", "an old recovery code")
	wantProblem(t, e.do("POST", "/v1/me/mfa/disable", alice.token, map[string]string{"code": "999999x"}), 401, "unauthorized", "", "turn off with a wrong code")
	want(t, e.do("POST", "/v1/me/mfa/disable", alice.token, map[string]string{"code": fresh[0].(string)}), 204, "turn off")
	r = e.do("POST", "/v1/login", "", map[string]string{"email": alice.email, "password": "correct horse battery"})
	if r.status != 200 || r.str("token") == "" {
		t.Errorf("login after turning off: %d %s, want a session", r.status, r.body)
	}

	// API keys have no two-factor.
	e.mustTenant(alice, "acme")
	_, key := e.mustKey(alice.token, "acme", tenants.RoleAdmin)
	wantProblem(t, e.do("POST", "/v1/me/mfa/setup", key, nil), 403, "forbidden", "", "an API key sets up two-factor")
	wantProblem(t, e.do("GET", "/v1/me/mfa", key, nil), 403, "forbidden", "", "an API key reads two-factor")
}

// TestMFAThrottleSharedWithLogin: wrong codes and wrong passwords of one
// account from one address spend one budget; a right code does not reset
// the wrong codes' own budget by a right password in between.
func TestMFAThrottleSharedWithLogin(t *testing.T) {
	e := newEnv(t)
	bob := e.signup("bob")
	secret, _ := e.enableMFA(bob)
	other := e.from("127.0.0.2")

	// Five wrong codes from one address: the sixth attempt, even with the
	// right code, waits; so does a password login from there.
	tok := other.challenge(bob)
	for i := range 5 {
		r := other.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": "abcd-efgh-" + string(rune('a'+i))})
		wantProblem(t, r, 401, "unauthorized", "", "a wrong code")
	}
	r := other.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now())})
	wantProblem(t, r, 429, "too_many_attempts", "", "the right code after five wrong ones")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	r = other.do("POST", "/v1/login", "", map[string]string{"email": bob.email, "password": "correct horse battery"})
	wantProblem(t, r, 429, "too_many_attempts", "", "a password login after five wrong codes")

	// Wrong passwords count against codes too: from a third address.
	third := e.from("127.0.0.3")
	tok = third.challenge(bob)
	for range 5 {
		wantProblem(t, third.do("POST", "/v1/login", "", map[string]string{"email": bob.email, "password": "wrong password!!"}), 401, "unauthorized", "", "a wrong password")
	}
	wantProblem(t, third.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now())}),
		429, "too_many_attempts", "", "a code after five wrong passwords")

	// The account's own second-factor budget: a right password between
	// wrong codes does not forgive them. Waits passed; from a fourth
	// address, alternating, the sixth wrong code in a row waits.
	e.clock.Advance(2 * time.Hour)
	fourth := e.from("127.0.0.4")
	for i := range 5 {
		tok = fourth.challenge(bob)
		wantProblem(t, fourth.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": "zzzz-zzzz-" + string(rune('a'+i))}),
			401, "unauthorized", "", "a wrong code after a right password")
	}
	tok = fourth.challenge(bob)
	wantProblem(t, fourth.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now())}),
		429, "too_many_attempts", "", "a code after five wrong ones, each after a right password")
	// Once the wait is over, a right code signs in and forgives.
	e.clock.Advance(2 * time.Second)
	r = fourth.do("POST", "/v1/login/mfa", "", map[string]string{"mfa_token": tok, "code": code(t, secret, e.clock.Now())})
	want(t, r, 200, "the right code after the wait")
}

// TestTenantRequiresMFA: an owner with two-factor on requires it of every
// member; a member without it is refused the tenant with 403 mfa_required
// until they turn it on. API keys are not affected. Only owners set it,
// and only with two-factor on themselves.
func TestTenantRequiresMFA(t *testing.T) {
	e := newEnv(t)
	owner, member := e.signup("owner"), e.signup("member")
	e.mustTenant(owner, "acme")
	e.mustDevice(owner.token, "acme", "d1")
	want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": member.email, "role": "admin"}), 202, "add member")
	_, key := e.mustKey(owner.token, "acme", tenants.RoleAdmin)

	r := e.do("GET", "/v1/tenants/acme/mfa", member.token, nil)
	want(t, r, 200, "read the requirement")
	if r.json()["required"] != false {
		t.Fatalf("requirement of a new tenant: %s", r.body)
	}
	wantProblem(t, e.do("PUT", "/v1/tenants/acme/mfa", owner.token, map[string]bool{"required": true}), 409, "conflict", "", "an owner without two-factor requires it")
	wantProblem(t, e.do("PUT", "/v1/tenants/acme/mfa", member.token, map[string]bool{"required": true}), 403, "forbidden", "", "an admin requires it")
	wantProblem(t, e.do("PUT", "/v1/tenants/acme/mfa", owner.token, map[string]any{}), 400, "invalid", "required", "no value")
	wantProblem(t, e.do("PUT", "/v1/tenants/acme/mfa", owner.token, map[string]any{"required": true, "tenant": "x"}), 400, "unknown_field", "tenant", "an extra field")

	secret, _ := e.enableMFA(owner)
	r = e.do("PUT", "/v1/tenants/acme/mfa", owner.token, map[string]bool{"required": true})
	want(t, r, 200, "require two-factor")
	for _, p := range []string{"", "/devices", "/devices/d1", "/members", "/mfa"} {
		wantProblem(t, e.do("GET", "/v1/tenants/acme"+p, member.token, nil), 403, "mfa_required", "", "a member without two-factor reads "+p)
	}
	wantProblem(t, e.do("POST", "/v1/tenants/acme/devices", member.token, map[string]string{"name": "d2"}), 403, "mfa_required", "", "a member without two-factor writes")
	want(t, e.do("GET", "/v1/tenants/acme/devices", owner.token, nil), 200, "the owner, who has it")
	want(t, e.do("GET", "/v1/tenants/acme/devices", key, nil), 200, "an API key")
	// The tenant is still listed: the member learns why it is closed.
	r = e.do("GET", "/v1/tenants", member.token, nil)
	want(t, r, 200, "list tenants")
	if !strings.Contains(string(r.body), `"acme"`) {
		t.Errorf("the tenant is not listed to its member: %s", r.body)
	}
	// The member turns it on (with the session they had) and is let in.
	e.enableMFA(member)
	want(t, e.do("GET", "/v1/tenants/acme/devices", member.token, nil), 200, "a member with two-factor on")

	// Requirement off again (owner): audited both ways.
	_ = secret
	want(t, e.do("PUT", "/v1/tenants/acme/mfa", owner.token, map[string]bool{"required": false}), 200, "stop requiring")
	r = e.do("GET", "/v1/tenants/acme/audit", owner.token, nil)
	for _, action := range []string{"tenant.mfa.require", "tenant.mfa.optional"} {
		if !strings.Contains(string(r.body), action) {
			t.Errorf("audit log lacks %s: %s", action, r.body)
		}
	}
}
