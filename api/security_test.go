package api_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/api"
	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/tenants"
)

// withAuth configures the API's auth front with mod applied.
func withAuth(t *testing.T, mod func(*auth.Config)) func(*api.Config) {
	return func(cfg *api.Config) {
		ac := auth.Config{Store: cfg.Store, SigningKey: cfg.SigningKey, AdminToken: cfg.AdminToken, Now: cfg.Now, Log: cfg.Log}
		mod(&ac)
		a, err := auth.New(ac)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Auth = a
	}
}

// TestSignupTakenEmail: a sign-up with an email that has an account is
// answered as a login would be, never "this email exists": with the
// account's password, the same 201 and shape as a new account (a working
// session for it); with another, exactly a failed login's answer.
func TestSignupTakenEmail(t *testing.T) {
	e := newEnv(t)
	creds := map[string]string{"email": "ada@example.com", "password": "correct horse battery"}
	first := e.do("POST", "/v1/signup", "", creds)
	want(t, first, 201, "sign-up of a new email")
	again := e.do("POST", "/v1/signup", "", creds)
	want(t, again, 201, "sign-up of a taken email with its password")
	if keys(first.json()) != keys(again.json()) || again.json()["account"].(map[string]any)["id"] != first.json()["account"].(map[string]any)["id"] {
		t.Errorf("the two sign-ups' answers differ in shape or account:\n%s\n%s", first.body, again.body)
	}
	want(t, e.do("GET", "/v1/me", again.str("token"), nil), 200, "the session the second sign-up started")

	taken := e.do("POST", "/v1/signup", "", map[string]string{"email": "ada@example.com", "password": "someone else's guess"})
	failed := e.do("POST", "/v1/login", "", map[string]string{"email": "nobody@example.com", "password": "someone else's guess"})
	wantProblem(t, taken, 401, "unauthorized", "", "sign-up of a taken email with another password")
	if taken.str("detail") != failed.str("detail") || taken.str("code") != failed.str("code") || taken.status != failed.status {
		t.Errorf("taken email at sign-up %d %s, failed login %d %s: want the same answer", taken.status, taken.body, failed.status, failed.body)
	}
	if strings.Contains(string(taken.body), "exist") {
		t.Errorf("the answer says the email exists: %s", taken.body)
	}
}

func keys(m map[string]any) string {
	return fmt.Sprint(slices.Sorted(maps.Keys(m)))
}

// TestSignupEveryAttemptCounts: failed sign-ups count as much as ones that
// succeed (each may hash a password), per address; and all addresses
// together are held to the process's hourly total.
func TestSignupEveryAttemptCounts(t *testing.T) {
	e := newEnvWith(t, withAuth(t, func(c *auth.Config) { c.SignupsPerHour = 40 }))
	for i := range 30 {
		r := e.do("POST", "/v1/signup", "", map[string]string{"email": fmt.Sprintf("bad%d@example.com", i), "password": "short"})
		wantProblem(t, r, 400, "invalid", "password", fmt.Sprintf("bad sign-up %d", i))
	}
	r := e.do("POST", "/v1/signup", "", map[string]string{"email": "good@example.com", "password": "correct horse battery"})
	wantProblem(t, r, 429, "too_many_attempts", "", "a good sign-up after 30 bad ones from one address")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// The total: 40 an hour from everyone; 30 are spent.
	for i := range 10 {
		want(t, e.from(fmt.Sprintf("127.0.1.%d", i+1)).do("POST", "/v1/signup", "", map[string]string{"email": fmt.Sprintf("ok%d@example.com", i), "password": "correct horse battery"}), 201, "a sign-up from another address")
	}
	wantProblem(t, e.from("127.0.2.1").do("POST", "/v1/signup", "", map[string]string{"email": "late@example.com", "password": "correct horse battery"}),
		429, "too_many_attempts", "", "a sign-up past the hourly total, from a fresh address")
	e.clock.Advance(61 * time.Minute)
	want(t, e.from("127.0.2.1").do("POST", "/v1/signup", "", map[string]string{"email": "late@example.com", "password": "correct horse battery"}), 201, "an hour later")
}

