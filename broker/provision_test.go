package broker_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// provisionConnack connects over TLS with cert as <tenant>/<device>
// (client id the device's name) and returns the MQTT 5 CONNACK's reason
// code.
func provisionConnack(t *testing.T, tlsAddr string, roots *x509.CertPool, cert tls.Certificate, tenant, device string) byte {
	t.Helper()
	conn, err := tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatalf("TLS: %v", err)
	}
	defer conn.Close()
	code, err := connackV5(conn, tenant+"/"+device, "", device)
	if err != nil {
		t.Fatalf("%s/%s: %v", tenant, device, err)
	}
	return code
}

// TestProvisioningFromCA: a device unknown to the tenant, presenting over
// a real TLS MQTT connection a certificate generated here under a CA the
// tenant marked for provisioning, is registered on its first connection
// from the CA's template, with an event; a CA not marked, another
// tenant's CA, a certificate naming another device, max_devices and an
// unmarked CA refuse.
func TestProvisioningFromCA(t *testing.T) {
	ev := events.NewMemory(1000)
	s := newStack(t, func(c *broker.Config) { c.Events = ev })
	s.tenant("acme")
	s.tenant("other")
	tlsAddr, roots := serveTLS(t, s.hub)
	fleet, plain, foreign := newIssuer(t, "Acme fleet CA"), newIssuer(t, "Acme plain CA"), newIssuer(t, "Other fleet CA")
	tpl := &tenants.ProvisioningTemplate{Groups: []string{"fleet"}, Metadata: map[string]string{"model": "m1"}}
	fleetCA, err := s.store.CreateCA(ctx, "acme", tenants.CAInput{Certificate: fleet.pem(), Provisioning: tpl})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateCA(ctx, "acme", tenants.CAInput{Certificate: plain.pem()}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.CreateCA(ctx, "other", tenants.CAInput{Certificate: foreign.pem(), Provisioning: &tenants.ProvisioningTemplate{}}); err != nil {
		t.Fatal(err)
	}
	leaf := func(ca issuer, cn string) tls.Certificate {
		return ca.leaf(t, cn, "", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	}
	exists := func(tenant, name string) bool {
		t.Helper()
		_, err := s.store.Device(ctx, tenant, name)
		if err != nil && !errors.Is(err, tenants.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}

	// Marked: registered on the first connection, from the template.
	if got := provisionConnack(t, tlsAddr, roots, leaf(fleet, "new-1"), "acme", "new-1"); got != 0 {
		t.Fatalf("a new device under the marked CA: got 0x%02x, want 0", got)
	}
	d, err := s.store.Device(ctx, "acme", "new-1")
	if err != nil {
		t.Fatalf("the provisioned device: %v", err)
	}
	if !slices.Equal(d.Groups, []string{"fleet"}) || d.Metadata["model"] != "m1" || d.ClientIDs != tenants.ClientIDsExact || !d.Enabled {
		t.Errorf("the provisioned device: %+v, want the template's groups, metadata and exact client ids", d)
	}
	eventually(t, 20*time.Second, "a device_provisioned event", func() bool {
		for _, e := range ev.Recent("acme") {
			if e.Type == events.DeviceProvisioned && e.Device == "new-1" && e.Reason == fleetCA.Fingerprint {
				return true
			}
		}
		return false
	})
	// Its next connection finds it registered.
	if got := provisionConnack(t, tlsAddr, roots, leaf(fleet, "new-1"), "acme", "new-1"); got != 0 {
		t.Errorf("the provisioned device again: got 0x%02x, want 0", got)
	}

	refusals := []struct {
		what         string
		cert         tls.Certificate
		tenant, name string
		want         byte
	}{
		{"a CA not marked", leaf(plain, "new-2"), "acme", "new-2", 0x86},
		{"another tenant's marked CA", leaf(foreign, "new-3"), "acme", "new-3", 0x86},
		{"a certificate naming another device", leaf(fleet, "new-4"), "acme", "new-5", 0x86},
		{"acme's CA for a device of other", leaf(fleet, "new-6"), "other", "new-6", 0x86},
	}
	for _, tc := range refusals {
		if got := provisionConnack(t, tlsAddr, roots, tc.cert, tc.tenant, tc.name); got != tc.want {
			t.Errorf("%s: got 0x%02x, want 0x%02x", tc.what, got, tc.want)
		}
		if exists(tc.tenant, tc.name) {
			t.Errorf("%s: %s/%s was registered", tc.what, tc.tenant, tc.name)
		}
	}
	for _, n := range []string{"new-2", "new-3", "new-4", "new-5", "new-6"} {
		if exists("acme", n) || exists("other", n) {
			t.Errorf("%s was registered", n)
		}
	}

	// max_devices: acme has one device; a limit of 1 refuses the next.
	limit := int64(1)
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": &limit}}); err != nil {
		t.Fatal(err)
	}
	if got := provisionConnack(t, tlsAddr, roots, leaf(fleet, "new-7"), "acme", "new-7"); got != 0x97 {
		t.Errorf("over max_devices: got 0x%02x, want 0x97", got)
	}
	if exists("acme", "new-7") {
		t.Error("over max_devices: new-7 was registered")
	}
	limit = 100
	if _, err := s.store.AdminUpdateTenant(ctx, "acme", tenants.AdminTenantUpdate{Quotas: map[string]*int64{"max_devices": &limit}}); err != nil {
		t.Fatal(err)
	}

	// Unmarked: refusing is back.
	if _, err := s.store.UpdateCA(ctx, "acme", fleetCA.ID, tenants.CAUpdate{}); err != nil {
		t.Fatal(err)
	}
	if got := provisionConnack(t, tlsAddr, roots, leaf(fleet, "new-8"), "acme", "new-8"); got != 0x86 {
		t.Errorf("after the CA was unmarked: got 0x%02x, want 0x86", got)
	}
	if exists("acme", "new-8") {
		t.Error("after the CA was unmarked: new-8 was registered")
	}
	// The device provisioned before still connects: its CA is trusted.
	if got := provisionConnack(t, tlsAddr, roots, leaf(fleet, "new-1"), "acme", "new-1"); got != 0 {
		t.Errorf("the provisioned device after unmarking: got 0x%02x, want 0", got)
	}
}
