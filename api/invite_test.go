package api_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// seenInvites are the invite mails each env's tests read, by mail folder:
// each invite is read once. (A test reads its folder from one goroutine.)
var seenInvites sync.Map

// invite invites email to tenant as role and returns the invite's id and
// the token of the link mailed.
func (e *env) invite(token, tenant, email string, role tenants.Role) (string, string) {
	e.t.Helper()
	r := e.do("POST", "/v1/tenants/"+tenant+"/invites", token, map[string]string{"email": email, "role": string(role)})
	want(e.t, r, http.StatusCreated, "invite "+email)
	if strings.Contains(string(r.body), "rinv_") {
		e.t.Fatalf("the invite's answer holds its link's token: %s", r.body)
	}
	seen, _ := seenInvites.LoadOrStore(e.mailDir, map[string]bool{})
	m, tok := e.waitMail(strings.ToLower(email), "invited you to", seen.(map[string]bool))
	if tok == "" || !strings.Contains(m.Text, "/invite?token=") {
		e.t.Fatalf("the invite mail has no link:\n%s", m.Text)
	}
	return r.str("id"), tok
}

// TestInvites: an admin invites an email; the person signs up with it,
// verifies it and accepts, once, getting the role. Only the invited email
// accepts; revoked and expired invites do not work; pending invites are
// listed to admins only.
func TestInvites(t *testing.T) {
	e := newEnv(t)
	e.store.SetClock(e.clock.Now) // invites expire by the store's clock
	owner := e.signup("owner")
	e.mustTenant(owner, "acme")
	viewer := e.signup("viewer")
	want(t, e.do("POST", "/v1/tenants/acme/members", owner.token, map[string]string{"email": viewer.email, "role": "viewer"}), 202, "add viewer")

	id, tok := e.invite(owner.token, "acme", "New.Person@Example.com", tenants.RoleAdmin)
	r := e.do("GET", "/v1/tenants/acme/invites", owner.token, nil)
	want(t, r, 200, "list invites")
	items := asSlice(r.json()["items"])
	if len(items) != 1 || items[0].(map[string]any)["id"] != id || items[0].(map[string]any)["email"] != "new.person@example.com" {
		t.Fatalf("pending invites: %s", r.body)
	}
	want(t, e.do("GET", "/v1/tenants/acme/invites", viewer.token, nil), 200, "a viewer lists invites, as members")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/invites", viewer.token, map[string]string{"email": "x@example.com", "role": "viewer"}), 403, "forbidden", "", "a viewer invites")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/invites/"+id, viewer.token, nil), 403, "forbidden", "", "a viewer revokes")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/invites", owner.token, map[string]string{"email": viewer.email, "role": "admin"}), 409, "conflict", "", "invite a member")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/invites", owner.token, map[string]string{"email": "nope", "role": "admin"}), 400, "invalid", "email", "invite no email")
	wantProblem(t, e.do("POST", "/v1/tenants/acme/invites", owner.token, map[string]string{"email": "a@example.com", "role": "god"}), 400, "invalid", "role", "invite as no role")

	// The new person signs up with the invited email: until it is
	// verified, the invite waits.
	r = e.do("POST", "/v1/signup", "", map[string]string{"email": "new.person@example.com", "password": "correct horse battery"})
	want(t, r, 201, "sign up from the invite")
	newcomer := user{id: r.json()["account"].(map[string]any)["id"].(string), email: "new.person@example.com", token: r.str("token")}
	wantProblem(t, e.do("POST", "/v1/invites/accept", newcomer.token, map[string]string{"token": tok}), 403, "email_unverified", "", "accept unverified")
	// Someone else, verified, cannot take it.
	wantProblem(t, e.do("POST", "/v1/invites/accept", viewer.token, map[string]string{"token": tok}), 403, "forbidden", "", "accept with another email")
	e.verifyEmail(newcomer.id)
	r = e.do("POST", "/v1/invites/accept", newcomer.token, map[string]string{"token": tok})
	want(t, r, 200, "accept")
	if r.str("tenant") != "acme" || r.str("role") != "admin" {
		t.Errorf("accepted invite: %s", r.body)
	}
	want(t, e.do("GET", "/v1/tenants/acme/devices", newcomer.token, nil), 200, "the new member reads the tenant")
	wantProblem(t, e.do("POST", "/v1/invites/accept", newcomer.token, map[string]string{"token": tok}), 404, "not_found", "", "accept twice")
	if r := e.do("GET", "/v1/tenants/acme/invites", owner.token, nil); len(asSlice(r.json()["items"])) != 0 {
		t.Errorf("an accepted invite is still pending: %s", r.body)
	}

	// Admins cannot invite or revoke owners; owners can.
	wantProblem(t, e.do("POST", "/v1/tenants/acme/invites", newcomer.token, map[string]string{"email": "boss@example.com", "role": "owner"}), 403, "forbidden", "", "an admin invites an owner")
	bossID, bossTok := e.invite(owner.token, "acme", "boss@example.com", tenants.RoleOwner)
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/invites/"+bossID, newcomer.token, nil), 403, "forbidden", "", "an admin revokes an owner's invite")
	// Nor may an admin end it by inviting the same email as less.
	wantProblem(t, e.do("POST", "/v1/tenants/acme/invites", newcomer.token, map[string]string{"email": "boss@example.com", "role": "viewer"}), 403, "forbidden", "", "an admin replaces an owner's invite")
	if r := e.do("GET", "/v1/tenants/acme/invites", owner.token, nil); len(asSlice(r.json()["items"])) != 1 || asSlice(r.json()["items"])[0].(map[string]any)["id"] != bossID {
		t.Errorf("pending after an admin tried to replace the owner's invite: %s, want %s only", r.body, bossID)
	}
	want(t, e.do("DELETE", "/v1/tenants/acme/invites/"+bossID, owner.token, nil), 204, "revoke")
	wantProblem(t, e.do("DELETE", "/v1/tenants/acme/invites/"+bossID, owner.token, nil), 404, "not_found", "", "revoke twice")
	boss := e.do("POST", "/v1/signup", "", map[string]string{"email": "boss@example.com", "password": "correct horse battery"})
	e.verifyEmail(boss.json()["account"].(map[string]any)["id"].(string))
	wantProblem(t, e.do("POST", "/v1/invites/accept", boss.str("token"), map[string]string{"token": bossTok}), 404, "not_found", "", "accept a revoked invite")

	// Expired after 7 days.
	_, lateTok := e.invite(owner.token, "acme", "boss@example.com", tenants.RoleViewer)
	e.clock.Advance(tenants.InviteTTL + time.Second)
	owner.token = e.login(owner.email, "correct horse battery")
	bossToken := e.login("boss@example.com", "correct horse battery")
	wantProblem(t, e.do("POST", "/v1/invites/accept", bossToken, map[string]string{"token": lateTok}), 404, "not_found", "", "accept an expired invite")
	if r := e.do("GET", "/v1/tenants/acme/invites", owner.token, nil); len(asSlice(r.json()["items"])) != 0 {
		t.Errorf("an expired invite is listed: %s", r.body)
	}

	// Made-up tokens, and API keys, accept nothing.
	wantProblem(t, e.do("POST", "/v1/invites/accept", bossToken, map[string]string{"token": "rinv_madeup"}), 404, "not_found", "", "a made-up token")
	_, key := e.mustKey(owner.token, "acme", tenants.RoleAdmin)
	wantProblem(t, e.do("POST", "/v1/invites/accept", key, map[string]string{"token": lateTok}), 403, "forbidden", "", "an API key accepts")

	// The audit log has the story.
	r = e.do("GET", "/v1/tenants/acme/audit", owner.token, nil)
	for _, action := range []string{"invite.create", "invite.accept", "invite.revoke"} {
		if !strings.Contains(string(r.body), action) {
			t.Errorf("audit log lacks %s", action)
		}
	}
}
