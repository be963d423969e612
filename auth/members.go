package auth

import (
	"context"
	"errors"

	"github.com/roosthub/roost/tenants"
)

// AddMember gives the account with in.Email a role in tenant, if by may
// (tenants.By.MayAdd). Until invitations exist, the answer is the same
// whether or not an account has the email: nil, having added it if there
// is one (the account is left a notice saying who added it; it may leave),
// and having done nothing otherwise. Each attempt is counted per actor (who
// names them: "account:<id>", "api_key:<id>") and per tenant before the
// email is looked up, which is what bounds probing for accounts this way.
func (s *Service) AddMember(ctx context.Context, tenant, who string, by tenants.By, in tenants.MemberInput) error {
	if err := in.Validate(); err != nil {
		return err
	}
	if err := by.MayAdd(in.Role); err != nil {
		return err
	}
	if _, wait := s.lim.reserve(charge{memberByActor, who}, charge{memberPerTenant, tenant}); wait > 0 {
		return waitError(wait, "too many members added")
	}
	_, err := s.store.AddMember(ctx, tenant, by, in)
	if errors.Is(err, tenants.ErrNoAccount) {
		return nil
	}
	return err
}

// RemoveMember removes account from tenant if by may
// (tenants.By.MayRemove): the API keys made on its behalf there end unless
// an owner keeps them.
func (s *Service) RemoveMember(ctx context.Context, tenant, account string, by tenants.By, keepKeys bool) error {
	return s.store.RemoveMember(ctx, tenant, account, by, keepKeys)
}

// CreateTenant creates a tenant owned by account, held to the limits: at
// most MaxFreeTenants free tenants owned, TenantsPerDay created a day.
func (s *Service) CreateTenant(ctx context.Context, account string, in tenants.TenantInput) (tenants.Tenant, error) {
	return s.store.CreateTenantWithin(ctx, account, in, s.tenants)
}

// Notices returns what an account should hear of: the newest ten of the
// last 30 days.
func (s *Service) Notices(ctx context.Context, account string) ([]tenants.Notice, error) {
	return s.store.Notices(ctx, account, s.now().AddDate(0, 0, -30), 10)
}
