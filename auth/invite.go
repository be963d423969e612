package auth

import (
	"context"
	"errors"
	"fmt"

	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

// Invites: an admin asks a person, by email, to join a tenant with a role.
// The link mailed to them carries a random token (stored hashed) and works
// for tenants.InviteTTL: a new person signs up from it, someone with an
// account logs in; either accepts it with the account of the invited email,
// verified. Invites are counted with member adds (per actor, per tenant),
// and per invited email (inviteEmail), before anything is stored or mailed.

// inviteEmail bounds the invites one email is sent, from every tenant
// together, as forgotEmail bounds its reset mails: three in a row before
// waits start doubling, ten an hour. The per-actor and per-tenant counts
// bound what one inviter sends, not what one mailbox gets: each tenant's
// admins could otherwise mail one address over and over (inviting it
// again replaces the invite and mails it afresh).
var inviteEmail = budget{name: "invite-email", free: 3, perHour: 10}

// Invite invites in.Email to tenant (named tenantName in the mail) with
// in.Role, if by may give that role, and mails the link. who names the
// actor for the throttle; the invited email has its own. A pending invite
// of the same email is replaced.
func (s *Service) Invite(ctx context.Context, tenant, tenantName, who string, by tenants.By, in tenants.MemberInput) (tenants.Invite, error) {
	if err := in.Validate(); err != nil {
		return tenants.Invite{}, err
	}
	if err := by.MayAdd(in.Role); err != nil {
		return tenants.Invite{}, err
	}
	if _, wait := s.lim.reserve(charge{memberByActor, who}, charge{memberPerTenant, tenant}, charge{inviteEmail, in.Email}); wait > 0 {
		return tenants.Invite{}, waitError(wait, "too many invites and members added, or invites sent to this email")
	}
	token := "rinv_" + tenants.NewToken()
	inv, err := s.store.CreateInvite(ctx, tenant, by, in, tenants.HashInviteToken(token))
	if err != nil {
		return tenants.Invite{}, err
	}
	s.send(ctx, mail.TemplateInvite, inv.Email, map[string]any{"Tenant": tenantName, "Inviter": by.Name, "Role": string(inv.Role),
		"Link": s.link("/invite", token), "Days": int(tenants.InviteTTL.Hours() / 24)})
	return inv, nil
}

// PendingInvite returns the pending invite a link's token names; any other
// token is ErrNotFound.
func (s *Service) PendingInvite(ctx context.Context, token string) (tenants.Invite, error) {
	return s.store.InviteByToken(ctx, tenants.HashInviteToken(token))
}

// ErrInviteEmail refuses an invite accepted by an account of another email.
var ErrInviteEmail = errors.New("this invite is for another email")

// AcceptInvite makes account a member of the invite's tenant with its
// role: the invite must be pending and for the account's email, which must
// be verified (ErrEmailUnverified). Tokens are tried within the account's
// login budget, so that a signed-in person cannot guess at them unbounded.
func (s *Service) AcceptInvite(ctx context.Context, a tenants.Account, token, addr string) (tenants.Invite, error) {
	t, wait := s.lim.reserve(charge{loginAccount, "invite:" + a.ID}, charge{loginAddress, addr})
	if wait > 0 {
		return tenants.Invite{}, waitError(wait, "too many invite links tried")
	}
	inv, err := s.store.InviteByToken(ctx, tenants.HashInviteToken(token))
	if err != nil {
		return tenants.Invite{}, err
	}
	t.refund()
	if inv.Email != a.Email {
		return tenants.Invite{}, fmt.Errorf("%w (%s); sign in with that account: %w", ErrInviteEmail, inv.Email, tenants.ErrForbidden)
	}
	if err := s.RequireVerified(ctx, a.ID); err != nil {
		return tenants.Invite{}, err
	}
	return s.store.AcceptInvite(ctx, tenants.HashInviteToken(token), a)
}

// Invites returns the tenant's pending invites.
func (s *Service) Invites(ctx context.Context, tenant string) ([]tenants.Invite, error) {
	return s.store.Invites(ctx, tenant)
}

// RevokeInvite ends a pending invite of the tenant.
func (s *Service) RevokeInvite(ctx context.Context, tenant, id string, by tenants.By) error {
	return s.store.RevokeInvite(ctx, tenant, id, by)
}
