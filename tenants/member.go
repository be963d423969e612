package tenants

import (
	"fmt"
	"time"
)

// Role is what a member or API key may do in a tenant.
type Role string

// The roles, from most to least powerful. Viewers only read; admins also
// manage devices, rules, keys and members; owners also change or delete the
// tenant itself and its owners.
const (
	RoleOwner  Role = "owner"
	RoleAdmin  Role = "admin"
	RoleViewer Role = "viewer"
)

var roleRank = map[Role]int{RoleViewer: 1, RoleAdmin: 2, RoleOwner: 3}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return roleRank[r] > 0 }

// AtLeast reports whether r grants everything min grants.
func (r Role) AtLeast(min Role) bool { return r.Valid() && roleRank[r] >= roleRank[min] }

// Member is an account's membership of a tenant.
type Member struct {
	AccountID string    `json:"account_id"`
	Email     string    `json:"email"`
	Role      Role      `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// MemberInput adds an existing account to a tenant.
type MemberInput struct {
	Email string `json:"email"`
	Role  Role   `json:"role"`
}

// Validate checks the input.
func (in *MemberInput) Validate() error {
	email, err := normaliseEmail(in.Email)
	if err != nil {
		return err
	}
	in.Email = email
	if !in.Role.Valid() {
		return invalid("role", "must be owner, admin or viewer")
	}
	return nil
}

// By is who changes a tenant's members: their role in it, their account
// (empty for an API key or the operator) and the name the changed person
// is told (an email, "an API key", "the operator").
type By struct {
	Role    Role
	Account string
	Name    string
}

// The membership rules, the one place the API and the console learn them
// from (the store applies them inside the change's transaction):
//
//   - admins add and remove members; only owners add or remove owners;
//   - anyone may leave a tenant (remove themselves), whatever their role;
//   - the last owner stays (ErrConflict);
//   - a removed member's API keys end with the membership unless an owner
//     keeps them.

// MayAdd returns nil if by may give someone role, or an ErrForbidden.
func (by By) MayAdd(role Role) error {
	switch {
	case !by.Role.AtLeast(RoleAdmin):
		return fmt.Errorf("adding members needs the admin role: %w", ErrForbidden)
	case role == RoleOwner && !by.Role.AtLeast(RoleOwner):
		return fmt.Errorf("only an owner can add an owner: %w", ErrForbidden)
	}
	return nil
}

// MayRemove returns nil if by may remove account, whose role is target,
// keeping or ending its API keys; or an ErrForbidden.
func (by By) MayRemove(account string, target Role, keepKeys bool) error {
	self := by.Account != "" && by.Account == account
	switch {
	case !self && !by.Role.AtLeast(RoleAdmin):
		return fmt.Errorf("removing others needs the admin role: %w", ErrForbidden)
	case !self && target == RoleOwner && !by.Role.AtLeast(RoleOwner):
		return fmt.Errorf("only an owner can remove an owner: %w", ErrForbidden)
	case keepKeys && !by.Role.AtLeast(RoleOwner):
		return fmt.Errorf("only an owner can keep a leaving member's API keys: %w", ErrForbidden)
	}
	return nil
}

// MayMakeKey returns nil if by may make an API key with role (empty: the
// default, viewer), or an ErrForbidden: a key never holds more power than
// whoever made it.
func (by By) MayMakeKey(role Role) error {
	if role != "" && role.Valid() && !by.Role.AtLeast(role) {
		return fmt.Errorf("a key cannot have a higher role than its creator: %w", ErrForbidden)
	}
	return nil
}

// Notice tells an account of something done to it by others: it was added
// to a tenant (NoticeAdded) or removed from one (NoticeRemoved). Roost
// sends no email; notices are shown in the console and in GET /v1/me.
type Notice struct {
	ID     string    `json:"id"`
	Kind   string    `json:"kind"`
	Tenant string    `json:"tenant"`
	Role   Role      `json:"role,omitempty"`
	By     string    `json:"by"`
	At     time.Time `json:"at"`
}

// The kinds of notice.
const (
	NoticeAdded   = "member.added"
	NoticeRemoved = "member.removed"
)
