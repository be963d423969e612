// Package storetest is the contract every directory store must meet. Run it
// against each database the store supports: the same behaviour, to the
// error kind, on SQLite and on Postgres.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// Run runs the whole suite. open returns a new, migrated, empty store; reopen
// (may be nil) returns a second store over the same data, to prove that
// nothing lives only in memory.
func Run(t *testing.T, open func(t *testing.T) (store *tenants.Store, reopen func() *tenants.Store)) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s *tenants.Store, reopen func() *tenants.Store)
	}{
		{"Accounts", testAccounts},
		{"Tenants", testTenants},
		{"ConcurrentSlug", testConcurrentSlug},
		{"Members", testMembers},
		{"Devices", testDevices},
		{"DeviceQuota", testDeviceQuota},
		{"ACLRules", testACLRules},
		{"APIKeys", testAPIKeys},
		{"APIKeyLimit", testAPIKeyLimit},
		{"DeviceKeys", testDeviceKeys},
		{"Certificates", testCertificates},
		{"Audit", testAudit},
		{"Settings", testSettings},
		{"CrossTenant", testCrossTenant},
		{"Pagination", testPagination},
		{"Survives", testSurvives},
		{"Changes", testChanges},
		{"ExportRules", testExportRules},
		{"Destinations", testDestinations},
		{"KafkaDestinations", testKafkaDestinations},
		{"GoneOutboxes", testGoneOutboxes},
		{"ResealDestination", testResealDestination},
		{"SealedUnder", testSealedUnder},
		{"DestinationPolicy", testDestinationPolicy},
		{"DestinationHeadersFollowURL", testDestinationHeadersFollowURL},
		{"Usage", testUsage},
		{"Billing", testBilling},
		{"StripeEventsOnce", testStripeEventsOnce},
		{"MoveACLRule", testMoveACLRule},
		{"SearchDevices", testSearchDevices},
		{"Sessions", testSessions},
		{"SignUp", testSignUp},
		{"MembershipRules", testMembershipRules},
		{"KeysEndWithMember", testKeysEndWithMember},
		{"TenantLimits", testTenantLimits},
		{"Events", testEvents},
		{"EventsConcurrentWriters", testEventsConcurrentWriters},
		{"EventsCap", testEventsCap},
		{"Shadows", testShadows},
		{"MFA", testMFA},
		{"MFAChallenges", testMFAChallenges},
		{"Invites", testInvites},
		{"SSOAccounts", testSSOAccounts},
		{"AccountTokens", testAccountTokens},
		{"FirstProofOfEmail", testFirstProofOfEmail},
		{"AccountSessions", testAccountSessions},
		{"AccountSessionsBounded", testAccountSessionsBounded},
		{"AuditWhere", testAuditWhere},
		// Issue 22: groups, metadata in policy, bulk import, provisioning.
		{"DeviceGroups", testDeviceGroups},
		{"GroupACL", testGroupACL},
		{"ImportDevices", testImportDevices},
		{"ImportCredentials", testImportCredentials},
		{"ProvisionDevice", testProvisionDevice},
		// Issue 21: app streams counted across processes.
		{"StreamLeases", testStreamLeases},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, reopen := open(t)
			tc.fn(t, s, reopen)
		})
	}
}

var ctx = tenants.WithActor(context.Background(), "test")

func mustAccount(t *testing.T, s *tenants.Store, email string) tenants.Account {
	t.Helper()
	a, err := s.CreateAccount(ctx, tenants.Signup{Email: email, Password: "correct horse battery"})
	if err != nil {
		t.Fatalf("CreateAccount(%s): %v", email, err)
	}
	return a
}

// mustVerified is mustAccount with its email verified, as the link mailed
// at sign-up does: only such an account can be added as a member.
func mustVerified(t *testing.T, s *tenants.Store, email string) tenants.Account {
	t.Helper()
	a := mustAccount(t, s, email)
	_, token, err := s.IssueVerifyToken(ctx, a.ID)
	if err != nil {
		t.Fatalf("IssueVerifyToken(%s): %v", email, err)
	}
	if a, err = s.VerifyEmail(ctx, token, ""); err != nil {
		t.Fatalf("VerifyEmail(%s): %v", email, err)
	}
	return a
}

func mustTenant(t *testing.T, s *tenants.Store, owner tenants.Account, slug string) tenants.Tenant {
	t.Helper()
	tn, err := s.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: slug})
	if err != nil {
		t.Fatalf("CreateTenant(%s): %v", slug, err)
	}
	return tn
}