// TestLogout: POST /v1/logout ends the session its token carries, and only
// that one; an API key is not a session; an impersonation token's session
// ends too.
func TestLogout(t *testing.T) {
	e := newEnv(t)
	u, other := e.signup("ada"), e.signup("bob")
	e.mustTenant(u, "acme")
	second := e.do("POST", "/v1/login", "", map[string]string{"email": u.email, "password": "correct horse battery"}).str("token")
	want(t, e.do("POST", "/v1/logout", u.token, nil), 204, "logout")
	wantProblem(t, e.do("GET", "/v1/me", u.token, nil), 401, "unauthorized", "", "the token after logout")
	wantProblem(t, e.do("GET", "/v1/tenants/acme", u.token, nil), 401, "unauthorized", "", "a tenant route after logout")
	wantProblem(t, e.do("POST", "/v1/logout", u.token, nil), 401, "unauthorized", "", "logout twice")
	want(t, e.do("GET", "/v1/me", second, nil), 200, "the account's other session")
	want(t, e.do("GET", "/v1/me", other.token, nil), 200, "another account's session")

	_, key := e.mustKey(second, "acme", tenants.RoleViewer)
	wantProblem(t, e.do("POST", "/v1/logout", key, nil), 400, "not_a_session", "", "an API key logs out")
	want(t, e.do("GET", "/v1/me", key, nil), 200, "the key after its logout was refused")

	imp := e.do("POST", "/v1/admin/tenants/acme/impersonate", adminToken, map[string]string{"reason": "ticket 7"}).str("token")
	want(t, e.do("GET", "/v1/tenants/acme", imp, nil), 200, "impersonating")
	want(t, e.do("POST", "/v1/logout", imp, nil), 204, "the impersonation logs out")
	wantProblem(t, e.do("GET", "/v1/tenants/acme", imp, nil), 401, "unauthorized", "", "the impersonation token after logout")
}

// TestMemberAddSameAnswer: adding an email answers the same whether or not
// an account has it; the added person is told (GET /v1/me) and may leave;
// adds are throttled per caller and per tenant, each tenant on its own.
func TestMemberAddSameAnswer(t *testing.T) {
	e := newEnv(t)
	owner, bob, carol := e.signup("owner"), e.signup("bob"), e.signup("carol")
	e.mustTenant(owner, "acme")
	e.mustTenant(carol, "globex")
	known := e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": bob.email, "role": "viewer"})
	unknown := e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": "nobody-here@example.com", "role": "viewer"})
	want(t, known, 202, "add an account")
	want(t, unknown, 202, "add an email no account has")
	if a, b := strings.Replace(string(known.body), bob.email, "X", 1), strings.Replace(string(unknown.body), "nobody-here@example.com", "X", 1); a != b {
		t.Errorf("the answers differ beyond the email:\n%s\n%s", known.body, unknown.body)
	}
	// Bob is told, and nobody else is.
	me := e.do("GET", "/v1/me", bob.token, nil).json()
	ns, _ := me["notices"].([]any)
	if len(ns) != 1 || ns[0].(map[string]any)["tenant"] != "acme" || ns[0].(map[string]any)["by"] != owner.email || ns[0].(map[string]any)["kind"] != "member.added" {
		t.Errorf("bob's notices: %v", me["notices"])
	}
	if n := e.do("GET", "/v1/me", carol.token, nil).json()["notices"]; n != nil {
		t.Errorf("carol's notices: %v, want none", n)
	}
	// Bob did not ask to be added: he may leave, as a viewer.
	want(t, e.do("DELETE", "/v1/tenants/acme/members/"+bob.id, bob.token, nil), 204, "bob leaves")
	want(t, e.do("GET", "/v1/tenants/acme", bob.token, nil), 404, "bob after leaving")

	// 30 adds an hour per caller: the owner has made 2.
	admin := e.signup("admin")
	want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": admin.email, "role": "admin"}), 202, "add an admin")
	for i := range 27 {
		want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": fmt.Sprintf("probe%d@example.com", i), "role": "viewer"}), 202, "probe")
	}
	r := e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": "probe-x@example.com", "role": "viewer"})
	wantProblem(t, r, 429, "too_many_attempts", "", "the owner's 31st add")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// 60 an hour per tenant: the admin may add 30 more, then nobody may.
	for i := range 30 {
		want(t, e.do("POST", "/v1/tenants/acme/members", admin.token, map[string]string{"email": fmt.Sprintf("more%d@example.com", i), "role": "viewer"}), 202, "admin's add")
	}
	_, key := e.mustKey(owner.token, "acme", tenants.RoleAdmin) // made before the owner's budget mattered? keys are not throttled
	wantProblem(t, e.do("POST", "/v1/tenants/acme/members", key, map[string]string{"email": "k@example.com", "role": "viewer"}), 429, "too_many_attempts", "", "a fresh caller past the tenant's 60")
	// Another tenant has its own budget.
	want(t, e.do("POST", "/v1/tenants/globex/members", carol.token, map[string]string{"email": "g@example.com", "role": "viewer"}), 202, "another tenant's add")
}

