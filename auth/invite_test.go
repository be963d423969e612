package auth_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/tenants"
)

// TestInvitesPerEmailBounded: the invites one email is sent are bounded
// across tenants and inviters, as its reset mails are: three in a row,
// then a wait, whoever sends the fourth; another email is not held up.
// (Before, only each inviter and each tenant were counted, so every
// tenant's admins could mail one address over and over: inviting it again
// replaces the invite and mails the link afresh.)
func TestInvitesPerEmailBounded(t *testing.T) {
	box := &mailbox{}
	svc, store := newService(t, "", testenv.NewClock(time.Now()), box)
	ctx := context.Background()
	type inviter struct {
		tenant string
		by     tenants.By
	}
	var inviters []inviter
	for _, slug := range []string{"acme", "globex"} {
		a, err := store.CreateAccount(ctx, tenants.Signup{Email: slug + "-owner@example.com", Password: "correct horse battery"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.CreateTenant(ctx, a.ID, tenants.TenantInput{Slug: slug}); err != nil {
			t.Fatal(err)
		}
		inviters = append(inviters, inviter{slug, tenants.By{Role: tenants.RoleOwner, Account: a.ID, Name: a.Email}})
	}
	invite := func(i int, email string) error {
		in := inviters[i%len(inviters)]
		_, err := svc.Invite(ctx, in.tenant, in.tenant, "account:"+in.by.Account, in.by, tenants.MemberInput{Email: email, Role: tenants.RoleViewer})
		return err
	}
	// The case differs each time: the count is the email's, as stored.
	for i, email := range []string{"victim@example.com", "Victim@Example.com", "VICTIM@example.com"} {
		if err := invite(i, email); err != nil {
			t.Fatalf("invite %d of %s: %v, want sent", i+1, email, err)
		}
	}
	if err := invite(3, "victim@example.com"); !errors.Is(err, tenants.ErrThrottled) {
		t.Fatalf("a fourth invite of victim@example.com at once, from another tenant: %v, want ErrThrottled", err)
	}
	if err := invite(3, "friend@example.com"); err != nil {
		t.Fatalf("an invite of another email meanwhile: %v, want sent", err)
	}
	svc.Close()
	n := 0
	for _, m := range box.messages() {
		if m.To == "victim@example.com" {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d invite mails to victim@example.com, want 3", n)
	}
}