func mustDevice(t *testing.T, s *tenants.Store, tenant, name string) (tenants.Device, string) {
	t.Helper()
	d, secret, err := s.CreateDevice(ctx, tenant, tenants.DeviceInput{Name: name})
	if err != nil {
		t.Fatalf("CreateDevice(%s/%s): %v", tenant, name, err)
	}
	return d, secret
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func wantField(t *testing.T, what string, err error, field string) {
	t.Helper()
	var fe *tenants.FieldError
	if !errors.As(err, &fe) || fe.Field != field {
		t.Fatalf("%s: got error %v, want a FieldError on %q", what, err, field)
	}
}

func testAccounts(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	a := mustAccount(t, s, "Ada@Example.com")
	if a.Email != "ada@example.com" {
		t.Errorf("email: got %q, want it lower-cased", a.Email)
	}
	_, err := s.CreateAccount(ctx, tenants.Signup{Email: "ADA@example.com", Password: "another long one"})
	wantErr(t, "second signup with the same email", err, tenants.ErrConflict)
	_, err = s.CreateAccount(ctx, tenants.Signup{Email: "not-an-email", Password: "correct horse battery"})
	wantField(t, "bad email", err, "email")
	_, err = s.CreateAccount(ctx, tenants.Signup{Email: "short@example.com", Password: "short"})
	wantField(t, "short password", err, "password")

	got, err := s.Authenticate(ctx, "ada@EXAMPLE.com", "correct horse battery")
	if err != nil || got.ID != a.ID {
		t.Fatalf("Authenticate: got %v, %v, want account %s", got.ID, err, a.ID)
	}
	_, err = s.Authenticate(ctx, "ada@example.com", "wrong password!")
	wantErr(t, "wrong password", err, tenants.ErrUnauthorized)
	_, err = s.Authenticate(ctx, "nobody@example.com", "correct horse battery")
	wantErr(t, "unknown email", err, tenants.ErrUnauthorized)
	byID, err := s.Account(ctx, a.ID)
	if err != nil || byID.Email != a.Email {
		t.Fatalf("Account(id): got %+v, %v", byID, err)
	}
	_, err = s.Account(ctx, "acc_nope")
	wantErr(t, "unknown account id", err, tenants.ErrNotFound)
}

func testTenants(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	tn := mustTenant(t, s, owner, "acme")
	if tn.Plan != tenants.PlanFree || tn.Name != "acme" || tn.Suspended || tn.Role != tenants.RoleOwner || tn.QueuePolicy != tenants.DropOldest || tn.DenyAction != tenants.DenyIgnore {
		t.Errorf("new tenant: got %+v, want plan free, name acme, not suspended, role owner, drop_oldest, deny_action ignore", tn)
	}
	_, err := s.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: "acme"})
	wantErr(t, "duplicate slug", err, tenants.ErrConflict)
	for _, bad := range []string{"", "ab", "-acme", "acme-", "Acme", "ac_me", "a/b", "аcme", "abcdefghijklmnopqrstuvwxyz0123456"} {
		_, err := s.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: bad})
		wantField(t, fmt.Sprintf("slug %q", bad), err, "slug")
	}

	m, err := s.Membership(ctx, "acme", owner.ID)
	if err != nil || m.Role != tenants.RoleOwner {
		t.Fatalf("creator's membership: got %+v, %v, want owner", m, err)
	}
	rules, err := s.ACLRules(ctx, "acme")
	if err != nil || len(rules) != 1 || rules[0].Effect != tenants.Allow || rules[0].Topic != "#" || rules[0].Device != "*" || rules[0].Action != tenants.ActionAll {
		t.Fatalf("new tenant's rules: got %+v, %v, want one allow-all rule", rules, err)
	}

	name := "Acme Corp"
	up, err := s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{Name: &name})
	if err != nil || up.Name != name {
		t.Fatalf("UpdateTenant: got %+v, %v", up, err)
	}
	blank := "  "
	_, err = s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{Name: &blank})
	wantField(t, "blank name", err, "name")
	newest, bogusPolicy := tenants.DropNewest, tenants.QueuePolicy("drop_all")
	if up, err := s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{QueuePolicy: &newest}); err != nil || up.QueuePolicy != newest || up.Name != name {
		t.Errorf("queue policy update: got %+v, %v", up, err)
	}
	_, err = s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{QueuePolicy: &bogusPolicy})
	wantField(t, "unknown queue policy", err, "queue_policy")
	disconnect, bogusAction := tenants.DenyDisconnect, tenants.DenyAction("explode")
	if up, err := s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{DenyAction: &disconnect}); err != nil || up.DenyAction != disconnect || up.QueuePolicy != newest {
		t.Errorf("deny action update: got %+v, %v, want disconnect with the queue policy kept", up, err)
	}
	if got, err := s.Tenant(ctx, "acme"); err != nil || got.DenyAction != disconnect {
		t.Errorf("deny action read back: got %q, %v, want disconnect", got.DenyAction, err)
	}
	_, err = s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{DenyAction: &bogusAction})
	wantField(t, "unknown deny action", err, "deny_action")
	if tn.OutboxPolicy != tenants.OutboxDropOldest {
		t.Errorf("new tenant's outbox_policy %q, want drop_oldest", tn.OutboxPolicy)
	}
	refuse, bogusOutbox := tenants.OutboxRefuse, tenants.OutboxPolicy("drop_newest")
	if up, err := s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{OutboxPolicy: &refuse}); err != nil || up.OutboxPolicy != refuse || up.DenyAction != disconnect {
		t.Errorf("outbox policy update: got %+v, %v, want refuse with the deny action kept", up, err)
	}
	if got, err := s.Tenant(ctx, "acme"); err != nil || got.OutboxPolicy != refuse {
		t.Errorf("outbox policy read back: got %q, %v, want refuse", got.OutboxPolicy, err)
	}
	_, err = s.UpdateTenant(ctx, "acme", tenants.TenantUpdate{OutboxPolicy: &bogusOutbox})
	wantField(t, "unknown outbox policy", err, "outbox_policy")

	plan, suspended := tenants.PlanPro, true
	limit := int64(7)
	up, err = s.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Plan: &plan, Suspended: &suspended, Quotas: map[string]*int64{"max_devices": &limit}})
	if err != nil {
		t.Fatalf("AdminUpdateTenant: %v", err)
	}
	got, _ := s.Tenant(ctx, "acme")
	if got.Plan != plan || !got.Suspended || got.Name != name || got.Quotas().MaxDevices != 7 || got.Quotas().MaxConnections != tenants.PlanQuotas(plan).MaxConnections {
		t.Errorf("after admin update: got %+v (quotas %+v), want pro, suspended, max_devices 7, name kept", got, got.Quotas())
	}
	_, err = s.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": nil}})
	if err != nil {
		t.Fatal(err)
	}
	got, _ = s.Tenant(ctx, "acme")
	if got.Quotas().MaxDevices != tenants.PlanQuotas(plan).MaxDevices || len(got.Overrides) != 0 {
		t.Errorf("removing an override: got %+v, want the plan's quota back", got.Overrides)
	}
	bogus := "platinum"
	_, err = s.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Plan: &bogus})
	wantField(t, "unknown plan", err, "plan")
	_, err = s.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_wings": &limit}})
	wantField(t, "unknown quota", err, "quotas.max_wings")
	_, err = s.AdminUpdateTenant(ctx, "nope", tenants.AdminTenantUpdate{Suspended: &suspended})
	wantErr(t, "admin update of unknown tenant", err, tenants.ErrNotFound)

	mustDevice(t, s, "acme", "d1")
	if err := s.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatalf("DeleteTenant: %v", err)
	}
	_, err = s.Tenant(ctx, "acme")
	wantErr(t, "deleted tenant", err, tenants.ErrNotFound)
	_, err = s.Device(ctx, "acme", "d1")
	wantErr(t, "device of deleted tenant", err, tenants.ErrNotFound)
	wantErr(t, "second delete", s.DeleteTenant(ctx, "acme"), tenants.ErrNotFound)
	// The slug stays reserved while the deleted tenant's records are kept;
	// once they are pruned it is free, with nothing of the old tenant in it.
	_, err = s.CreateTenant(ctx, owner.ID, tenants.TenantInput{Slug: "acme"})
	wantErr(t, "recreating a deleted tenant's slug at once", err, tenants.ErrConflict)
	if _, err := s.PruneUsage(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	mustTenant(t, s, owner, "acme")
	if ds, _, _ := s.Devices(ctx, "acme", tenants.Page{}); len(ds) != 0 {
		t.Errorf("recreated tenant has %d devices of the deleted one", len(ds))
	}
}

func testConcurrentSlug(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	a := mustAccount(t, s, "a@example.com")
	b := mustAccount(t, s, "b@example.com")
	const rounds = 5
	for i := range rounds {
		slug := fmt.Sprintf("race-%d", i)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, acc := range []tenants.Account{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[j] = s.CreateTenant(ctx, acc.ID, tenants.TenantInput{Slug: slug})
			}()
		}
		wg.Wait()
		ok, conflict := 0, 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, tenants.ErrConflict):
				conflict++
			default:
				t.Fatalf("concurrent create of %s: unexpected error %v", slug, err)
			}
		}
		if ok != 1 || conflict != 1 {
			t.Fatalf("concurrent create of %s: got %d created and %d conflicts, want 1 and 1", slug, ok, conflict)
		}
	}
}

// ownerBy is an owner acting through no account of the test's (as an API
// key would).
var ownerBy = tenants.By{Role: tenants.RoleOwner, Name: "an owner"}

