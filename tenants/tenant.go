package tenants

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Tenant is a customer of the hub: it owns devices, rules and API keys, and
// its slug is the first half of every device's MQTT username.
type Tenant struct {
	Slug      string `json:"slug"`
	Name      string `json:"name"`
	Plan      string `json:"plan"`
	Suspended bool   `json:"suspended"`
	// QueuePolicy says what a full persistent-session queue does with a new
	// message: drop_oldest (the default) or drop_newest.
	QueuePolicy QueuePolicy `json:"queue_policy"`
	// DenyAction says what a publish the tenant's rules deny does to its
	// device's connection: ignore (the default) or disconnect.
	DenyAction DenyAction `json:"deny_action"`
	// OutboxPolicy says what a destination's full outbox (max_outbox)
	// does: drop_oldest (the default) or refuse.
	OutboxPolicy OutboxPolicy `json:"outbox_policy"`
	CreatedAt    time.Time    `json:"created_at"`
	UpdatedAt    time.Time    `json:"updated_at"`

	// Role is the caller's role in the tenant, when it was listed for an
	// account.
	Role Role `json:"role,omitempty"`

	// Overrides are the operator's per-tenant changes to the plan's quotas.
	Overrides map[string]int64 `json:"quota_overrides"`

	// SpendCap bounds what the tenant's usage past its allowance may cost a
	// month; nil: no cap. Shown on the billing page, not here.
	SpendCap *SpendCap `json:"-"`

	// plan is the tenant's plan as the store's catalogue defines it; nil
	// for a tenant that did not come from a store (the built-in catalogue).
	plan *Plan
}

// SpendCap is a monthly limit on what usage past the allowance may cost.
type SpendCap struct {
	Cents int64 `json:"cents"`
	// Block refuses messages once the cap is reached (as the free plan does
	// at its allowance); otherwise the tenant is warned and carries on.
	Block bool `json:"block"`
}

// PlanDetails returns the tenant's plan.
func (t Tenant) PlanDetails() Plan {
	if t.plan != nil {
		return *t.plan
	}
	return defaultPlans.Plan(t.Plan)
}

// Quotas returns the tenant's effective quotas: its plan's, with the
// operator's overrides applied; a blocking spend cap raises the monthly
// allowance by what the cap buys and no further.
func (t Tenant) Quotas() Quotas {
	p := t.PlanDetails()
	q := t.planQuotas(p)
	if t.capBlocks(p) {
		q.MessagesPerMonth += t.SpendCap.Cents * 1_000_000 / p.OverageCentsPerMillion
	}
	return q
}

// Allowance is the tenant's monthly messages before any overage: its
// messages_per_month without what a spend cap adds.
func (t Tenant) Allowance() int64 { return t.planQuotas(t.PlanDetails()).MessagesPerMonth }

func (t Tenant) planQuotas(p Plan) Quotas {
	q := p.Quotas
	for name, v := range t.Overrides {
		q.set(name, v)
	}
	return q
}

// BillsOverage reports whether the tenant may go past messages_per_month
// and be billed for it: on a paid plan, unless a blocking spend cap ends it.
func (t Tenant) BillsOverage() bool {
	p := t.PlanDetails()
	return p.BillsOverage() && !t.capBlocks(p)
}

func (t Tenant) capBlocks(p Plan) bool {
	return t.SpendCap != nil && t.SpendCap.Block && p.BillsOverage() && p.OverageCentsPerMillion > 0
}

