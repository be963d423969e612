package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testSessions: a session is open until it is ended or expires; ending one
// ends no other; an account session comes with its account; unknown ids
// are ErrUnauthorized.
func testSessions(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	ada, bob := mustAccount(t, s, "ada@example.com"), mustAccount(t, s, "bob@example.com")
	now := time.Now()
	a1, err := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	b1, _ := s.CreateSession(ctx, tenants.SessionAccount, bob.ID, "", now.Add(time.Hour))
	op, _ := s.CreateSession(ctx, tenants.SessionOperator, "", "", now.Add(time.Hour))
	imp, _ := s.CreateSession(ctx, tenants.SessionImpersonation, "", "acme", now.Add(15*time.Minute))

	got, err := s.Session(ctx, a1.ID, now)
	if err != nil || got.Kind != tenants.SessionAccount || got.Account.ID != ada.ID || got.Account.Email != "ada@example.com" {
		t.Fatalf("Session(a1): got %+v, %v, want ada's account session", got, err)
	}
	if got, err := s.Session(ctx, imp.ID, now); err != nil || got.Tenant != "acme" || got.Kind != tenants.SessionImpersonation {
		t.Fatalf("Session(impersonation): got %+v, %v", got, err)
	}
	_, err = s.Session(ctx, imp.ID, now.Add(16*time.Minute))
	wantErr(t, "an expired session", err, tenants.ErrUnauthorized)
	_, err = s.Session(ctx, "ses_nope", now)
	wantErr(t, "an unknown session", err, tenants.ErrUnauthorized)

	if err := s.EndSession(ctx, a1.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.EndSession(ctx, a1.ID); err != nil {
		t.Fatalf("ending an ended session: %v", err)
	}
	_, err = s.Session(ctx, a1.ID, now)
	wantErr(t, "an ended session", err, tenants.ErrUnauthorized)
	// Ending one session ends no other: ada's second, bob's, the operator's.
	for name, id := range map[string]string{"ada's other": a2.ID, "bob's": b1.ID, "the operator's": op.ID} {
		if _, err := s.Session(ctx, id, now); err != nil {
			t.Errorf("%s session after ada's first ended: %v", name, err)
		}
	}
	if reopen != nil { // sessions live in the database, not in a process
		if _, err := reopen().Session(ctx, b1.ID, now); err != nil {
			t.Errorf("bob's session from another store: %v", err)
		}
	}
}

// testSignUp: a new email makes an account; a taken email with its own
// password is that account, with another ErrUnauthorized; each computes one
// password hash.
func testSignUp(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	a, created, err := s.SignUp(ctx, tenants.Signup{Email: "Ada@example.com", Password: "correct horse battery"})
	if err != nil || !created || a.Email != "ada@example.com" {
		t.Fatalf("SignUp(new): got %+v, %v, %v", a, created, err)
	}
	before, _ := s.PasswordHashStats()
	again, created, err := s.SignUp(ctx, tenants.Signup{Email: "ada@example.com", Password: "correct horse battery"})
	if err != nil || created || again.ID != a.ID {
		t.Fatalf("SignUp(taken, right password): got %+v, %v, %v, want ada's account, not created", again, created, err)
	}
	_, created, err = s.SignUp(ctx, tenants.Signup{Email: "ada@example.com", Password: "another long password"})
	wantErr(t, "SignUp(taken, wrong password)", err, tenants.ErrUnauthorized)
	if created {
		t.Error("a refused sign-up says it created an account")
	}
	if after, _ := s.PasswordHashStats(); after-before != 2 {
		t.Errorf("two sign-ups with a taken email computed %d password hashes, want one each", after-before)
	}
	_, _, err = s.SignUp(ctx, tenants.Signup{Email: "not-an-email", Password: "correct horse battery"})
	wantField(t, "SignUp(bad email)", err, "email")
}

// testMembershipRules: the rules the API and the console share, applied by
// the store: admins cannot add or remove owners, anyone may leave, only
// owners keep a leaving member's keys; the added and removed are left
// notices that nobody else sees.
func testMembershipRules(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner, admin, viewer := mustAccount(t, s, "owner@example.com"), mustVerified(t, s, "admin@example.com"), mustVerified(t, s, "viewer@example.com")
	stranger := mustVerified(t, s, "stranger@example.com")
	mustTenant(t, s, owner, "acme")
	byOwner := tenants.By{Role: tenants.RoleOwner, Account: owner.ID, Name: "owner@example.com"}
	byAdmin := tenants.By{Role: tenants.RoleAdmin, Account: admin.ID, Name: "admin@example.com"}
	byViewer := tenants.By{Role: tenants.RoleViewer, Account: viewer.ID, Name: "viewer@example.com"}
	if _, err := s.AddMember(ctx, "acme", byOwner, tenants.MemberInput{Email: "admin@example.com", Role: tenants.RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddMember(ctx, "acme", byAdmin, tenants.MemberInput{Email: "viewer@example.com", Role: tenants.RoleViewer}); err != nil {
		t.Fatal(err)
	}
	_, err := s.AddMember(ctx, "acme", byAdmin, tenants.MemberInput{Email: "stranger@example.com", Role: tenants.RoleOwner})
	wantErr(t, "an admin adds an owner", err, tenants.ErrForbidden)
	_, err = s.AddMember(ctx, "acme", byViewer, tenants.MemberInput{Email: "stranger@example.com", Role: tenants.RoleViewer})
	wantErr(t, "a viewer adds a member", err, tenants.ErrForbidden)

	wantErr(t, "an admin removes the owner", s.RemoveMember(ctx, "acme", owner.ID, byAdmin, false), tenants.ErrForbidden)
	wantErr(t, "a viewer removes the admin", s.RemoveMember(ctx, "acme", admin.ID, byViewer, false), tenants.ErrForbidden)
	wantErr(t, "an admin keeps a member's keys", s.RemoveMember(ctx, "acme", viewer.ID, byAdmin, true), tenants.ErrForbidden)
	wantErr(t, "the last owner leaves", s.RemoveMember(ctx, "acme", owner.ID, byOwner, false), tenants.ErrConflict)
	if _, err := s.Membership(ctx, "acme", owner.ID); err != nil {
		t.Fatalf("the owner after refused removals: %v", err)
	}
	if err := s.RemoveMember(ctx, "acme", viewer.ID, byViewer, false); err != nil {
		t.Fatalf("a viewer leaves: %v", err)
	}
	if err := s.RemoveMember(ctx, "acme", admin.ID, byOwner, false); err != nil {
		t.Fatalf("the owner removes the admin: %v", err)
	}

	since := time.Now().Add(-time.Hour)
	kinds := func(a tenants.Account) string {
		ns, err := s.Notices(ctx, a.ID, since, 10)
		if err != nil {
			t.Fatal(err)
		}
		out := ""
		for _, n := range ns {
			out += fmt.Sprintf("%s %s %s by %s;", n.Kind, n.Tenant, n.Role, n.By)
		}
		return out
	}
	if got, want := kinds(admin), "member.removed acme admin by owner@example.com;member.added acme admin by owner@example.com;"; got != want {
		t.Errorf("admin's notices: got %q, want %q", got, want)
	}
	// The viewer left by itself: told of the add, not of its own leaving.
	if got, want := kinds(viewer), "member.added acme viewer by admin@example.com;"; got != want {
		t.Errorf("viewer's notices: got %q, want %q", got, want)
	}
	if got := kinds(owner) + kinds(stranger); got != "" {
		t.Errorf("notices of accounts nothing was done to: %q", got)
	}
}

// testKeysEndWithMember: a member's keys end when it leaves or is removed,
// unless an owner keeps them; others' keys, keys of no recorded creator and
// its keys in another tenant stay.
func testKeysEndWithMember(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner, admin := mustAccount(t, s, "owner@example.com"), mustVerified(t, s, "admin@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "globex")
	byOwner := tenants.By{Role: tenants.RoleOwner, Account: owner.ID}
	for _, tn := range []string{"acme", "globex"} {
		if _, err := s.AddMember(ctx, tn, byOwner, tenants.MemberInput{Email: "admin@example.com", Role: tenants.RoleAdmin}); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(tenant, by string) string {
		t.Helper()
		k, token, err := s.CreateAPIKey(ctx, tenant, tenants.APIKeyInput{Name: "k", Role: tenants.RoleAdmin}, by)
		if err != nil {
			t.Fatal(err)
		}
		if by != "" && (k.CreatedBy == nil || *k.CreatedBy != by) {
			t.Fatalf("key created by %s: CreatedBy %v", by, k.CreatedBy)
		}
		return token
	}
	adminsAcme, adminsGlobex, ownersAcme, legacyAcme := mk("acme", admin.ID), mk("globex", admin.ID), mk("acme", owner.ID), mk("acme", "")
	works := func(token string) bool { _, err := s.AuthenticateAPIKey(ctx, token); return err == nil }

	if err := s.RemoveMember(ctx, "acme", admin.ID, byOwner, false); err != nil {
		t.Fatal(err)
	}
	if works(adminsAcme) {
		t.Error("the removed admin's key still works in its tenant")
	}
	if !works(adminsGlobex) || !works(ownersAcme) || !works(legacyAcme) {
		t.Errorf("keys that should stay: the admin's in globex %v, the owner's %v, a key of no recorded creator %v",
			works(adminsGlobex), works(ownersAcme), works(legacyAcme))
	}
	// An owner may keep them.
	if err := s.RemoveMember(ctx, "globex", admin.ID, byOwner, true); err != nil {
		t.Fatal(err)
	}
	if !works(adminsGlobex) {
		t.Error("a key the owner kept stopped working")
	}
}

// testTenantLimits: an account owns at most MaxFree free tenants and
// creates at most PerDay a day, deleted ones included, also when it asks
// twenty times at once; paid tenants and other accounts do not count.
func testTenantLimits(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	now := time.Now()
	s.SetClock(func() time.Time { return now })
	ada, bob := mustAccount(t, s, "ada@example.com"), mustAccount(t, s, "bob@example.com")
	lim := tenants.TenantLimits{MaxFree: 3, PerDay: 5}
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CreateTenantWithin(ctx, ada.ID, tenants.TenantInput{Slug: fmt.Sprintf("ada-%d", i)}, lim)
		}()
	}
	wg.Wait()
	made := 0
	for _, err := range errs {
		var qe *tenants.QuotaError
		switch {
		case err == nil:
			made++
		case errors.As(err, &qe) && qe.Quota == "max_free_tenants" && qe.Limit == 3:
		default:
			t.Errorf("a parallel create: %v, want nil or quota max_free_tenants", err)
		}
	}
	if made != 3 {
		t.Fatalf("20 parallel creates by one account made %d free tenants, want 3", made)
	}
	if _, err := s.CreateTenantWithin(ctx, bob.ID, tenants.TenantInput{Slug: "bob-1"}, lim); err != nil {
		t.Fatalf("another account's first tenant: %v", err)
	}
	// A paid tenant does not count against the free ones.
	ts, _, _ := s.TenantsOf(ctx, ada.ID, tenants.Page{})
	pro := "pro"
	if _, err := s.AdminUpdateTenant(ctx, ts[0].Slug, tenants.AdminTenantUpdate{Plan: &pro}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTenantWithin(ctx, ada.ID, tenants.TenantInput{Slug: "ada-paid-room"}, lim); err != nil {
		t.Fatalf("a free tenant after one went pro: %v", err)
	}
	// Deleted tenants count towards the day: their slugs stay reserved.
	if err := s.DeleteTenant(ctx, "ada-paid-room"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTenantWithin(ctx, ada.ID, tenants.TenantInput{Slug: "ada-fifth"}, lim); err != nil {
		t.Fatalf("a fifth tenant within a day: %v", err)
	}
	if err := s.DeleteTenant(ctx, "ada-fifth"); err != nil {
		t.Fatal(err)
	}
	_, err := s.CreateTenantWithin(ctx, ada.ID, tenants.TenantInput{Slug: "ada-sixth"}, lim)
	var re *tenants.RetryError
	if !errors.As(err, &re) || !errors.Is(err, tenants.ErrThrottled) || re.After <= 0 || re.After > 24*time.Hour {
		t.Fatalf("a sixth tenant within a day: %v, want ErrThrottled with a wait up to 24h", err)
	}
	now = now.Add(25 * time.Hour)
	if _, err := s.CreateTenantWithin(ctx, ada.ID, tenants.TenantInput{Slug: "ada-next-day"}, lim); err != nil {
		t.Fatalf("a tenant the next day: %v", err)
	}
	// Without limits (CreateTenant) nothing is counted against.
	if _, err := s.CreateTenant(ctx, ada.ID, tenants.TenantInput{Slug: "ada-unlimited"}); err != nil {
		t.Fatalf("CreateTenant without limits: %v", err)
	}
}