func testMembers(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	viewer := mustVerified(t, s, "viewer@example.com")
	mallory := mustAccount(t, s, "mallory@example.com")
	mustTenant(t, s, owner, "acme")

	m, err := s.AddMember(ctx, "acme", ownerBy, tenants.MemberInput{Email: "VIEWER@example.com", Role: tenants.RoleViewer})
	if err != nil || m.AccountID != viewer.ID || m.Role != tenants.RoleViewer {
		t.Fatalf("AddMember: got %+v, %v", m, err)
	}
	_, err = s.AddMember(ctx, "acme", ownerBy, tenants.MemberInput{Email: "viewer@example.com", Role: tenants.RoleAdmin})
	wantErr(t, "adding a member twice", err, tenants.ErrConflict)
	_, err = s.AddMember(ctx, "acme", ownerBy, tenants.MemberInput{Email: "ghost@example.com", Role: tenants.RoleAdmin})
	wantErr(t, "adding an unknown email", err, tenants.ErrNoAccount)
	// Anyone can sign up with someone else's email: an account that has
	// not verified it is added no more than an unknown email is.
	_, err = s.AddMember(ctx, "acme", ownerBy, tenants.MemberInput{Email: mallory.Email, Role: tenants.RoleAdmin})
	wantErr(t, "adding an account whose email is not verified", err, tenants.ErrNoAccount)
	_, err = s.AddMember(ctx, "acme", ownerBy, tenants.MemberInput{Email: "viewer@example.com", Role: "god"})
	wantField(t, "unknown role", err, "role")

	ts, _, err := s.TenantsOf(ctx, viewer.ID, tenants.Page{})
	if err != nil || len(ts) != 1 || ts[0].Slug != "acme" || ts[0].Role != tenants.RoleViewer {
		t.Fatalf("TenantsOf(viewer): got %+v, %v", ts, err)
	}
	ms, _, err := s.Members(ctx, "acme", tenants.Page{})
	if err != nil || len(ms) != 2 {
		t.Fatalf("Members: got %d, %v, want 2", len(ms), err)
	}
	wantErr(t, "removing the last owner", s.RemoveMember(ctx, "acme", owner.ID, ownerBy, false), tenants.ErrConflict)
	if err := s.RemoveMember(ctx, "acme", viewer.ID, ownerBy, false); err != nil {
		t.Fatalf("RemoveMember: %v", err)
	}
	_, err = s.Membership(ctx, "acme", viewer.ID)
	wantErr(t, "removed member's membership", err, tenants.ErrNotFound)
	wantErr(t, "removing a non-member", s.RemoveMember(ctx, "acme", viewer.ID, ownerBy, false), tenants.ErrNotFound)
}

func testDevices(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	on := false
	d, secret, err := s.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: "sensor-1", Enabled: &on, ClientIDs: tenants.ClientIDsAny, Metadata: map[string]string{"room": "kitchen"}})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if d.Username != "acme/sensor-1" || d.Enabled || d.ClientIDs != tenants.ClientIDsAny || d.Metadata["room"] != "kitchen" {
		t.Errorf("created device: got %+v", d)
	}
	if len(secret) < 22 {
		t.Errorf("secret %q is shorter than 128 bits of base64", secret)
	}
	got, err := s.Device(ctx, "acme", "sensor-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.SecretHash == secret || !tenants.CheckSecret(secret, got.SecretHash) || tenants.CheckSecret(secret+"x", got.SecretHash) {
		t.Errorf("stored secret hash does not verify the secret, or is the secret itself")
	}
	if !got.CreatedAt.Equal(d.CreatedAt) || got.LastSeenAt != nil {
		t.Errorf("read back: created %v (want %v), last seen %v (want nil)", got.CreatedAt, d.CreatedAt, got.LastSeenAt)
	}
	_, _, err = s.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: "sensor-1"})
	wantErr(t, "duplicate device", err, tenants.ErrConflict)
	for _, bad := range []string{"", "a/b", "a+b", "a#", "$sys", "a:b", "a b", "-lead", "x\x00", string(make([]byte, 129))} {
		_, _, err := s.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: bad})
		wantField(t, fmt.Sprintf("device name %q", bad), err, "name")
	}
	_, _, err = s.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: "ok", ClientIDs: "some"})
	wantField(t, "bad client_ids", err, "client_ids")
	_, _, err = s.CreateDevice(ctx, "nope", tenants.DeviceInput{Name: "d1"})
	wantErr(t, "device in unknown tenant", err, tenants.ErrNotFound)

	yes := true
	exact := tenants.ClientIDsExact
	md := map[string]string{"room": "hall", "floor": "2"}
	up, err := s.UpdateDevice(ctx, "acme", "sensor-1", tenants.DeviceUpdate{Enabled: &yes, ClientIDs: &exact, Metadata: &md})
	if err != nil || !up.Enabled || up.ClientIDs != exact || up.Metadata["room"] != "hall" || len(up.Metadata) != 2 {
		t.Fatalf("UpdateDevice: got %+v, %v", up, err)
	}
	if up.SecretHash != got.SecretHash {
		t.Errorf("UpdateDevice changed the secret")
	}
	_, err = s.UpdateDevice(ctx, "acme", "nope", tenants.DeviceUpdate{Enabled: &yes})
	wantErr(t, "update unknown device", err, tenants.ErrNotFound)

	_, newSecret, err := s.RotateDeviceSecret(ctx, "acme", "sensor-1")
	if err != nil || newSecret == secret {
		t.Fatalf("RotateDeviceSecret: %v (same secret: %v)", err, newSecret == secret)
	}
	got, _ = s.Device(ctx, "acme", "sensor-1")
	if tenants.CheckSecret(secret, got.SecretHash) || !tenants.CheckSecret(newSecret, got.SecretHash) {
		t.Errorf("after rotation the old secret must fail and the new one pass")
	}

	seen := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	if err := s.TouchDevice(ctx, "acme", "sensor-1", seen); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Device(ctx, "acme", "sensor-1")
	if got.LastSeenAt == nil || !got.LastSeenAt.Equal(seen) {
		t.Errorf("last seen: got %v, want %v", got.LastSeenAt, seen)
	}

	if err := s.DeleteDevice(ctx, "acme", "sensor-1"); err != nil {
		t.Fatal(err)
	}
	_, err = s.Device(ctx, "acme", "sensor-1")
	wantErr(t, "deleted device", err, tenants.ErrNotFound)
	wantErr(t, "second delete", s.DeleteDevice(ctx, "acme", "sensor-1"), tenants.ErrNotFound)
}

func testDeviceQuota(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	limit := int64(2)
	if _, err := s.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": &limit}}); err != nil {
		t.Fatal(err)
	}
	mustDevice(t, s, "acme", "d1")
	mustDevice(t, s, "acme", "d2")
	_, _, err := s.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: "d3"})
	var qe *tenants.QuotaError
	if !errors.As(err, &qe) || qe.Quota != "max_devices" || qe.Limit != 2 {
		t.Fatalf("third device over max_devices=2: got %v, want a QuotaError naming max_devices", err)
	}
	if err := s.DeleteDevice(ctx, "acme", "d1"); err != nil {
		t.Fatal(err)
	}
	mustDevice(t, s, "acme", "d3")
}

