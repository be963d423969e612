package tenants

import "time"

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
