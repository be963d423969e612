package tenants_test

import (
	"errors"
	"testing"

	"github.com/roosthub/roost/tenants"
)

func TestTenantUpdateRoles(t *testing.T) {
	name, newest, disconnect := "Acme", tenants.DropNewest, tenants.DenyDisconnect
	for _, tc := range []struct {
		name string
		u    tenants.TenantUpdate
		role tenants.Role
		ok   bool
	}{
		{"admin sets deny_action", tenants.TenantUpdate{DenyAction: &disconnect}, tenants.RoleAdmin, true},
		{"owner sets deny_action", tenants.TenantUpdate{DenyAction: &disconnect}, tenants.RoleOwner, true},
		{"viewer sets deny_action", tenants.TenantUpdate{DenyAction: &disconnect}, tenants.RoleViewer, false},
		{"admin renames", tenants.TenantUpdate{Name: &name}, tenants.RoleAdmin, false},
		{"admin sets queue_policy", tenants.TenantUpdate{QueuePolicy: &newest}, tenants.RoleAdmin, false},
		{"admin renames and sets deny_action", tenants.TenantUpdate{Name: &name, DenyAction: &disconnect}, tenants.RoleAdmin, false},
		{"owner renames and sets everything", tenants.TenantUpdate{Name: &name, QueuePolicy: &newest, DenyAction: &disconnect}, tenants.RoleOwner, true},
		{"no role", tenants.TenantUpdate{DenyAction: &disconnect}, "", false},
	} {
		err := tc.u.MayApply(tc.role)
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: got %v, want allowed", tc.name, err)
		case !tc.ok && !errors.Is(err, tenants.ErrForbidden):
			t.Errorf("%s: got %v, want ErrForbidden", tc.name, err)
		}
	}
}

func TestTenantUpdateDenyAction(t *testing.T) {
	for _, tc := range []struct {
		value string
		ok    bool
	}{{"ignore", true}, {"disconnect", true}, {"", false}, {"Ignore", false}, {"drop", false}, {"disconnect ", false}} {
		a := tenants.DenyAction(tc.value)
		err := (&tenants.TenantUpdate{DenyAction: &a}).Validate()
		var fe *tenants.FieldError
		switch {
		case tc.ok && err != nil:
			t.Errorf("deny_action %q: got %v, want valid", tc.value, err)
		case !tc.ok && (!errors.As(err, &fe) || fe.Field != "deny_action"):
			t.Errorf("deny_action %q: got %v, want a FieldError on deny_action", tc.value, err)
		}
	}
}