func testACLRules(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	pos := func(i int) *int { return &i }
	// The default allow-all is at 0; put a deny first and a device rule last.
	deny, err := s.CreateACLRule(ctx, "acme", tenants.ACLRuleInput{Effect: tenants.Deny, Action: tenants.ActionPublish, Topic: "secret/#", Position: pos(0)})
	if err != nil {
		t.Fatal(err)
	}
	last, err := s.CreateACLRule(ctx, "acme", tenants.ACLRuleInput{Effect: tenants.Allow, Action: tenants.ActionSubscribe, Topic: "devices/${device}/in", Device: "d1", Position: pos(99)})
	if err != nil {
		t.Fatal(err)
	}
	rules, _ := s.ACLRules(ctx, "acme")
	if len(rules) != 3 || rules[0].ID != deny.ID || rules[2].ID != last.ID || last.Position != 2 {
		t.Fatalf("rule order: got %+v, want deny, default, device rule", rules)
	}
	for i, r := range rules {
		if r.Position != i {
			t.Errorf("rule %d has position %d", i, r.Position)
		}
	}
	for _, tc := range []struct {
		check   tenants.ACLCheck
		allowed bool
		rule    string
	}{
		{tenants.ACLCheck{Device: "d1", Action: tenants.ActionPublish, Topic: "secret/x"}, false, deny.ID},
		{tenants.ACLCheck{Device: "d1", Action: tenants.ActionSubscribe, Topic: "secret/x"}, true, rules[1].ID},
		{tenants.ACLCheck{Device: "d1", Action: tenants.ActionPublish, Topic: "public"}, true, rules[1].ID},
	} {
		allowed, rule, err := s.CheckACL(ctx, "acme", tc.check)
		if err != nil || allowed != tc.allowed || rule == nil || rule.ID != tc.rule {
			t.Errorf("CheckACL(%+v): got %v by %+v (%v), want %v by %s", tc.check, allowed, rule, err, tc.allowed, tc.rule)
		}
	}
	// Delete the default rule: the device rule moves up and everything else is denied.
	if err := s.DeleteACLRule(ctx, "acme", rules[1].ID); err != nil {
		t.Fatal(err)
	}
	rules, _ = s.ACLRules(ctx, "acme")
	if len(rules) != 2 || rules[1].ID != last.ID || rules[1].Position != 1 {
		t.Fatalf("after delete: got %+v", rules)
	}
	allowed, rule, err := s.CheckACL(ctx, "acme", tenants.ACLCheck{Device: "d1", Action: tenants.ActionSubscribe, Topic: "devices/d1/in"})
	if err != nil || !allowed || rule.ID != last.ID {
		t.Errorf("${device} rule for d1: got %v by %+v (%v)", allowed, rule, err)
	}
	allowed, rule, err = s.CheckACL(ctx, "acme", tenants.ACLCheck{Device: "d2", Action: tenants.ActionSubscribe, Topic: "devices/d1/in"})
	if err != nil || allowed || rule != nil {
		t.Errorf("d2 on d1's topic: got %v by %+v (%v), want default deny", allowed, rule, err)
	}
	wantErr(t, "delete unknown rule", s.DeleteACLRule(ctx, "acme", "acl_nope"), tenants.ErrNotFound)
	for _, bad := range []tenants.ACLRuleInput{
		{Effect: "maybe", Action: tenants.ActionAll, Topic: "#"},
		{Effect: tenants.Allow, Action: "read", Topic: "#"},
		{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "a/#/b"},
		{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "a+"},
		{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: ""},
		{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "$SYS/#"},
		{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "x/${tenant}"},
		{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "#", Device: "a/b"},
		{Effect: tenants.Allow, Action: tenants.ActionAll, Topic: "#", Position: pos(-1)},
	} {
		if _, err := s.CreateACLRule(ctx, "acme", bad); !errors.Is(err, tenants.ErrInvalid) {
			t.Errorf("CreateACLRule(%+v): got %v, want ErrInvalid", bad, err)
		}
	}
	_, _, err = s.CheckACL(ctx, "acme", tenants.ACLCheck{Device: "d1", Action: tenants.ActionPublish, Topic: "a/+"})
	wantField(t, "publish check with a wildcard", err, "topic")
}

func testAPIKeys(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	k, token, err := s.CreateAPIKey(ctx, "acme", tenants.APIKeyInput{Name: "ci", Role: tenants.RoleAdmin}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !tenants.IsAPIKey(token) || k.Prefix == "" || len(token) < len(k.Prefix)+22 || token[:len(k.Prefix)] != k.Prefix {
		t.Fatalf("token %q / prefix %q: want rk_ form with the prefix visible", token, k.Prefix)
	}
	got, err := s.AuthenticateAPIKey(ctx, token)
	if err != nil || got.ID != k.ID || got.Tenant != "acme" || got.Role != tenants.RoleAdmin || got.LastUsedAt == nil {
		t.Fatalf("AuthenticateAPIKey: got %+v, %v", got, err)
	}
	ks, _, _ := s.APIKeys(ctx, "acme", tenants.Page{})
	if len(ks) != 1 || ks[0].LastUsedAt == nil {
		t.Fatalf("APIKeys: got %+v, want one key with last use recorded", ks)
	}
	other := "A"
	if strings.HasSuffix(token, "A") {
		other = "B"
	}
	for _, bad := range []string{token + "x", token[:len(token)-1] + other, "rk_", "rk_nope_nope", "nope"} {
		if _, err := s.AuthenticateAPIKey(ctx, bad); !errors.Is(err, tenants.ErrUnauthorized) {
			t.Errorf("AuthenticateAPIKey(%q): got %v, want ErrUnauthorized", bad, err)
		}
	}
	k2, _, err := s.CreateAPIKey(ctx, "acme", tenants.APIKeyInput{Name: "reader"}, "")
	if err != nil || k2.Role != tenants.RoleViewer {
		t.Fatalf("default role: got %+v, %v, want viewer", k2, err)
	}
	_, _, err = s.CreateAPIKey(ctx, "acme", tenants.APIKeyInput{Name: ""}, "")
	wantField(t, "nameless key", err, "name")
	if err := s.DeleteAPIKey(ctx, "acme", k.ID); err != nil {
		t.Fatal(err)
	}
	_, err = s.AuthenticateAPIKey(ctx, token)
	wantErr(t, "revoked key", err, tenants.ErrUnauthorized)
	wantErr(t, "revoke twice", s.DeleteAPIKey(ctx, "acme", k.ID), tenants.ErrNotFound)
}

// testAPIKeyLimit: a tenant holds at most MaxAPIKeys keys. Keys asked for at
// once when one place is left get one key between them (the count is read
// under the tenant's lock), and revoking a key makes room again. Another
// tenant's keys do not count.
func testAPIKeyLimit(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	if _, _, err := s.CreateAPIKey(ctx, "other", tenants.APIKeyInput{Name: "elsewhere"}, ""); err != nil {
		t.Fatal(err)
	}
	var last tenants.APIKey
	for i := range tenants.MaxAPIKeys - 1 {
		k, _, err := s.CreateAPIKey(ctx, "acme", tenants.APIKeyInput{Name: fmt.Sprintf("k%d", i)}, "")
		if err != nil {
			t.Fatalf("key %d of %d: %v", i+1, tenants.MaxAPIKeys, err)
		}
		last = k
	}
	const racers = 6
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = s.CreateAPIKey(ctx, "acme", tenants.APIKeyInput{Name: fmt.Sprintf("racer%d", i)}, "")
		}()
	}
	wg.Wait()
	made := 0
	for _, err := range errs {
		var qe *tenants.QuotaError
		switch {
		case err == nil:
			made++
		case errors.As(err, &qe) && qe.Quota == "api_keys" && qe.Limit == tenants.MaxAPIKeys:
		default:
			t.Errorf("a key past the limit: got %v, want a QuotaError naming api_keys, limit %d", err, tenants.MaxAPIKeys)
		}
	}
	if made != 1 {
		t.Errorf("%d keys asked for at once with one place left: %d made, want 1", racers, made)
	}
	ks, _, err := s.APIKeys(ctx, "acme", tenants.Page{Limit: tenants.MaxPageSize})
	if err != nil || len(ks) != tenants.MaxAPIKeys {
		t.Fatalf("APIKeys: got %d keys (%v), want %d", len(ks), err, tenants.MaxAPIKeys)
	}
	if err := s.DeleteAPIKey(ctx, "acme", last.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateAPIKey(ctx, "acme", tenants.APIKeyInput{Name: "after a revoke"}, ""); err != nil {
		t.Errorf("a key after one was revoked: got %v, want it made", err)
	}
}

