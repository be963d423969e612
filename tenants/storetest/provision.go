package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/roosthub/roost/tenants"
)

// testProvisionDevice: a CA is marked for provisioning with a template (at
// creation or later) and unmarked; a device is provisioned only under the
// tenant's own marked CA, from its template, once, within max_devices.
func testProvisionDevice(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "provisioner@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	notAfter := time.Now().Add(24 * time.Hour)
	marked, err := s.CreateCA(ctx, "acme", tenants.CAInput{Certificate: newCertificate(t, "Fleet CA", true, notAfter),
		Provisioning: &tenants.ProvisioningTemplate{Groups: []string{"fleet", "fleet"}, Metadata: map[string]string{"model": "m1"}}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := s.CreateCA(ctx, "acme", tenants.CAInput{Certificate: newCertificate(t, "Plain CA", true, notAfter)})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := s.CreateCA(ctx, "other", tenants.CAInput{Certificate: newCertificate(t, "Other CA", true, notAfter), Provisioning: &tenants.ProvisioningTemplate{}})
	if err != nil {
		t.Fatal(err)
	}
	if plain.Provisioning != nil || marked.Provisioning == nil || !slices.Equal(marked.Provisioning.Groups, []string{"fleet"}) {
		t.Errorf("created CAs: plain %+v, marked %+v", plain.Provisioning, marked.Provisioning)
	}
	_, err = s.CreateCA(ctx, "acme", tenants.CAInput{Certificate: newCertificate(t, "Bad CA", true, notAfter), Provisioning: &tenants.ProvisioningTemplate{Groups: []string{"Bad"}}})
	wantField(t, "a template with a malformed group", err, "provisioning.groups")

	d, created, err := s.ProvisionDevice(ctx, "acme", "p1", marked.Fingerprint)
	if err != nil || !created || !slices.Equal(d.Groups, []string{"fleet"}) || d.Metadata["model"] != "m1" || d.ClientIDs != tenants.ClientIDsExact {
		t.Fatalf("provision p1: %+v created %v (%v)", d, created, err)
	}
	if _, created, err := s.ProvisionDevice(ctx, "acme", "p1", marked.Fingerprint); err != nil || created {
		t.Errorf("provision p1 again: created %v (%v), want the existing device", created, err)
	}
	for what, fp := range map[string]string{"an unmarked CA": plain.Fingerprint, "another tenant's CA": foreign.Fingerprint, "no CA": "00"} {
		_, _, err := s.ProvisionDevice(ctx, "acme", "p2", fp)
		if !errors.Is(err, tenants.ErrNotProvisioning) {
			t.Errorf("provision under %s: got %v, want ErrNotProvisioning", what, err)
		}
	}
	if _, _, err := s.ProvisionDevice(ctx, "other", "p2", marked.Fingerprint); !errors.Is(err, tenants.ErrNotProvisioning) {
		t.Errorf("provision into other under acme's CA: got %v, want ErrNotProvisioning", err)
	}
	limit := int64(1)
	if _, err := s.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": &limit}}); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.ProvisionDevice(ctx, "acme", "p3", marked.Fingerprint)
	var qe *tenants.QuotaError
	if !errors.As(err, &qe) || qe.Quota != "max_devices" {
		t.Errorf("provision over max_devices: got %v, want a QuotaError", err)
	}

	ca, err := s.UpdateCA(ctx, "acme", marked.ID, tenants.CAUpdate{})
	if err != nil || ca.Provisioning != nil {
		t.Fatalf("unmark: %+v (%v)", ca, err)
	}
	if _, _, err := s.ProvisionDevice(ctx, "acme", "p4", marked.Fingerprint); !errors.Is(err, tenants.ErrNotProvisioning) {
		t.Errorf("provision after unmarking: got %v, want ErrNotProvisioning", err)
	}
	if _, err := s.UpdateCA(ctx, "other", marked.ID, tenants.CAUpdate{Provisioning: &tenants.ProvisioningTemplate{}}); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("other marks acme's CA: got %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateCA(ctx, "acme", plain.ID, tenants.CAUpdate{Provisioning: &tenants.ProvisioningTemplate{ClientIDs: tenants.ClientIDsAny}}); err != nil {
		t.Fatal(err)
	}
	if reopen != nil {
		s = reopen()
	}
	cas, err := s.CAs(ctx, "acme")
	if err != nil || len(cas) != 2 {
		t.Fatalf("CAs after reopen: %v (%v)", cas, err)
	}
	for _, c := range cas {
		switch c.ID {
		case marked.ID:
			if c.Provisioning != nil {
				t.Error("the unmarked CA provisions after reopen")
			}
		case plain.ID:
			if c.Provisioning == nil || c.Provisioning.ClientIDs != tenants.ClientIDsAny {
				t.Errorf("the marked CA after reopen: %+v", c.Provisioning)
			}
		}
	}
}
