package storetest

import (
	"errors"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// testSSOAccounts: a single sign-on finds the account linked to the
// subject, else links the account with the email, else makes one, verified.
func testSSOAccounts(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	const iss = "https://idp.example.com"
	if _, err := s.IdentityAccount(ctx, iss, "nobody"); !errors.Is(err, tenants.ErrNotFound) {
		t.Fatalf("IdentityAccount of nobody: %v, want ErrNotFound", err)
	}
	a, created, err := s.SSOAccount(ctx, iss, "sub-1", "New@Example.com")
	if err != nil || !created || a.Email != "new@example.com" || !a.EmailVerified {
		t.Fatalf("SSOAccount of a new person = %+v, %v, %v; want a new, verified account", a, created, err)
	}
	if _, err := s.Authenticate(ctx, "new@example.com", ""); !errors.Is(err, tenants.ErrUnauthorized) {
		t.Errorf("the new account has a usable empty password: %v", err)
	}
	if reopen != nil {
		s = reopen()
	}
	again, created, err := s.SSOAccount(ctx, iss, "sub-1", "changed@example.com")
	if err != nil || created || again.ID != a.ID {
		t.Errorf("SSOAccount again = %+v, %v, %v; want the linked account", again, created, err)
	}
	// An account signed up with the email but never verified may be a
	// stranger's, holding a password and sessions: it is not linked.
	mallory := mustAccount(t, s, "victim@example.com")
	if _, _, err := s.SSOAccount(ctx, iss, "sub-4", "victim@example.com"); !errors.Is(err, tenants.ErrConflict) {
		t.Errorf("SSOAccount of an email whose account has not verified it: %v, want ErrConflict", err)
	}
	if _, err := s.IdentityAccount(ctx, iss, "sub-4"); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("the unverified account %s was linked: %v", mallory.ID, err)
	}
	old := mustVerified(t, s, "old@example.com")
	linked, created, err := s.SSOAccount(ctx, iss, "sub-2", "old@example.com")
	if err != nil || created || linked.ID != old.ID {
		t.Errorf("SSOAccount of an email with an account = %+v, %v, %v; want %s linked", linked, created, err, old.ID)
	}
	// The same subject at another issuer is another person.
	other, created, err := s.SSOAccount(ctx, "https://other.example.com", "sub-1", "third@example.com")
	if err != nil || !created || other.ID == a.ID {
		t.Errorf("SSOAccount at another issuer = %+v, %v, %v; want a new account", other, created, err)
	}
	if _, _, err := s.SSOAccount(ctx, iss, "sub-3", "not an email"); !errors.Is(err, tenants.ErrInvalid) {
		t.Errorf("SSOAccount with no email: %v, want ErrInvalid", err)
	}
}