func testAudit(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	actx := tenants.WithActor(context.Background(), "account:"+owner.ID)
	if _, err := s.CreateTenant(actx, owner.ID, tenants.TenantInput{Slug: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateDevice(actx, "acme", tenants.DeviceInput{Name: "d1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(actx, "acme", "d1"); err != nil {
		t.Fatal(err)
	}
	es, _, err := s.Audit(ctx, "acme", tenants.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es {
		got = append(got, e.Action+" "+e.Object)
		if e.Actor != "account:"+owner.ID || e.Tenant != "acme" || e.At.IsZero() {
			t.Errorf("entry %+v: want actor account:%s, tenant acme, a time", e, owner.ID)
		}
	}
	want := []string{"device.delete device:d1", "device.create device:d1", "tenant.create tenant:acme"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("audit, newest first: got %q, want %q", got, want)
	}
	// A failed change leaves no entry.
	_, _, _ = s.CreateDevice(actx, "acme", tenants.DeviceInput{Name: "bad/name"})
	if es2, _, _ := s.Audit(ctx, "acme", tenants.Page{}); len(es2) != len(es) {
		t.Errorf("a rejected change was audited: %d entries, want %d", len(es2), len(es))
	}
}

func testSettings(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	v1, err := s.Setting(ctx, "k", func() string { return "first" })
	if err != nil || v1 != "first" {
		t.Fatalf("Setting: got %q, %v", v1, err)
	}
	v2, err := s.Setting(ctx, "k", func() string { return "second" })
	if err != nil || v2 != "first" {
		t.Fatalf("Setting again: got %q, %v, want the first value kept", v2, err)
	}
}

func testCrossTenant(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	a := mustAccount(t, s, "a@example.com")
	b := mustAccount(t, s, "b@example.com")
	mustTenant(t, s, a, "tenant-a")
	mustTenant(t, s, b, "tenant-b")
	_, secretA := mustDevice(t, s, "tenant-a", "d1")
	_, secretB := mustDevice(t, s, "tenant-b", "d1")
	da, _ := s.Device(ctx, "tenant-a", "d1")
	db, _ := s.Device(ctx, "tenant-b", "d1")
	if tenants.CheckSecret(secretB, da.SecretHash) || tenants.CheckSecret(secretA, db.SecretHash) {
		t.Fatal("one tenant's device secret opens the other tenant's same-named device")
	}
	ruleA, _ := s.ACLRules(ctx, "tenant-a")
	wantErr(t, "B deletes A's rule", s.DeleteACLRule(ctx, "tenant-b", ruleA[0].ID), tenants.ErrNotFound)
	keyA, _, _ := s.CreateAPIKey(ctx, "tenant-a", tenants.APIKeyInput{Name: "k"}, "")
	wantErr(t, "B deletes A's key", s.DeleteAPIKey(ctx, "tenant-b", keyA.ID), tenants.ErrNotFound)
	_, err := s.Membership(ctx, "tenant-a", b.ID)
	wantErr(t, "B's membership of A", err, tenants.ErrNotFound)
	if ks, _, _ := s.APIKeys(ctx, "tenant-b", tenants.Page{}); len(ks) != 0 {
		t.Errorf("B lists %d keys, want 0", len(ks))
	}
	if es, _, _ := s.Audit(ctx, "tenant-b", tenants.Page{}); len(es) == 0 {
		t.Error("B's audit is empty")
	} else {
		for _, e := range es {
			if e.Tenant != "tenant-b" {
				t.Errorf("B's audit shows %+v", e)
			}
		}
	}
	ts, _, _ := s.TenantsOf(ctx, b.ID, tenants.Page{})
	if len(ts) != 1 || ts[0].Slug != "tenant-b" {
		t.Errorf("B's tenants: got %+v", ts)
	}
	if err := s.DeleteTenant(ctx, "tenant-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Device(ctx, "tenant-a", "d1"); err != nil {
		t.Errorf("deleting B removed A's device: %v", err)
	}
}

func testPagination(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	for i := range 7 {
		mustDevice(t, s, "acme", fmt.Sprintf("d%02d", i))
	}
	var all []string
	p := tenants.Page{Limit: 3}
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		ds, next, err := s.Devices(ctx, "acme", p)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			all = append(all, d.Name)
		}
		if next == "" {
			break
		}
		p.Cursor = next
	}
	if want := "[d00 d01 d02 d03 d04 d05 d06]"; fmt.Sprint(all) != want {
		t.Errorf("paged devices: got %v, want %s", all, want)
	}
	for i := range 4 {
		mustTenant(t, s, owner, fmt.Sprintf("page-%d", i))
	}
	ts, next, _ := s.Tenants(ctx, tenants.Page{Limit: 2})
	ts2, next2, _ := s.Tenants(ctx, tenants.Page{Limit: 10, Cursor: next})
	if len(ts) != 2 || next == "" || len(ts2) != 3 || next2 != "" {
		t.Errorf("tenant pages: got %d (next %q) then %d (next %q), want 2 then 3", len(ts), next, len(ts2), next2)
	}
}

func testSurvives(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	if reopen == nil {
		t.Skip("this store cannot be reopened")
	}
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	_, secret := mustDevice(t, s, "acme", "d1")
	s2 := reopen()
	d, err := s2.Device(ctx, "acme", "d1")
	if err != nil || !tenants.CheckSecret(secret, d.SecretHash) {
		t.Fatalf("device after reopen: %v", err)
	}
	if _, err := s2.Authenticate(ctx, "owner@example.com", "correct horse battery"); err != nil {
		t.Fatalf("login after reopen: %v", err)
	}
}

func testChanges(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	var mu sync.Mutex
	var got []string
	cancel := s.Changes().Subscribe(func(c tenants.Change) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, fmt.Sprintf("%s %s %s", c.Kind, c.Tenant, c.Device))
	})
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustDevice(t, s, "acme", "d1")
	_, _, _ = s.CreateDevice(ctx, "acme", tenants.DeviceInput{Name: "d1"}) // conflict: no change
	off := false
	s.UpdateDevice(ctx, "acme", "d1", tenants.DeviceUpdate{Enabled: &off})
	s.RotateDeviceSecret(ctx, "acme", "d1")
	r, _ := s.CreateACLRule(ctx, "acme", tenants.ACLRuleInput{Effect: tenants.Deny, Action: tenants.ActionAll, Topic: "x"})
	s.DeleteACLRule(ctx, "acme", r.ID)
	yes := true
	s.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Suspended: &yes})
	s.DeleteDevice(ctx, "acme", "d1")
	s.DeleteTenant(ctx, "acme")
	cancel()
	mustTenant(t, s, owner, "after-cancel")
	want := []string{
		"tenant acme ", "device acme d1", "device acme d1", "device acme d1", "acl acme ", "acl acme ",
		"tenant acme ", "device acme d1", "tenant_deleted acme ",
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("changes:\n got %q\nwant %q", got, want)
	}
}

