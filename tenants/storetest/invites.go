package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testInvites: an invite is pending until accepted (once, by the account
// of its email), revoked or expired; a new invite of the same email
// replaces the old; tenants never see each other's.
func testInvites(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	now := time.Now().UTC()
	s.SetClock(func() time.Time { return now })
	owner := mustAccount(t, s, "inv-owner@example.com")
	guest := mustAccount(t, s, "inv-guest@example.com")
	stranger := mustAccount(t, s, "inv-stranger@example.com")
	mustTenant(t, s, owner, "inv-a")
	mustTenant(t, s, stranger, "inv-b")
	admin := tenants.By{Role: tenants.RoleAdmin, Account: owner.ID, Name: owner.Email}
	ownerBy := tenants.By{Role: tenants.RoleOwner, Account: owner.ID, Name: owner.Email}

	if _, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: "x@example.com", Role: tenants.RoleOwner}, "h0"); !errors.Is(err, tenants.ErrForbidden) {
		t.Errorf("an admin invites an owner: %v, want ErrForbidden", err)
	}
	if _, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: "not an email", Role: tenants.RoleViewer}, "h0"); !errors.Is(err, tenants.ErrInvalid) {
		t.Errorf("an invite of no email: %v, want ErrInvalid", err)
	}
	if _, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: owner.Email, Role: tenants.RoleViewer}, "h0"); !errors.Is(err, tenants.ErrConflict) {
		t.Errorf("an invite of a member: %v, want ErrConflict", err)
	}
	first, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: "INV-guest@example.com", Role: tenants.RoleViewer}, tenants.HashInviteToken("t1"))
	if err != nil {
		t.Fatal(err)
	}
	if first.Email != guest.Email || first.InvitedBy != owner.Email || !first.ExpiresAt.Equal(first.CreatedAt.Add(tenants.InviteTTL)) {
		t.Errorf("invite = %+v", first)
	}
	second, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: guest.Email, Role: tenants.RoleAdmin}, tenants.HashInviteToken("t2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.InviteByToken(ctx, tenants.HashInviteToken("t1")); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("the replaced invite: %v, want ErrNotFound", err)
	}
	if reopen != nil {
		s = reopen()
		s.SetClock(func() time.Time { return now })
	}
	list, err := s.Invites(ctx, "inv-a")
	if err != nil || len(list) != 1 || list[0].ID != second.ID {
		t.Fatalf("Invites = %+v, %v; want the second only", list, err)
	}
	if list, _ := s.Invites(ctx, "inv-b"); len(list) != 0 {
		t.Errorf("tenant B sees A's invites: %+v", list)
	}
	// Another tenant cannot revoke it.
	if err := s.RevokeInvite(ctx, "inv-b", second.ID, tenants.By{Role: tenants.RoleOwner, Account: stranger.ID}); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("B revokes A's invite: %v, want ErrNotFound", err)
	}
	// Only its email's account accepts it.
	if _, err := s.AcceptInvite(ctx, tenants.HashInviteToken("t2"), stranger); !errors.Is(err, tenants.ErrForbidden) {
		t.Errorf("accepted by another email: %v, want ErrForbidden", err)
	}
	in, err := s.AcceptInvite(ctx, tenants.HashInviteToken("t2"), guest)
	if err != nil || in.Tenant != "inv-a" {
		t.Fatalf("AcceptInvite = %+v, %v", in, err)
	}
	if m, err := s.Membership(ctx, "inv-a", guest.ID); err != nil || m.Role != tenants.RoleAdmin {
		t.Errorf("membership after accepting: %+v, %v; want admin", m, err)
	}
	if _, err := s.AcceptInvite(ctx, tenants.HashInviteToken("t2"), guest); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("accepted twice: %v, want ErrNotFound", err)
	}
	if list, _ := s.Invites(ctx, "inv-a"); len(list) != 0 {
		t.Errorf("an accepted invite is still pending: %+v", list)
	}

	// Revoked and expired invites do not work.
	third, err := s.CreateInvite(ctx, "inv-a", ownerBy, tenants.MemberInput{Email: "new@example.com", Role: tenants.RoleOwner}, tenants.HashInviteToken("t3"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeInvite(ctx, "inv-a", third.ID, admin); !errors.Is(err, tenants.ErrForbidden) {
		t.Errorf("an admin revokes an owner's invite: %v, want ErrForbidden", err)
	}
	if err := s.RevokeInvite(ctx, "inv-a", third.ID, ownerBy); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeInvite(ctx, "inv-a", third.ID, ownerBy); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("revoked twice: %v, want ErrNotFound", err)
	}
	newcomer := mustAccount(t, s, "new@example.com")
	if _, err := s.AcceptInvite(ctx, tenants.HashInviteToken("t3"), newcomer); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("a revoked invite accepted: %v, want ErrNotFound", err)
	}
	if _, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: newcomer.Email, Role: tenants.RoleViewer}, tenants.HashInviteToken("t4")); err != nil {
		t.Fatal(err)
	}

	// Replacing an invite revokes it: an admin may not replace an owner's
	// invite (not even with a lesser one), as it may not revoke it; the
	// owner may.
	if _, err := s.CreateInvite(ctx, "inv-a", ownerBy, tenants.MemberInput{Email: "heir@example.com", Role: tenants.RoleOwner}, tenants.HashInviteToken("t5")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: "heir@example.com", Role: tenants.RoleViewer}, tenants.HashInviteToken("t6")); !errors.Is(err, tenants.ErrForbidden) {
		t.Errorf("an admin replaces an owner's invite: %v, want ErrForbidden", err)
	}
	if in, err := s.InviteByToken(ctx, tenants.HashInviteToken("t5")); err != nil || in.Role != tenants.RoleOwner {
		t.Errorf("the owner's invite after an admin tried to replace it: %+v, %v; want it pending", in, err)
	}
	if _, err := s.InviteByToken(ctx, tenants.HashInviteToken("t6")); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("the admin's refused invite: %v, want ErrNotFound", err)
	}
	if _, err := s.CreateInvite(ctx, "inv-a", ownerBy, tenants.MemberInput{Email: "heir@example.com", Role: tenants.RoleAdmin}, tenants.HashInviteToken("t7")); err != nil {
		t.Errorf("the owner replaces its owner invite: %v", err)
	}
	if _, err := s.InviteByToken(ctx, tenants.HashInviteToken("t5")); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("the replaced owner invite: %v, want ErrNotFound", err)
	}
	if _, err := s.CreateInvite(ctx, "inv-a", ownerBy, tenants.MemberInput{Email: "heir2@example.com", Role: tenants.RoleOwner}, tenants.HashInviteToken("t8")); err != nil {
		t.Fatal(err)
	}

	now = now.Add(tenants.InviteTTL + time.Second)
	if _, err := s.InviteByToken(ctx, tenants.HashInviteToken("t4")); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("an expired invite: %v, want ErrNotFound", err)
	}
	if _, err := s.AcceptInvite(ctx, tenants.HashInviteToken("t4"), newcomer); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("an expired invite accepted: %v, want ErrNotFound", err)
	}
	if list, _ := s.Invites(ctx, "inv-a"); len(list) != 0 {
		t.Errorf("an expired invite is listed: %+v", list)
	}
	// An expired owner's invite is no longer anyone's to keep: an admin
	// may invite the email again.
	if _, err := s.CreateInvite(ctx, "inv-a", admin, tenants.MemberInput{Email: "heir2@example.com", Role: tenants.RoleViewer}, tenants.HashInviteToken("t9")); err != nil {
		t.Errorf("an admin invites the email of an expired owner's invite: %v", err)
	}
}
