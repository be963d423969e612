package broker_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/golang-jwt/jwt/v5"

	"github.com/roosthub/roost/tenants"
)

func registerKey(t *testing.T, s *stack, tenant, device string, pub any) tenants.DeviceKey {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.store.CreateDeviceKey(ctx, tenant, device, tenants.DeviceKeyInput{PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func token(t *testing.T, m jwt.SigningMethod, key any, aud string, exp time.Duration) string {
	t.Helper()
	c := jwt.RegisteredClaims{Audience: jwt.ClaimStrings{aud}, IssuedAt: jwt.NewNumericDate(time.Now()), ExpiresAt: jwt.NewNumericDate(time.Now().Add(exp))}
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDeviceTokens: a device connects with a JWT signed by a registered key
// instead of its secret, MQTT 5 and 3.1.1; the defects of the matrix are
// refused with the bad-credentials code; a token for one tenant does not
// open another's device with the same key; the connection ends with 0x87
// when the token expires, and at once when its key is deleted.
func TestDeviceTokens(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	s.device("acme", "d1")
	s.device("other", "d1")
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecKey := registerKey(t, s, "acme", "d1", &ec.PublicKey)
	registerKey(t, s, "acme", "d1", ed.Public())
	registerKey(t, s, "other", "d1", &ec.PublicKey) // the same key, another tenant's device
	s.device("acme", "d2")
	d2Key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	registerKey(t, s, "acme", "d2", &d2Key.PublicKey)
	futureIat, _ := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"acme"},
		IssuedAt: jwt.NewNumericDate(time.Now().Add(2 * time.Minute)), ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(ec)

	c := mustV5(t, s.addr, "acme/d1", token(t, jwt.SigningMethodES256, ec, "acme", time.Hour), "d1")
	c.Disconnect(&paho.Disconnect{})
	mustV5(t, s.addr, "acme/d1", token(t, jwt.SigningMethodEdDSA, ed, "acme", time.Hour), "d1").Disconnect(&paho.Disconnect{})
	if _, code, err := dialV3(t, s.addr, "acme/d1", token(t, jwt.SigningMethodES256, ec, "acme", time.Hour), "d1", true); err != nil || code != 0 {
		t.Errorf("3.1.1 with a token: %d %v", code, err)
	}

	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"acme"}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	for name, pw := range map[string]string{
		"alg none":                       none,
		"HS256 keyed with the PEM":       token(t, jwt.SigningMethodHS256, []byte(ecKey.PublicKey), "acme", time.Hour),
		"expired":                        token(t, jwt.SigningMethodES256, ec, "acme", -time.Minute),
		"25 hours ahead":                 token(t, jwt.SigningMethodES256, ec, "acme", 25*time.Hour),
		"for another tenant":             token(t, jwt.SigningMethodES256, ec, "other", time.Hour),
		"signed by an unknown key":       token(t, jwt.SigningMethodES256, stranger, "acme", time.Hour),
		"signed by another device's key": token(t, jwt.SigningMethodES256, d2Key, "acme", time.Hour),
		"issued 2 minutes ahead":         futureIat,
	} {
		if code := refusedV5(t, s.addr, "acme/d1", pw, "d1"); code != 0x86 {
			t.Errorf("%s: CONNACK %#x, want 0x86", name, code)
		}
	}
	if _, code, err := dialV3(t, s.addr, "acme/d1", token(t, jwt.SigningMethodES256, ec, "acme", -time.Minute), "d1", true); err == nil || code != 4 {
		t.Errorf("3.1.1 with an expired token: %d %v, want 4", code, err)
	}
	// acme's token does not open other's device, though it has the key.
	if code := refusedV5(t, s.addr, "other/d1", token(t, jwt.SigningMethodES256, ec, "acme", time.Hour), "d1"); code != 0x86 {
		t.Errorf("acme's token on other/d1: %#x", code)
	}
	mustV5(t, s.addr, "other/d1", token(t, jwt.SigningMethodES256, ec, "other", time.Hour), "d1").Disconnect(&paho.Disconnect{})

	// Expiry ends the connection with 0x87.
	short := mustV5(t, s.addr, "acme/d1", token(t, jwt.SigningMethodES256, ec, "acme", 2*time.Second), "d1")
	select {
	case d := <-short.discs:
		if d.ReasonCode != 0x87 {
			t.Errorf("at expiry: DISCONNECT %#x, want 0x87", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Error("the connection outlived its token")
	}

	// Deleting the key ends the connections it admitted, not the others.
	byKey := mustV5(t, s.addr, "acme/d1", token(t, jwt.SigningMethodES256, ec, "acme", time.Hour), "d1")
	if err := s.store.DeleteDeviceKey(ctx, "acme", "d1", ecKey.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-byKey.discs:
		if d.ReasonCode != 0x98 {
			t.Errorf("key deleted: DISCONNECT %#x, want 0x98", d.ReasonCode)
		}
	case <-time.After(3 * time.Second):
		t.Error("the connection outlived its key")
	}
	if code := refusedV5(t, s.addr, "acme/d1", token(t, jwt.SigningMethodES256, ec, "acme", time.Hour), "d1"); code != 0x86 {
		t.Errorf("token of a deleted key: %#x", code)
	}
	mustV5(t, s.addr, "acme/d1", token(t, jwt.SigningMethodEdDSA, ed, "acme", time.Hour), "d1")
}
