package storetest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testAccountTokens: verify and reset tokens work once, for their purpose
// only, until they expire or a newer one replaces them; a reset or change
// of password ends the account's other sessions and no one else's; each
// step is in the account's own audit trail.
func testAccountTokens(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	ada, bob := mustAccount(t, s, "ada@example.com"), mustAccount(t, s, "bob@example.com")
	if ada.EmailVerified {
		t.Fatal("a new account's email is verified; want unverified")
	}
	ada, tok, err := s.IssueVerifyToken(ctx, ada.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, bobTok, _ := s.IssueVerifyToken(ctx, bob.ID)
	id, _, _ := strings.Cut(tok, ".")
	for name, bad := range map[string]string{"empty": "", "no dot": "abc", "wrong secret": id + ".AAAA", "unknown": "tok_x.y", "huge": id + "." + strings.Repeat("a", 500)} {
		_, err := s.VerifyEmail(ctx, bad, "")
		wantErr(t, "VerifyEmail("+name+")", err, tenants.ErrUnauthorized)
	}
	_, _, err = s.ResetPassword(ctx, tok, "a new long password")
	wantErr(t, "a verify token used to reset", err, tenants.ErrUnauthorized)
	got, err := s.VerifyEmail(ctx, tok, "")
	if err != nil || got.ID != ada.ID || !got.EmailVerified || got.EmailVerifiedAt == nil {
		t.Fatalf("VerifyEmail: got %+v, %v; want ada verified", got, err)
	}
	if a, _ := s.Account(ctx, ada.ID); !a.EmailVerified {
		t.Error("Account after VerifyEmail: not verified")
	}
	if b, _ := s.Account(ctx, bob.ID); b.EmailVerified {
		t.Error("bob is verified by ada's token")
	}
	_, err = s.VerifyEmail(ctx, tok, "")
	wantErr(t, "a verify token used twice", err, tenants.ErrUnauthorized)
	_, _, err = s.IssueVerifyToken(ctx, ada.ID)
	wantErr(t, "a verify token for a verified email", err, tenants.ErrConflict)
	// A newer verify token replaces the older.
	_, bobTok2, _ := s.IssueVerifyToken(ctx, bob.ID)
	_, err = s.VerifyEmail(ctx, bobTok, "")
	wantErr(t, "a replaced verify token", err, tenants.ErrUnauthorized)
	if _, err := s.VerifyEmail(ctx, bobTok2, ""); err != nil {
		t.Fatalf("bob's newer verify token: %v", err)
	}

	// Reset.
	_, _, err = s.IssueResetToken(ctx, "nobody@example.com")
	wantErr(t, "a reset of an unknown email", err, tenants.ErrNotFound)
	now := time.Now()
	a1, _ := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	b1, _ := s.CreateSession(ctx, tenants.SessionAccount, bob.ID, "", now.Add(time.Hour))
	_, r1, err := s.IssueResetToken(ctx, " ADA@example.com ")
	if err != nil {
		t.Fatal(err)
	}
	_, r2, _ := s.IssueResetToken(ctx, "ada@example.com")
	_, _, err = s.ResetPassword(ctx, r1, "a new long password")
	wantErr(t, "a reset token replaced by a newer one", err, tenants.ErrUnauthorized)
	_, _, err = s.ResetPassword(ctx, r2, "short")
	wantField(t, "a short new password", err, "password")
	_, err = s.VerifyEmail(ctx, r2, "")
	wantErr(t, "a reset token used to verify", err, tenants.ErrUnauthorized)
	if _, _, err := s.ResetPassword(ctx, r2, "a new long password"); err != nil {
		t.Fatalf("ResetPassword: %v", err)
	}
	_, _, err = s.ResetPassword(ctx, r2, "another long password")
	wantErr(t, "a reset token used twice", err, tenants.ErrUnauthorized)
	_, err = s.Session(ctx, a1.ID, now)
	wantErr(t, "ada's session after her reset", err, tenants.ErrUnauthorized)
	if _, err := s.Session(ctx, b1.ID, now); err != nil {
		t.Errorf("bob's session after ada's reset: %v", err)
	}
	if _, err := s.Authenticate(ctx, "ada@example.com", "a new long password"); err != nil {
		t.Errorf("the new password: %v", err)
	}
	_, err = s.Authenticate(ctx, "ada@example.com", "correct horse battery")
	wantErr(t, "the old password", err, tenants.ErrUnauthorized)

	// A reset token expires after 30 minutes.
	_, r3, _ := s.IssueResetToken(ctx, "ada@example.com")
	s.SetClock(func() time.Time { return time.Now().Add(tenants.ResetTokenTTL + time.Minute) })
	_, _, err = s.ResetPassword(ctx, r3, "a third long password")
	wantErr(t, "an expired reset token", err, tenants.ErrUnauthorized)
	s.SetClock(time.Now)

	// Change: the old password is checked; the asking session stays,
	// the others end; an unspent reset token is spent.
	now = time.Now()
	keep, _ := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	other, _ := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	_, r4, _ := s.IssueResetToken(ctx, "ada@example.com")
	_, err = s.ChangePassword(ctx, ada.ID, "wrong password!", "a fourth long password", keep.ID)
	wantErr(t, "a change with the wrong password", err, tenants.ErrUnauthorized)
	_, err = s.ChangePassword(ctx, ada.ID, "a new long password", "short", keep.ID)
	wantField(t, "a change to a short password", err, "password")
	if _, err := s.ChangePassword(ctx, ada.ID, "a new long password", "a fourth long password", keep.ID); err != nil {
		t.Fatalf("ChangePassword: %v", err)
	}
	if _, err := s.Session(ctx, keep.ID, now); err != nil {
		t.Errorf("the session that changed the password: %v", err)
	}
	_, err = s.Session(ctx, other.ID, now)
	wantErr(t, "ada's other session after the change", err, tenants.ErrUnauthorized)
	_, _, err = s.ResetPassword(ctx, r4, "a fifth long password")
	wantErr(t, "a reset token issued before a change", err, tenants.ErrUnauthorized)
	if _, err := s.Session(ctx, b1.ID, now); err != nil {
		t.Errorf("bob's session after ada's change: %v", err)
	}

	// The account's own trail, and none of it in bob's.
	es, _, err := s.AccountAudit(ctx, ada.ID, tenants.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range es {
		actions = append(actions, e.Action)
		if e.Object != "account:"+ada.ID {
			t.Errorf("ada's trail holds %+v", e)
		}
	}
	for _, want := range []string{"account.create", "account.verify_sent", "account.email_verify", "account.password_reset_request", "account.password_reset", "account.password_change"} {
		if !slices.Contains(actions, want) {
			t.Errorf("ada's trail = %v, want it to hold %s", actions, want)
		}
	}
	es, _, _ = s.AccountAudit(ctx, bob.ID, tenants.Page{})
	for _, e := range es {
		if e.Object != "account:"+bob.ID {
			t.Errorf("bob's trail holds %+v", e)
		}
	}
}

// testAccountSessions: a person lists and ends their own sessions, never
// another's.
func testAccountSessions(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	ada, bob := mustAccount(t, s, "ada@example.com"), mustAccount(t, s, "bob@example.com")
	now := time.Now()
	octx := tenants.WithOrigin(ctx, "192.0.2.7", "Firefox/140")
	a1, _ := s.CreateSession(octx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	a2, _ := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	a3, _ := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
	old, _ := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(-time.Minute))
	b1, _ := s.CreateSession(ctx, tenants.SessionAccount, bob.ID, "", now.Add(time.Hour))
	imp, _ := s.CreateSession(ctx, tenants.SessionImpersonation, "", "acme", now.Add(time.Hour))

	ses, err := s.AccountSessions(ctx, ada.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, se := range ses {
		ids = append(ids, se.ID)
		if se.ID == a1.ID && (se.Address != "192.0.2.7" || se.UserAgent != "Firefox/140") {
			t.Errorf("a1's origin = %q %q, want 192.0.2.7 Firefox/140", se.Address, se.UserAgent)
		}
	}
	slices.Sort(ids)
	want := []string{a1.ID, a2.ID, a3.ID}
	slices.Sort(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("ada's sessions = %v, want %v (not the expired %s, not bob's)", ids, want, old.ID)
	}
	wantErr(t, "bob ending ada's session", s.EndAccountSession(ctx, bob.ID, a1.ID), tenants.ErrNotFound)
	wantErr(t, "ada ending an impersonation", s.EndAccountSession(ctx, ada.ID, imp.ID), tenants.ErrNotFound)
	if _, err := s.Session(ctx, a1.ID, now); err != nil {
		t.Fatalf("ada's session after bob tried to end it: %v", err)
	}
	if err := s.EndAccountSession(ctx, ada.ID, a1.ID); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "ending an ended session", s.EndAccountSession(ctx, ada.ID, a1.ID), tenants.ErrNotFound)
	n, err := s.EndOtherSessions(ctx, ada.ID, a2.ID)
	if err != nil || n != 1 {
		t.Fatalf("EndOtherSessions = %d, %v; want 1 (a3)", n, err)
	}
	if ses, _ := s.AccountSessions(ctx, ada.ID, now); len(ses) != 1 || ses[0].ID != a2.ID {
		t.Errorf("ada's sessions after ending the others = %+v, want a2 alone", ses)
	}
	for name, id := range map[string]string{"bob's": b1.ID, "the impersonation": imp.ID} {
		if _, err := s.Session(ctx, id, now); err != nil {
			t.Errorf("%s session after ada ended hers: %v", name, err)
		}
	}
}

// testAccountSessionsBounded: an account keeps at most
// tenants.MaxAccountSessions open sessions; a sign-in past them ends the
// oldest, and no one else's.
func testAccountSessionsBounded(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	ada, bob := mustAccount(t, s, "ada@example.com"), mustAccount(t, s, "bob@example.com")
	now := time.Now()
	b1, _ := s.CreateSession(ctx, tenants.SessionAccount, bob.ID, "", now.Add(time.Hour))
	var ses []tenants.Session
	for range tenants.MaxAccountSessions + 3 {
		se, err := s.CreateSession(ctx, tenants.SessionAccount, ada.ID, "", now.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		ses = append(ses, se)
	}
	listed, err := s.AccountSessions(ctx, ada.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != tenants.MaxAccountSessions {
		t.Errorf("ada's open sessions after %d sign-ins = %d, want %d", len(ses), len(listed), tenants.MaxAccountSessions)
	}
	for i, se := range ses {
		_, err := s.Session(ctx, se.ID, now)
		if i < 3 {
			wantErr(t, fmt.Sprintf("ada's session %d of %d (among the oldest)", i+1, len(ses)), err, tenants.ErrUnauthorized)
		} else if err != nil {
			t.Errorf("ada's session %d of %d: %v, want open", i+1, len(ses), err)
		}
	}
	if _, err := s.Session(ctx, b1.ID, now); err != nil {
		t.Errorf("bob's session after ada's sign-ins: %v, want open", err)
	}
}

// testAuditWhere: a tenant's trail filtered by action prefix, actor and
// time, and never another tenant's.
func testAuditWhere(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	ada := mustAccount(t, s, "ada@example.com")
	mustTenant(t, s, ada, "acme")
	mustTenant(t, s, ada, "other")
	mustDevice(t, s, "acme", "d1")
	mustDevice(t, s, "acme", "d2")
	mustDevice(t, s, "other", "x1")
	es, _, err := s.AuditWhere(ctx, "acme", tenants.AuditFilter{Action: "device."}, tenants.Page{})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("acme's device entries = %+v, want 2", es)
	}
	for _, e := range es {
		if e.Tenant != "acme" || !strings.HasPrefix(e.Action, "device.") {
			t.Errorf("entry %+v is not acme's device change", e)
		}
	}
	es, next, _ := s.AuditWhere(ctx, "acme", tenants.AuditFilter{}, tenants.Page{Limit: 1})
	if len(es) != 1 || next == "" {
		t.Fatalf("a page of 1 = %+v, next %q; want 1 and a cursor", es, next)
	}
	if es, _, _ := s.AuditWhere(ctx, "acme", tenants.AuditFilter{Actor: "nobody"}, tenants.Page{}); len(es) != 0 {
		t.Errorf("entries of actor nobody = %+v, want none", es)
	}
	if es, _, _ := s.AuditWhere(ctx, "acme", tenants.AuditFilter{Since: time.Now().Add(time.Hour)}, tenants.Page{}); len(es) != 0 {
		t.Errorf("entries from the future = %+v, want none", es)
	}
	if es, _, _ := s.AuditWhere(ctx, "acme", tenants.AuditFilter{Action: "%"}, tenants.Page{}); len(es) != 0 {
		t.Errorf("action %% matched %d entries; want it taken literally", len(es))
	}
}