// TestRemovedAdminKeyStops: the API keys an admin made end when the admin
// is removed or leaves, unless an owner keeps them; keys it made in another
// tenant, or through a key of its own, follow the same rule.
func TestRemovedAdminKeyStops(t *testing.T) {
	e := newEnv(t)
	owner, admin := e.signup("owner"), e.signup("admin")
	e.mustTenant(owner, "acme")
	e.mustTenant(owner, "globex")
	for _, tn := range []string{"acme", "globex"} {
		want(t, e.do("POST", "/v1/tenants/"+tn+"/members", owner.token, map[string]string{"email": admin.email, "role": "admin"}), 202, "add the admin")
	}
	_, adminKey := e.mustKey(admin.token, "acme", tenants.RoleAdmin)
	_, keysKey := e.mustKey(adminKey, "acme", tenants.RoleViewer) // made by the admin's key: the admin's too
	_, globexKey := e.mustKey(admin.token, "globex", tenants.RoleAdmin)
	_, ownerKey := e.mustKey(owner.token, "acme", tenants.RoleAdmin)
	r := e.do("GET", "/v1/tenants/acme/api-keys", owner.token, nil)
	if !strings.Contains(string(r.body), `"created_by":"`+admin.id+`"`) {
		t.Errorf("the key list does not name the admin as a creator: %s", r.body)
	}
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/members/"+admin.id+"?keep_api_keys=true", adminKey, nil), 403, "forbidden", "", "an admin key keeps the admin's keys")
	want(t, e.do("DELETE", "/v1/tenants/acme/members/"+admin.id, owner.token, nil), 204, "remove the admin")
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices", adminKey, nil), 401, "unauthorized", "", "the removed admin's key")
	wantProblem(t, e.do("GET", "/v1/tenants/acme/devices", keysKey, nil), 401, "unauthorized", "", "a key the removed admin's key made")
	want(t, e.do("GET", "/v1/tenants/acme/devices", ownerKey, nil), 200, "the owner's key")
	want(t, e.do("GET", "/v1/tenants/globex/devices", globexKey, nil), 200, "the admin's key in a tenant it is still in")
	// The owner may keep them.
	want(t, e.do("DELETE", "/v1/tenants/globex/members/"+admin.id+"?keep_api_keys=true", owner.token, nil), 204, "remove, keeping keys")
	want(t, e.do("GET", "/v1/tenants/globex/devices", globexKey, nil), 200, "a kept key")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/members/x?keep_api_keys=maybe", owner.token, nil), 400, "invalid", "keep_api_keys", "keep_api_keys=maybe")
}