// ValidSlug reports whether s is a well-formed tenant slug: 3 to 32
// lower-case ASCII letters, digits or '-', starting and ending with a letter
// or digit (as `^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$` would match it). It is a
// loop rather than a regular expression because every MQTT connect asks it.
func ValidSlug(s string) bool {
	if len(s) < 3 || len(s) > 32 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// TenantInput creates a tenant.
type TenantInput struct {
	Slug string `json:"slug"`
	Name string `json:"name"`
}

// Validate checks the input; an empty name defaults to the slug.
func (in *TenantInput) Validate() error {
	if in.Slug == "" {
		return invalid("slug", "is required")
	}
	if !ValidSlug(in.Slug) {
		return invalid("slug", "must be 3 to 32 lower-case letters, digits or hyphens, not starting or ending with a hyphen")
	}
	if in.Name == "" {
		in.Name = in.Slug
	}
	return validateDisplayName("name", in.Name)
}

// QueuePolicy is what a full queue does with a new message.
type QueuePolicy string

// The queue policies.
const (
	DropOldest QueuePolicy = "drop_oldest"
	DropNewest QueuePolicy = "drop_newest"
)

// OutboxPolicy is what a destination's full outbox does with a new
// message matching a rule: drop_oldest drops the oldest waiting; refuse
// refuses the QoS 1 or 2 publish (MQTT 5: PUBACK 0x97 quota exceeded;
// 3.1.1: the connection is closed), which its publisher sends again.
type OutboxPolicy string

// The outbox policies.
const (
	OutboxDropOldest OutboxPolicy = "drop_oldest"
	OutboxRefuse     OutboxPolicy = "refuse"
)

// DenyAction is what the data plane does about a publish the tenant's rules
// deny, besides dropping it and raising a publish_denied event.
type DenyAction string

// The deny actions. Ignore acknowledges a denied QoS 1 or 2 publish (MQTT 5
// with reason 0x87, 3.1.1 with a plain acknowledgement), as mosquitto and
// EMQX do by default; Disconnect is Roost's behaviour before the setting
// existed: MQTT 5 is answered 0x87 as well, a 3.1.1 connection is closed.
const (
	DenyIgnore     DenyAction = "ignore"
	DenyDisconnect DenyAction = "disconnect"
)

// TenantUpdate changes the fields a tenant's members may change: its name
// and queue policy (owners), its deny action (admins and owners). Nil fields
// are left as they are.
type TenantUpdate struct {
	Name        *string      `json:"name,omitempty"`
	QueuePolicy *QueuePolicy `json:"queue_policy,omitempty"`
	DenyAction  *DenyAction  `json:"deny_action,omitempty"`
	// OutboxPolicy is the admins', like the rules it applies to.
	OutboxPolicy *OutboxPolicy `json:"outbox_policy,omitempty"`
}

// Validate checks the update.
func (u *TenantUpdate) Validate() error {
	if u.QueuePolicy != nil && *u.QueuePolicy != DropOldest && *u.QueuePolicy != DropNewest {
		return invalid("queue_policy", "must be drop_oldest or drop_newest")
	}
	if u.DenyAction != nil && *u.DenyAction != DenyIgnore && *u.DenyAction != DenyDisconnect {
		return invalid("deny_action", "must be ignore or disconnect")
	}
	if u.OutboxPolicy != nil && *u.OutboxPolicy != OutboxDropOldest && *u.OutboxPolicy != OutboxRefuse {
		return invalid("outbox_policy", "must be drop_oldest or refuse")
	}
	if u.Name != nil {
		return validateDisplayName("name", *u.Name)
	}
	return nil
}

// MayApply returns nil if a member with role may make the update, or an
// ErrForbidden: renaming the tenant and its queue policy are the owners';
// its deny action is any admin's, like its rules.
func (u *TenantUpdate) MayApply(role Role) error {
	switch {
	case !role.AtLeast(RoleAdmin):
		return fmt.Errorf("changing the tenant needs the admin role: %w", ErrForbidden)
	case u.Name != nil && !role.AtLeast(RoleOwner):
		return fmt.Errorf("only an owner can rename the tenant: %w", ErrForbidden)
	case u.QueuePolicy != nil && !role.AtLeast(RoleOwner):
		return fmt.Errorf("only an owner can change the queue policy: %w", ErrForbidden)
	}
	return nil
}

// AdminTenantUpdate is what the operator may change about a tenant.
type AdminTenantUpdate struct {
	Plan      *string `json:"plan,omitempty"`
	Suspended *bool   `json:"suspended,omitempty"`
	// Quotas sets overrides by quota name; a null value removes an override.
	Quotas map[string]*int64 `json:"quotas,omitempty"`
}

// Validate checks the update against the plans there are.
func (u *AdminTenantUpdate) Validate(plans Plans) error {
	if u.Plan != nil {
		if _, ok := plans[*u.Plan]; !ok {
			return invalid("plan", "unknown plan %q", *u.Plan)
		}
	}
	for name, v := range u.Quotas {
		if !isQuotaName(name) {
			return invalid("quotas."+name, "unknown quota")
		}
		if v != nil && *v < 0 {
			return invalid("quotas."+name, "must not be negative")
		}
	}
	return nil
}

func validateDisplayName(field, name string) error {
	if strings.TrimSpace(name) == "" {
		return invalid(field, "must not be blank")
	}
	if !utf8.ValidString(name) {
		return invalid(field, "must be valid UTF-8")
	}
	if utf8.RuneCountInString(name) > 100 {
		return invalid(field, "must be at most 100 characters")
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return invalid(field, "must not contain control characters")
		}
	}
	return nil
}