func testExportRules(t *testing.T, s *tenants.Store, _ func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	r, err := s.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Topic: "telemetry"})
	if err != nil {
		t.Fatal(err)
	}
	if r.KafkaTopic != "roost.acme.telemetry" {
		t.Errorf("kafka topic: got %q, want roost.acme.telemetry", r.KafkaTopic)
	}
	rs, err := s.ExportRules(ctx, "acme")
	if err != nil || len(rs) != 1 || rs[0].ID != r.ID || rs[0].KafkaTopic != r.KafkaTopic {
		t.Fatalf("ExportRules: got %+v, %v", rs, err)
	}
	if rs, _ := s.ExportRules(ctx, "other"); len(rs) != 0 {
		t.Errorf("another tenant sees %d rules", len(rs))
	}
	wantErr(t, "delete through another tenant", s.DeleteExportRule(ctx, "other", r.ID), tenants.ErrNotFound)
	for _, bad := range []tenants.ExportRuleInput{
		{Filter: "a/#/b", Topic: "t"}, {Filter: "$SYS/#", Topic: "t"}, {Filter: "#", Topic: ""},
		{Filter: "#", Topic: ".hidden"}, {Filter: "#", Topic: "a/b"}, {Filter: "#", Topic: "a b"},
	} {
		if _, err := s.CreateExportRule(ctx, "acme", bad); !errors.Is(err, tenants.ErrInvalid) {
			t.Errorf("CreateExportRule(%+v): got %v, want ErrInvalid", bad, err)
		}
	}
	if err := s.DeleteExportRule(ctx, "acme", r.ID); err != nil {
		t.Fatal(err)
	}
	if rs, _ := s.ExportRules(ctx, "acme"); len(rs) != 0 {
		t.Errorf("deleted rule still listed")
	}
}

// testUsage: deltas add up per tenant and hour, the peak keeps the highest,
// daily buckets sum their hours, a month's messages are summed, tenants stay
// apart, and a delta for a deleted tenant fails alone.
func testUsage(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	mustTenant(t, s, owner, "doomed")
	h := time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC)
	add := func(deltas ...tenants.UsageDelta) {
		t.Helper()
		if failed, err := s.AddUsage(ctx, deltas); err != nil || len(failed) != 0 {
			t.Fatalf("AddUsage: %v (%d failed)", err, len(failed))
		}
	}
	add(tenants.UsageDelta{Tenant: "acme", Hour: h.Add(17 * time.Minute), Usage: tenants.Usage{MessagesIn: 3, BytesIn: 30, ConnectionSeconds: 60, PeakConnections: 2}},
		tenants.UsageDelta{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 1000}})
	add(tenants.UsageDelta{Tenant: "acme", Hour: h, Usage: tenants.Usage{MessagesIn: 2, MessagesOut: 5, BytesIn: 20, BytesOut: 50, ConnectionSeconds: 30, PeakConnections: 1}})
	add(tenants.UsageDelta{Tenant: "acme", Hour: h.Add(time.Hour), Usage: tenants.Usage{MessagesOut: 1, BytesOut: 7, PeakConnections: 4}})
	add(tenants.UsageDelta{Tenant: "acme", Hour: h.Add(-48 * time.Hour), Usage: tenants.Usage{MessagesIn: 1}})
	add(tenants.UsageDelta{Tenant: "acme", Hour: time.Date(2026, 10, 31, 23, 0, 0, 0, time.UTC), Usage: tenants.Usage{MessagesIn: 100}})

	got, err := s.Usage(ctx, "acme", h.Add(-time.Hour), h.Add(2*time.Hour), tenants.Hourly)
	if err != nil {
		t.Fatal(err)
	}
	want := []tenants.UsageBucket{
		{Start: h, Usage: tenants.Usage{MessagesIn: 5, MessagesOut: 5, BytesIn: 50, BytesOut: 50, ConnectionSeconds: 90, PeakConnections: 2}, ConnectionMinutes: 1.5},
		{Start: h.Add(time.Hour), Usage: tenants.Usage{MessagesOut: 1, BytesOut: 7, PeakConnections: 4}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("hourly usage:\n got %+v\nwant %+v", got, want)
	}
	got, err = s.Usage(ctx, "acme", h.AddDate(0, 0, -3), h.AddDate(0, 0, 1), tenants.Daily)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Start != time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC) || got[1].MessagesIn != 5 || got[1].MessagesOut != 6 || got[1].PeakConnections != 4 || got[0].MessagesIn != 1 {
		t.Errorf("daily usage: %+v", got)
	}
	if n, err := s.MonthMessages(ctx, "acme", h); err != nil || n != 5+5+1+1 {
		t.Errorf("November's messages: %d, %v; want 12", n, err)
	}
	if n, err := s.MonthMessages(ctx, "acme", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)); err != nil || n != 0 {
		t.Errorf("December's messages: %d, %v; want 0", n, err)
	}
	if got, _ := s.Usage(ctx, "other", h, h.Add(time.Hour), tenants.Hourly); len(got) != 1 || got[0].MessagesIn != 1000 || got[0].MessagesOut != 0 {
		t.Errorf("other's usage: %+v", got)
	}

	// A commit that fails may have committed: the deltas come back with
	// the try among their Tries, and passed again they are not added
	// twice. Alone, or beside new deltas (which are added), and through
	// the one-at-a-time fallback after a failed batch.
	otherIn := func() int64 {
		t.Helper()
		got, err := s.Usage(ctx, "other", h, h.Add(time.Hour), tenants.Hourly)
		if err != nil || len(got) != 1 {
			t.Fatalf("other's usage: %+v, %v", got, err)
		}
		return got[0].MessagesIn
	}
	base := otherIn()
	faults := 0
	s.SetUsageCommitFault(func([]tenants.UsageDelta) error {
		if faults > 0 {
			faults--
			return errors.New("commit reply lost")
		}
		return nil
	})
	defer s.SetUsageCommitFault(nil)
	faults = 1
	failed, err := s.AddUsage(ctx, []tenants.UsageDelta{{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 7}}})
	if err == nil || len(failed) != 1 || len(failed[0].Tries) != 1 {
		t.Fatalf("a delta whose commit failed: returned %+v, %v; want it back with its try", failed, err)
	}
	add(failed...)
	add(append(failed, tenants.UsageDelta{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 100}})...)
	if got := otherIn(); got != base+7+100 {
		t.Errorf("after a delta whose commit failed, tried twice again: %d messages in, want %d", got, base+7+100)
	}
	faults = 1 // the batch's commit; the fallback's see its try recorded
	two := []tenants.UsageDelta{{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 1000}}, {Tenant: "acme", Hour: h.Add(-72 * time.Hour), Usage: tenants.Usage{MessagesIn: 1}}}
	if failed, err := s.AddUsage(ctx, two); err != nil || len(failed) != 0 {
		t.Errorf("a batch whose commit failed, then each alone: %+v, %v; want added", failed, err)
	}
	if got := otherIn(); got != base+7+100+1000 {
		t.Errorf("after a batch whose commit failed: %d messages in, want %d (added once)", got, base+7+100+1000)
	}
	many := make([]tenants.UsageDelta, 1500) // tries never recorded: added
	for i := range many {
		many[i] = tenants.UsageDelta{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 1}, Tries: []string{fmt.Sprintf("never-%d", i)}}
	}
	add(many...)
	// Two deltas of one try that never committed, tried one after the
	// other (as the fallback tries a failed batch's): each is added.
	add(tenants.UsageDelta{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 10}, Tries: []string{"never-shared"}})
	add(tenants.UsageDelta{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 20}, Tries: []string{"never-shared"}})
	wantIn := base + 7 + 100 + 1000 + 1500 + 30
	if got := otherIn(); got != wantIn {
		t.Errorf("after deltas whose tries were not recorded: %d messages in, want %d", got, wantIn)
	}
	// The record of a try whose commit failed is kept a week: past it,
	// the next call deletes it (a delta passed again with it then counts
	// again), and not the records made since.
	s.SetClock(func() time.Time { return time.Now().Add(8 * 24 * time.Hour) })
	faults = 1
	later, err := s.AddUsage(ctx, []tenants.UsageDelta{{Tenant: "other", Hour: h, Usage: tenants.Usage{MessagesIn: 3}}})
	if err == nil || len(later) != 1 {
		t.Fatalf("a delta whose commit failed: returned %+v, %v; want it back", later, err)
	}
	wantIn += 3
	s.SetClock(func() time.Time { return time.Now().Add(8*24*time.Hour + 2*time.Hour) }) // the next prune
	add(failed...)
	add(later...)
	s.SetClock(time.Now)
	if got := otherIn(); got != wantIn+7 {
		t.Errorf("after the old try's record was pruned: %d messages in, want %d (the old delta again, not the new)", got, wantIn+7)
	}

	// A deleted tenant's usage is kept, its last deltas still count, and
	// its slug stays reserved until the usage is pruned.
	before, _ := s.Usage(ctx, "doomed", h, h.Add(time.Hour), tenants.Hourly)
	if err := s.DeleteTenant(ctx, "doomed"); err != nil {
		t.Fatal(err)
	}
	failed, err = s.AddUsage(ctx, []tenants.UsageDelta{
		{Tenant: "doomed", Hour: h, Usage: tenants.Usage{MessagesIn: 1}},
		{Tenant: "acme", Hour: h, Usage: tenants.Usage{MessagesIn: 1}},
	})
	if err != nil || len(failed) != 0 {
		t.Errorf("deltas after a deletion: failed %+v, err %v", failed, err)
	}
	was := int64(0)
	for _, b := range before {
		was += b.MessagesIn
	}
	if got, _ := s.Usage(ctx, "doomed", h, h.Add(time.Hour), tenants.Hourly); len(got) != 1 || got[0].MessagesIn != was+1 {
		t.Errorf("a deleted tenant's usage: %+v (before %+v)", got, before)
	}
	if got, _ := s.Usage(ctx, "acme", h, h.Add(time.Hour), tenants.Hourly); len(got) != 1 || got[0].MessagesIn != 6 {
		t.Errorf("acme's delta beside the deleted tenant's: %+v", got)
	}
	reuser := mustAccount(t, s, "reuser@example.com")
	_, err = s.CreateTenant(ctx, reuser.ID, tenants.TenantInput{Slug: "doomed"})
	wantErr(t, "registering a deleted tenant's slug while its usage is kept", err, tenants.ErrConflict)
	if n, err := s.PruneUsage(ctx, time.Now().Add(time.Hour)); err != nil || n == 0 {
		t.Errorf("PruneUsage: %d rows, %v", n, err)
	}
	if got, _ := s.Usage(ctx, "doomed", h, h.Add(time.Hour), tenants.Hourly); len(got) != 0 {
		t.Errorf("usage after pruning: %+v", got)
	}
	if _, err := s.CreateTenant(ctx, reuser.ID, tenants.TenantInput{Slug: "doomed"}); err != nil {
		t.Errorf("the slug after pruning: %v", err)
	}
	if got, _ := s.Usage(ctx, "doomed", h, h.Add(time.Hour), tenants.Hourly); len(got) != 0 {
		t.Errorf("the new tenant sees the old one's usage: %+v", got)
	}
}

