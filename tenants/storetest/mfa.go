package storetest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/roosthub/roost/tenants"
)

// testMFA: a secret is set up, then enabled with its recovery codes; each
// TOTP step and each recovery code is used once; a tenant's requirement
// gates its members without two-factor; turning off forgets everything.
func testMFA(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	a := mustAccount(t, s, "mfa@example.com")
	if _, err := s.MFA(ctx, a.ID); !errors.Is(err, tenants.ErrNotFound) {
		t.Fatalf("MFA of a new account: %v, want ErrNotFound", err)
	}
	if err := s.EnableMFA(ctx, a.ID, 10, nil); !errors.Is(err, tenants.ErrConflict) {
		t.Fatalf("EnableMFA before setup: %v, want ErrConflict", err)
	}
	if err := s.SetUpMFA(ctx, a.ID, "sealed-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUpMFA(ctx, a.ID, "sealed-2"); err != nil {
		t.Fatalf("a second setup replaces the first: %v", err)
	}
	if ok, _ := s.UseTOTPStep(ctx, a.ID, 5); ok {
		t.Error("a step was used before two-factor was on")
	}
	codes := tenants.NewRecoveryCodes()
	hashes := make([]string, len(codes))
	for i, c := range codes {
		hashes[i] = tenants.HashRecoveryCode(c)
	}
	if err := s.EnableMFA(ctx, a.ID, 100, hashes); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUpMFA(ctx, a.ID, "sealed-3"); !errors.Is(err, tenants.ErrConflict) {
		t.Fatalf("SetUpMFA while on: %v, want ErrConflict", err)
	}
	if reopen != nil {
		s = reopen()
	}
	m, err := s.MFA(ctx, a.ID)
	if err != nil || !m.Enabled || m.Secret != "sealed-2" || m.LastStep != 100 || m.RecoveryLeft != 10 {
		t.Fatalf("MFA = %+v, %v; want enabled, sealed-2, step 100, 10 codes", m, err)
	}
	for _, tc := range []struct {
		step int64
		ok   bool
	}{{100, false}, {99, false}, {101, true}, {101, false}, {103, true}, {102, false}} {
		if ok, err := s.UseTOTPStep(ctx, a.ID, tc.step); ok != tc.ok || err != nil {
			t.Errorf("UseTOTPStep(%d) = %v, %v; want %v", tc.step, ok, err, tc.ok)
		}
	}
	if ok, err := s.UseRecoveryCode(ctx, a.ID, codes[3]); !ok || err != nil {
		t.Fatalf("UseRecoveryCode = %v, %v; want true", ok, err)
	}
	if ok, _ := s.UseRecoveryCode(ctx, a.ID, codes[3]); ok {
		t.Error("a recovery code worked twice")
	}
	other := mustAccount(t, s, "mfa-other@example.com")
	if ok, _ := s.UseRecoveryCode(ctx, other.ID, codes[4]); ok {
		t.Error("one account's recovery code worked for another")
	}
	if m, _ := s.MFA(ctx, a.ID); m.RecoveryLeft != 9 {
		t.Errorf("recovery codes left %d, want 9", m.RecoveryLeft)
	}

	// Two sign-ins with one code at once (two nodes, say): one passes.
	// The same for a recovery code.
	if n := concurrently(t, 8, func() (bool, error) { return s.UseTOTPStep(ctx, a.ID, 110) }); n != 1 {
		t.Errorf("step 110 used by %d of 8 concurrent sign-ins, want 1", n)
	}
	if n := concurrently(t, 8, func() (bool, error) { return s.UseRecoveryCode(ctx, a.ID, codes[6]) }); n != 1 {
		t.Errorf("a recovery code used by %d of 8 concurrent sign-ins, want 1", n)
	}
	if reopen != nil {
		s = reopen()
	}
	if m, err := s.MFA(ctx, a.ID); err != nil || m.LastStep != 110 || m.RecoveryLeft != 8 {
		t.Errorf("MFA after the concurrent sign-ins = %+v, %v; want step 110, 8 codes left", m, err)
	}
	if ok, _ := s.UseTOTPStep(ctx, a.ID, 110); ok {
		t.Error("step 110 was used again after a reopen")
	}

	// The tenant's requirement.
	mustTenant(t, s, a, "mfa-t")
	if err := s.MFAGate(ctx, "mfa-t", other.ID); err != nil {
		t.Fatalf("MFAGate with nothing required: %v", err)
	}
	owner := tenants.By{Role: tenants.RoleOwner, Account: a.ID, Name: a.Email}
	if err := s.SetTenantRequiresMFA(ctx, "mfa-t", tenants.By{Role: tenants.RoleAdmin, Account: a.ID}, true, true); !errors.Is(err, tenants.ErrForbidden) {
		t.Errorf("an admin requires it: %v, want ErrForbidden", err)
	}
	if err := s.SetTenantRequiresMFA(ctx, "mfa-t", owner, false, true); !errors.Is(err, tenants.ErrConflict) {
		t.Errorf("an owner without it requires it: %v, want ErrConflict", err)
	}
	if err := s.SetTenantRequiresMFA(ctx, "mfa-t", owner, true, true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTenantRequiresMFA(ctx, "mfa-t", owner, true, true); err != nil {
		t.Fatalf("requiring twice: %v", err)
	}
	if on, err := s.TenantRequiresMFA(ctx, "mfa-t"); !on || err != nil {
		t.Fatalf("TenantRequiresMFA = %v, %v", on, err)
	}
	if on, _ := s.TenantRequiresMFA(ctx, "no-such-tenant"); on {
		t.Error("a tenant that does not exist requires two-factor")
	}
	if err := s.MFAGate(ctx, "mfa-t", other.ID); !errors.Is(err, tenants.ErrMFARequired) {
		t.Errorf("MFAGate of an account without it: %v, want ErrMFARequired", err)
	}
	if err := s.MFAGate(ctx, "mfa-t", a.ID); err != nil {
		t.Errorf("MFAGate of an account with it: %v", err)
	}
	if err := s.DisableMFA(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.MFAGate(ctx, "mfa-t", a.ID); !errors.Is(err, tenants.ErrMFARequired) {
		t.Errorf("MFAGate after turning off: %v, want ErrMFARequired", err)
	}
	if ok, _ := s.UseRecoveryCode(ctx, a.ID, codes[5]); ok {
		t.Error("a recovery code outlived two-factor")
	}
	if err := s.SetTenantRequiresMFA(ctx, "mfa-t", owner, false, false); err != nil {
		t.Fatal(err)
	}
	if err := s.MFAGate(ctx, "mfa-t", other.ID); err != nil {
		t.Errorf("MFAGate after the requirement was lifted: %v", err)
	}
}

// concurrently runs use n times at once and returns how many reported
// true; an error fails the test.
func concurrently(t *testing.T, n int, use func() (bool, error)) int {
	t.Helper()
	var won atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ok, err := use()
			if err != nil {
				errs <- err
			}
			if ok {
				won.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent use: %v", err)
	}
	return int(won.Load())
}
