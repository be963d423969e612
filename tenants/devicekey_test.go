package tenants_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/roosthub/roost/tenants"
)

func publicPEM(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func TestParsePublicKeyPinsTheAlgorithm(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ed, _, _ := ed25519.GenerateKey(rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 2048)
	for want, pub := range map[string]crypto.PublicKey{tenants.AlgES256: &ec.PublicKey, tenants.AlgEdDSA: ed, tenants.AlgRS256: &rs.PublicKey} {
		alg, _, fp, err := tenants.ParsePublicKey(publicPEM(t, pub))
		if err != nil || alg != want || len(fp) != 64 {
			t.Errorf("%s: %q %q %v", want, alg, fp, err)
		}
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	for name, text := range map[string]string{
		"P-384":      publicPEM(t, &p384.PublicKey),
		"RSA 1024":   publicPEM(t, &small.PublicKey),
		"not PEM":    "hello",
		"two blocks": publicPEM(t, ed) + publicPEM(t, ed),
		"private key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: func() []byte {
			b, _ := x509.MarshalPKCS8PrivateKey(ec)
			return b
		}()})),
	} {
		if _, _, _, err := tenants.ParsePublicKey(text); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestVerifyDeviceTokenMatrix: what a device token must be, one defect at
// a time.
func TestVerifyDeviceTokenMatrix(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecPEM := publicPEM(t, &ec.PublicKey)
	_, _, ecFP, _ := tenants.ParsePublicKey(ecPEM)
	keys := []tenants.DeviceKey{
		{ID: "k-ec", PublicKey: ecPEM},
		{ID: "k-ed", PublicKey: publicPEM(t, edPriv.Public())},
		{ID: "k-rs", PublicKey: publicPEM(t, &rs.PublicKey)},
	}
	claims := func(edit func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"acme"}, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}
		if edit != nil {
			edit(&c)
		}
		return c
	}
	sign := func(m jwt.SigningMethod, key any, c jwt.RegisteredClaims, kid string) string {
		tok := jwt.NewWithClaims(m, c)
		if kid != "" {
			tok.Header["kid"] = kid
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	for _, tc := range []struct {
		name  string
		token string
		ok    bool
	}{
		{"ES256", sign(jwt.SigningMethodES256, ec, claims(nil), ""), true},
		{"EdDSA", sign(jwt.SigningMethodEdDSA, edPriv, claims(nil), ""), true},
		{"RS256", sign(jwt.SigningMethodRS256, rs, claims(nil), ""), true},
		{"kid is the key's id", sign(jwt.SigningMethodES256, ec, claims(nil), "k-ec"), true},
		{"kid is the fingerprint", sign(jwt.SigningMethodES256, ec, claims(nil), ecFP), true},
		{"iat 30 s ahead (skew)", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.IssuedAt = jwt.NewNumericDate(now.Add(30 * time.Second)) }), ""), true},
		{"exp just under 24 h", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(24 * time.Hour)) }), ""), true},

		{"alg none", none, false},
		{"HS256 keyed with the public key", sign(jwt.SigningMethodHS256, []byte(ecPEM), claims(nil), ""), false},
		{"PS256 by the registered RSA key (not its algorithm)", sign(jwt.SigningMethodPS256, rs, claims(nil), ""), false},
		{"another device's key", sign(jwt.SigningMethodES256, other, claims(nil), ""), false},
		{"kid names another key", sign(jwt.SigningMethodES256, ec, claims(nil), "k-rs"), false},
		{"expired", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Second)) }), ""), false},
		{"no exp", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil }), ""), false},
		{"exp 25 h ahead", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(25 * time.Hour)) }), ""), false},
		{"wrong aud", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.Audience = jwt.ClaimStrings{"other"} }), ""), false},
		{"no aud", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.Audience = nil }), ""), false},
		{"iat 2 min ahead", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.IssuedAt = jwt.NewNumericDate(now.Add(2 * time.Minute)) }), ""), false},
		{"not yet valid (nbf)", sign(jwt.SigningMethodES256, ec, claims(func(c *jwt.RegisteredClaims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Hour)) }), ""), false},
		{"garbage", "eyJ.not.atoken", false},
	} {
		k, exp, err := tenants.VerifyDeviceToken(tc.token, "acme", keys, now)
		switch {
		case tc.ok && (err != nil || exp.IsZero() || k.ID == ""):
			t.Errorf("%s: refused: %v", tc.name, err)
		case !tc.ok && err == nil:
			t.Errorf("%s: accepted", tc.name)
		case !tc.ok && !errors.Is(err, tenants.ErrBadToken):
			t.Errorf("%s: %v is not ErrBadToken", tc.name, err)
		}
	}
	if k, _, err := tenants.VerifyDeviceToken(sign(jwt.SigningMethodEdDSA, edPriv, claims(nil), ""), "acme", keys, now); err != nil || k.ID != "k-ed" {
		t.Errorf("the key that verified: %+v %v", k, err)
	}
	if _, _, err := tenants.VerifyDeviceToken(sign(jwt.SigningMethodES256, ec, claims(nil), ""), "acme", nil, now); err == nil {
		t.Error("a device without keys accepted a token")
	}
	if !tenants.LooksLikeJWT(sign(jwt.SigningMethodES256, ec, claims(nil), "")) || tenants.LooksLikeJWT("Zm9vYmFy-secret") {
		t.Error("LooksLikeJWT")
	}
}