// TestTenantLimits: an account owns at most three free tenants (a paid one
// does not count) and creates at most ten a day, deleted ones included.
func TestTenantLimits(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	for _, s := range []string{"ten-1", "ten-2", "ten-3"} {
		e.mustTenant(u, s)
	}
	r := e.do("POST", "/v1/tenants", u.token, map[string]string{"slug": "ten-4"})
	wantProblem(t, r, 403, "quota_exceeded", "", "a fourth free tenant")
	if r.json()["quota"] != "max_free_tenants" || r.json()["limit"] != float64(3) {
		t.Errorf("quota problem: %s", r.body)
	}
	want(t, e.do("POST", "/v1/tenants", e.signup("other").token, map[string]string{"slug": "other-1"}), 201, "another account's tenant")
	want(t, e.do("PATCH", "/v1/admin/tenants/ten-1", adminToken, map[string]any{"plan": "pro"}), 200, "ten-1 goes pro")
	e.mustTenant(u, "ten-4")
	want(t, e.do("DELETE", "/v1/tenants/ten-4", u.token, nil), 204, "delete ten-4")
	// Deleted tenants count towards the day's ten: four are made.
	for i := range 6 {
		slug := fmt.Sprintf("tmp%d", i)
		want(t, e.do("POST", "/v1/tenants", u.token, map[string]string{"slug": slug}), 201, "create "+slug)
		want(t, e.do("DELETE", "/v1/tenants/"+slug, u.token, nil), 204, "delete "+slug)
	}
	r = e.do("POST", "/v1/tenants", u.token, map[string]string{"slug": "eleventh"})
	wantProblem(t, r, 429, "too_many_attempts", "", "an eleventh tenant in a day")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
}

// TestOperatorTokenThrottle: wrong operator tokens on /v1/admin/* and
// /metrics are counted per address: ten, then 429 with Retry-After; the
// right token is never refused, not even from that address; other
// addresses and valid sessions are not counted against.
func TestOperatorTokenThrottle(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	guesser, bystander := e.from("127.0.0.2"), e.from("127.0.0.3")
	for i := range 10 {
		wantProblem(t, guesser.do("GET", "/v1/admin/stats", fmt.Sprintf("rop_guess-%02d-0123456789", i), nil), 401, "unauthorized", "", fmt.Sprintf("guess %d", i))
	}
	r := guesser.do("GET", "/v1/admin/stats", "rop_guess-10-0123456789", nil)
	wantProblem(t, r, 429, "too_many_attempts", "", "the eleventh wrong token")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	wantProblem(t, guesser.do("GET", "/metrics", "rop_guess-11-0123456789", nil), 429, "too_many_attempts", "", "/metrics from the same address")
	want(t, guesser.do("GET", "/v1/admin/stats", adminToken, nil), 200, "the right token from the throttled address")
	want(t, guesser.do("GET", "/metrics", adminToken, nil), 503, "/metrics with the right token from the throttled address (no metrics in this test: 503, not 429)")
	wantProblem(t, bystander.do("GET", "/v1/admin/stats", "rop_other-0123456789", nil), 401, "unauthorized", "", "a wrong token from another address")
	for i := range 12 {
		wantProblem(t, bystander.do("GET", "/v1/admin/stats", u.token, nil), 403, "forbidden", "", fmt.Sprintf("a session on the admin API %d", i))
	}
	e.clock.Advance(2 * time.Second)
	wantProblem(t, guesser.do("GET", "/v1/admin/stats", "rop_guess-12-0123456789", nil), 401, "unauthorized", "", "after the wait")
}