func mustDestination(t *testing.T, s *tenants.Store, tenant, name string) tenants.Destination {
	t.Helper()
	id := tenants.NewDestinationID()
	d, err := s.CreateDestination(ctx, tenant, id, tenants.DestinationInput{Name: name, Type: "webhook", URL: "https://hooks.example.com/" + name,
		Headers: map[string]string{"authorization": "Bearer x"}}, tenants.Sealed{Secret: "sealed-secret-of-" + id, Headers: "sealed-headers-of-" + id})
	if err != nil {
		t.Fatalf("CreateDestination(%s): %v", name, err)
	}
	return d
}

func testDestinations(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "owner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	d := mustDestination(t, s, "acme", "ingest")
	if d.Type != "webhook" || len(d.Headers) != 1 || d.Headers[0] != "Authorization" || !strings.HasPrefix(d.ID, "dst_") {
		t.Errorf("created: %+v", d)
	}
	_, err := s.CreateDestination(ctx, "acme", tenants.NewDestinationID(), tenants.DestinationInput{Name: "ingest", Type: "webhook", URL: "https://x.example.com"}, tenants.Sealed{Secret: "s"})
	wantErr(t, "a second destination named ingest", err, tenants.ErrConflict)
	for _, bad := range []struct {
		in    tenants.DestinationInput
		field string
	}{
		{tenants.DestinationInput{Name: "a b", Type: "webhook", URL: "https://x"}, "name"},
		{tenants.DestinationInput{Name: "dst_x", Type: "webhook", URL: "https://x"}, "name"},
		{tenants.DestinationInput{Name: "k", Type: "kafka", URL: "https://x"}, "url"},
		{tenants.DestinationInput{Name: "k", Type: "mqtt", URL: "https://x"}, "type"},
		{tenants.DestinationInput{Name: "k", Type: "webhook"}, "url"},
		{tenants.DestinationInput{Name: "k", Type: "webhook", URL: "https://x", Headers: map[string]string{"Host": "evil"}}, "headers"},
		{tenants.DestinationInput{Name: "k", Type: "webhook", URL: "https://x", Headers: map[string]string{"X-A": "1\r\nX-B: 2"}}, "headers"},
		{tenants.DestinationInput{Name: "k", Type: "webhook", URL: "https://x", Headers: map[string]string{"Roost-Signature": "forged"}}, "headers"},
	} {
		_, err := s.CreateDestination(ctx, "acme", tenants.NewDestinationID(), bad.in, tenants.Sealed{Secret: "s"})
		wantField(t, fmt.Sprintf("CreateDestination(%+v)", bad.in), err, bad.field)
	}

	// What was sealed is kept as given, and read back by id or name, only
	// in its tenant.
	other := reopen()
	got, err := other.Destination(ctx, "acme", d.ID)
	if err != nil || got.Sealed.Secret != "sealed-secret-of-"+d.ID || got.Sealed.Headers != "sealed-headers-of-"+d.ID || got.URL != d.URL {
		t.Errorf("Destination after reopening: %+v, %v", got, err)
	}
	if byName, err := s.DestinationByRef(ctx, "acme", "ingest"); err != nil || byName.ID != d.ID {
		t.Errorf("DestinationByRef(ingest): %+v, %v", byName, err)
	}
	_, err = s.Destination(ctx, "other", d.ID)
	wantErr(t, "another tenant's destination", err, tenants.ErrNotFound)
	_, err = s.DestinationByRef(ctx, "other", "ingest")
	wantErr(t, "another tenant's destination by name", err, tenants.ErrNotFound)
	if ds, err := s.Destinations(ctx, "other"); err != nil || len(ds) != 0 {
		t.Errorf("other's destinations: %+v, %v", ds, err)
	}

	// Updates: name, URL, headers re-sealed; another tenant's is not found.
	name, url := "ingest-2", "https://hooks.example.com/v2"
	hdrs := map[string]string{"X-Api-Key": "k2", "X-Env": "prod"}
	up, err := s.UpdateDestination(ctx, "acme", d.ID, tenants.DestinationUpdate{Name: &name, URL: &url, Headers: &hdrs},
		func(h map[string]string) string { return fmt.Sprintf("resealed-%d", len(h)) })
	if err != nil || up.Name != name || up.URL != url || strings.Join(up.Headers, ",") != "X-Api-Key,X-Env" || up.Sealed.Headers != "resealed-2" || up.Sealed.Secret != d.Sealed.Secret {
		t.Errorf("UpdateDestination: %+v, %v", up, err)
	}
	_, err = s.UpdateDestination(ctx, "other", d.ID, tenants.DestinationUpdate{Name: &name}, nil)
	wantErr(t, "update through another tenant", err, tenants.ErrNotFound)
	second := mustDestination(t, s, "acme", "second")
	_, err = s.UpdateDestination(ctx, "acme", second.ID, tenants.DestinationUpdate{Name: &name}, nil)
	wantErr(t, "rename onto a taken name", err, tenants.ErrConflict)
	rot, err := s.RotateDestinationSecret(ctx, "acme", d.ID, "rotated")
	if err != nil || rot.Sealed.Secret != "rotated" {
		t.Errorf("RotateDestinationSecret: %+v, %v", rot, err)
	}
	_, err = s.RotateDestinationSecret(ctx, "other", d.ID, "evil")
	wantErr(t, "rotate through another tenant", err, tenants.ErrNotFound)

	// Rules name a destination by id or name and store its id; Kafka
	// export sees only Kafka rules.
	r, err := s.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "sensors/#", Destination: name, Condition: "payload.temp > 30"})
	if err != nil || r.Destination != d.ID || r.Condition != "payload.temp > 30" || r.KafkaTopic != "" {
		t.Fatalf("a rule to a destination by name: %+v, %v", r, err)
	}
	if _, err := s.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "#", Topic: "all"}); err != nil {
		t.Fatal(err)
	}
	if rs, err := s.ExportRules(ctx, "acme"); err != nil || len(rs) != 1 || rs[0].Topic != "all" {
		t.Errorf("ExportRules: %+v, %v; want the Kafka rule only", rs, err)
	}
	if rs, err := s.Rules(ctx, "acme"); err != nil || len(rs) != 2 {
		t.Errorf("Rules: %+v, %v; want both", rs, err)
	}
	if ts, err := s.DestinationRuleTenants(ctx); err != nil || len(ts) != 1 || ts[0] != "acme" {
		t.Errorf("DestinationRuleTenants: %v, %v; want [acme] (other has none)", ts, err)
	}
	if got, err := s.Rule(ctx, "acme", r.ID); err != nil || got.Destination != d.ID {
		t.Errorf("Rule: %+v, %v", got, err)
	}
	// A projection is stored as given, and read back by Rule and Rules.
	const projection = `{"t": payload.temp, "room": metadata.room}`
	pr, err := s.CreateExportRule(ctx, "acme", tenants.ExportRuleInput{Filter: "rooms/#", Destination: d.ID, Projection: projection})
	if err != nil || pr.Projection != projection {
		t.Fatalf("a rule with a projection: %+v, %v", pr, err)
	}
	if got, err := s.Rule(ctx, "acme", pr.ID); err != nil || got.Projection != projection {
		t.Errorf("Rule with a projection: %+v, %v", got, err)
	}
	if rs, _ := s.Rules(ctx, "acme"); len(rs) != 3 || rs[2].Projection != projection || rs[0].Projection != "" {
		t.Errorf("Rules with a projection: %+v", rs)
	}
	if err := s.DeleteExportRule(ctx, "acme", pr.ID); err != nil {
		t.Fatal(err)
	}
	_, err = s.Rule(ctx, "other", r.ID)
	wantErr(t, "another tenant's rule", err, tenants.ErrNotFound)
	for _, bad := range []struct {
		in    tenants.ExportRuleInput
		field string
	}{
		{tenants.ExportRuleInput{Filter: "#", Destination: "nope"}, "destination"},
		{tenants.ExportRuleInput{Filter: "#", Topic: "t", Destination: d.ID}, "destination"},
		{tenants.ExportRuleInput{Filter: "#", Destination: d.ID, Condition: strings.Repeat("x", 5000)}, "condition"},
		{tenants.ExportRuleInput{Filter: "#", Destination: d.ID, Projection: strings.Repeat("x", 5000)}, "projection"},
	} {
		_, err := s.CreateExportRule(ctx, "acme", bad.in)
		wantField(t, fmt.Sprintf("CreateExportRule(%+v)", bad.in), err, bad.field)
	}
	_, err = s.CreateExportRule(ctx, "other", tenants.ExportRuleInput{Filter: "#", Destination: d.ID})
	wantField(t, "a rule in other naming acme's destination", err, "destination")
	// A rule to the operator's Kafka (a topic, no destination) takes a
	// condition too.
	if kr, err := s.CreateExportRule(ctx, "other", tenants.ExportRuleInput{Filter: "#", Topic: "t", Condition: "true"}); err != nil {
		t.Errorf("an operator-Kafka rule with a condition: %v", err)
	} else if kr.Condition != "true" {
		t.Errorf("an operator-Kafka rule with a condition came back with %q", kr.Condition)
	} else if err := s.DeleteExportRule(ctx, "other", kr.ID); err != nil {
		t.Fatal(err)
	}

	// A destination a rule uses stays until the rule goes.
	wantErr(t, "delete a destination in use", s.DeleteDestination(ctx, "acme", d.ID), tenants.ErrConflict)
	wantErr(t, "delete through another tenant", s.DeleteDestination(ctx, "other", d.ID), tenants.ErrNotFound)
	if err := s.DeleteExportRule(ctx, "acme", r.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDestination(ctx, "acme", d.ID); err != nil {
		t.Errorf("delete an unused destination: %v", err)
	}
	wantErr(t, "delete it twice", s.DeleteDestination(ctx, "acme", d.ID), tenants.ErrNotFound)
	audit, _, err := s.Audit(ctx, "acme", tenants.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range audit {
		actions = append(actions, a.Action)
	}
	for _, want := range []string{"destination.create", "destination.update", "destination.rotate_secret", "destination.delete"} {
		if !slices.Contains(actions, want) {
			t.Errorf("audit lacks %s: %v", want, actions)
		}
	}
}
