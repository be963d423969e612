package storetest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/roosthub/roost/tenants"
)

func newPublicKey(t *testing.T, ed bool) string {
	t.Helper()
	var pub any
	if ed {
		pub, _, _ = ed25519.GenerateKey(rand.Reader)
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub = &k.PublicKey
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func testDeviceKeys(t *testing.T, s *tenants.Store, reopen func() *tenants.Store) {
	owner := mustAccount(t, s, "keys@example.com")
	mustTenant(t, s, owner, "acme")
	mustTenant(t, s, owner, "other")
	mustDevice(t, s, "acme", "d1")
	mustDevice(t, s, "other", "d1")

	ecKey := newPublicKey(t, false)
	k, err := s.CreateDeviceKey(ctx, "acme", "d1", tenants.DeviceKeyInput{PublicKey: ecKey})
	if err != nil || k.Algorithm != tenants.AlgES256 || k.ID == "" || len(k.Fingerprint) != 64 || k.Device != "d1" {
		t.Fatalf("CreateDeviceKey: %+v %v", k, err)
	}
	ed, err := s.CreateDeviceKey(ctx, "acme", "d1", tenants.DeviceKeyInput{PublicKey: newPublicKey(t, true)})
	if err != nil || ed.Algorithm != tenants.AlgEdDSA {
		t.Fatalf("CreateDeviceKey Ed25519: %+v %v", ed, err)
	}
	if _, err := s.CreateDeviceKey(ctx, "acme", "d1", tenants.DeviceKeyInput{PublicKey: ecKey}); !errors.Is(err, tenants.ErrConflict) {
		t.Errorf("the same key twice: %v", err)
	}
	if _, err := s.CreateDeviceKey(ctx, "acme", "d1", tenants.DeviceKeyInput{PublicKey: "nonsense"}); !errors.Is(err, tenants.ErrInvalid) {
		t.Errorf("not a key: %v", err)
	}
	if _, err := s.CreateDeviceKey(ctx, "acme", "nobody", tenants.DeviceKeyInput{PublicKey: newPublicKey(t, false)}); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	// The same key may belong to a device of another tenant: it is theirs.
	if _, err := s.CreateDeviceKey(ctx, "other", "d1", tenants.DeviceKeyInput{PublicKey: ecKey}); err != nil {
		t.Errorf("the same key in another tenant: %v", err)
	}

	keys, err := s.DeviceKeys(ctx, "acme", "d1")
	if err != nil || len(keys) != 2 || keys[0].ID != k.ID || keys[1].ID != ed.ID || keys[0].PublicKey != ecKey {
		t.Fatalf("DeviceKeys: %+v %v", keys, err)
	}
	// Tenants apart: other's d1 sees only its own key and cannot delete acme's.
	if keys, _ := s.DeviceKeys(ctx, "other", "d1"); len(keys) != 1 || keys[0].ID == k.ID {
		t.Errorf("other's keys: %+v", keys)
	}
	if err := s.DeleteDeviceKey(ctx, "other", "d1", k.ID); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("deleting another tenant's key: %v", err)
	}

	for range tenants.MaxDeviceKeys - 2 {
		if _, err := s.CreateDeviceKey(ctx, "acme", "d1", tenants.DeviceKeyInput{PublicKey: newPublicKey(t, false)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateDeviceKey(ctx, "acme", "d1", tenants.DeviceKeyInput{PublicKey: newPublicKey(t, false)}); !errors.Is(err, tenants.ErrInvalid) {
		t.Errorf("key %d: %v", tenants.MaxDeviceKeys+1, err)
	}
	if err := s.DeleteDeviceKey(ctx, "acme", "d1", k.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDeviceKey(ctx, "acme", "d1", k.ID); !errors.Is(err, tenants.ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
	if reopen != nil {
		if keys, err := reopen().DeviceKeys(ctx, "acme", "d1"); err != nil || len(keys) != tenants.MaxDeviceKeys-1 {
			t.Errorf("after reopen: %d keys, %v", len(keys), err)
		}
	}
	// Deleting the device takes its keys with it; a new device of the same
	// name starts with none.
	if err := s.DeleteDevice(ctx, "acme", "d1"); err != nil {
		t.Fatal(err)
	}
	mustDevice(t, s, "acme", "d1")
	if keys, err := s.DeviceKeys(ctx, "acme", "d1"); err != nil || len(keys) != 0 {
		t.Errorf("a new device of the same name inherited %d keys (%v)", len(keys), err)
	}
}