// TestInvalidUTF8: a JSON body with bytes that are not UTF-8 is refused
// (bad_json, naming the field), not stored with U+FFFD in their place.
func TestInvalidUTF8(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	for _, tc := range []struct {
		name, body, field string
	}{
		{"a name", "{\"name\": \"sens\xffor\"}", "name"},
		{"a metadata value", "{\"name\": \"ok\", \"metadata\": {\"room\": \"k\xc3\x28itchen\"}}", "metadata.room"},
		{"a truncated sequence", "{\"name\": \"ok2\", \"metadata\": {\"a\": \"x\", \"floor\": \"\xe2\x82\"}}", "metadata.floor"},
		{"a key", "{\"name\": \"ok3\", \"metadata\": {\"r\xfeom\": \"x\"}}", ""},
		{"an overlong encoding", "{\"name\": \"\xc0\xaf\"}", "name"},
		{"a surrogate", "{\"name\": \"\xed\xa0\x80\"}", "name"},
	} {
		r := e.do("POST", "/v1/tenants/acme/devices", u.token, []byte(tc.body))
		wantProblem(t, r, 400, "bad_json", tc.field, tc.name)
		if tc.field == "" && r.json()["field"] != nil {
			t.Errorf("%s: field %v, want none", tc.name, r.json()["field"])
		}
	}
	if r := e.do("GET", "/v1/tenants/acme/devices", u.token, nil); len(r.json()["items"].([]any)) != 0 {
		t.Errorf("devices were made: %s", r.body)
	}
	// Valid UTF-8, U+FFFD itself included, is fine.
	want(t, e.do("POST", "/v1/tenants/acme/devices", u.token, []byte("{\"name\": \"d1\", \"metadata\": {\"note\": \"caf\xc3\xa9 \xef\xbf\xbd\"}}")), 201, "valid UTF-8")
	wantProblem(t, e.do("POST", "/v1/signup", "", []byte("{\"email\": \"x@example.com\", \"password\": \"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\"}")), 400, "bad_json", "password", "a password")
}

// TestLoginNeverRefusesValidCredentials: a stranger's failed guesses do
// not lock an account's owner out where it usually signs in: the owner's
// address has a budget of its own. From an address the account never
// signed in from, the account-wide budget (what bounds a guesser spread
// over many addresses) applies.
func TestLoginNeverRefusesValidCredentials(t *testing.T) {
	e := newEnv(t)
	victim := e.signup("victim") // from 127.0.0.1, which it now signed in from
	right := map[string]string{"email": victim.email, "password": "correct horse battery"}
	for i := range 30 {
		addr := fmt.Sprintf("127.0.3.%d", i%3+1) // three addresses, ten guesses each
		r := e.from(addr).do("POST", "/v1/login", "", map[string]string{"email": victim.email, "password": fmt.Sprintf("guess number %d", i)})
		if r.status != 401 && r.status != 429 {
			t.Fatalf("guess %d: %d %s", i, r.status, r.body)
		}
	}
	wantProblem(t, e.from("127.0.3.1").do("POST", "/v1/login", "", map[string]string{"email": victim.email, "password": "guess again"}), 429, "too_many_attempts", "", "the guesser")
	want(t, e.do("POST", "/v1/login", "", right), 200, "the victim's right password from its own address")
	wantProblem(t, e.from("127.0.3.9").do("POST", "/v1/login", "", right), 429, "too_many_attempts", "", "the right password from an address never used, while the account is under attack")
	// The victim's success does not forgive the guessers.
	wantProblem(t, e.from("127.0.3.1").do("POST", "/v1/login", "", map[string]string{"email": victim.email, "password": "guess again"}), 429, "too_many_attempts", "", "the guesser after the victim's login")
}

// TestParallelLogins: 40 wrong logins at once for one account from one
// address: no more than the five free ones are evaluated (counted before
// the hash), the rest are 429.
func TestParallelLogins(t *testing.T) {
	e := newEnv(t)
	u := e.signup("victim")
	var wg sync.WaitGroup
	statuses := make([]int, 40)
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = e.do("POST", "/v1/login", "", map[string]string{"email": u.email, "password": fmt.Sprintf("wrong password %d", i)}).status
		}()
	}
	wg.Wait()
	evaluated := 0
	for _, s := range statuses {
		switch s {
		case 401:
			evaluated++
		case 429:
		default:
			t.Errorf("a parallel login: %d", s)
		}
	}
	if evaluated != 5 {
		t.Errorf("%d of 40 parallel wrong logins were evaluated, want 5", evaluated)
	}
}
