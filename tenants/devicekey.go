package tenants

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// A device may prove who it is with a JSON Web Token as its MQTT password,
// signed by a private key whose public half is registered for it. The
// algorithm is the key's: ES256 for an ECDSA P-256 key, EdDSA for Ed25519,
// RS256 for RSA of 2,048 bits or more.
const (
	AlgES256 = "ES256"
	AlgEdDSA = "EdDSA"
	AlgRS256 = "RS256"
)

// Device token rules: exp is required and at most MaxTokenLifetime ahead;
// iat, if present, may be at most TokenSkew in the future.
const (
	MaxTokenLifetime = 24 * time.Hour
	TokenSkew        = 60 * time.Second
)

// DeviceKey is a public key registered for a device.
type DeviceKey struct {
	ID        string `json:"id"`
	Device    string `json:"device"`
	Algorithm string `json:"algorithm"`
	PublicKey string `json:"public_key"` // PEM, PUBLIC KEY (PKIX)
	// Fingerprint is the hex SHA-256 of the key's DER encoding; a token
	// may name it (or ID) as its kid.
	Fingerprint string    `json:"fingerprint"`
	CreatedAt   time.Time `json:"created_at"`
}

// ParsePublicKey reads one PEM PUBLIC KEY block and returns the algorithm
// tokens signed by its private half must use, the key and its fingerprint.
func ParsePublicKey(text string) (alg string, key crypto.PublicKey, fingerprint string, err error) {
	block, rest := pem.Decode([]byte(strings.TrimSpace(text)))
	if block == nil || block.Type != "PUBLIC KEY" || len(strings.TrimSpace(string(rest))) > 0 {
		return "", nil, "", invalid("public_key", "must be one PEM block of type PUBLIC KEY")
	}
	key, err = x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return "", nil, "", invalid("public_key", "is not a public key: %v", err)
	}
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", nil, "", invalid("public_key", "ECDSA keys must be on P-256 (ES256)")
		}
		alg = AlgES256
	case ed25519.PublicKey:
		alg = AlgEdDSA
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", nil, "", invalid("public_key", "RSA keys must have at least 2,048 bits")
		}
		alg = AlgRS256
	default:
		return "", nil, "", invalid("public_key", "must be ECDSA P-256, Ed25519 or RSA")
	}
	sum := sha256.Sum256(block.Bytes)
	return alg, key, hex.EncodeToString(sum[:]), nil
}

// LooksLikeJWT reports whether an MQTT password is shaped like a JWT
// (three base64url parts), so that it is checked against the device's keys
// rather than its secret.
func LooksLikeJWT(password string) bool {
	return strings.Count(password, ".") == 2 && strings.HasPrefix(password, "eyJ")
}

// ErrBadToken is the error of a device token that does not verify.
var ErrBadToken = errors.New("device token not valid")

// VerifyDeviceToken checks a device's token against its registered keys:
// signed by one of them with that key's algorithm (so "none", or HS256
// "signed" with a public key, never passes), exp present, in the future and
// at most MaxTokenLifetime ahead, aud the tenant's slug, iat not more than
// TokenSkew ahead. A kid, if the token has one, must name the key (its ID
// or fingerprint). It returns the key that verified it and when it
// expires.
func VerifyDeviceToken(token, tenant string, keys []DeviceKey, now time.Time) (DeviceKey, time.Time, error) {
	var errs []error
	for _, k := range keys {
		alg, pub, fp, err := ParsePublicKey(k.PublicKey)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var claims jwt.RegisteredClaims
		_, err = jwt.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
			if kid, ok := t.Header["kid"].(string); ok && kid != k.ID && kid != fp {
				return nil, errors.New("kid names another key")
			}
			return pub, nil
		},
			jwt.WithValidMethods([]string{alg}),
			jwt.WithAudience(tenant),
			jwt.WithExpirationRequired(),
			jwt.WithTimeFunc(func() time.Time { return now }),
		)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		exp := claims.ExpiresAt.Time
		if exp.After(now.Add(MaxTokenLifetime)) {
			return DeviceKey{}, time.Time{}, fmt.Errorf("%w: expires more than %v ahead", ErrBadToken, MaxTokenLifetime)
		}
		if claims.IssuedAt != nil && claims.IssuedAt.After(now.Add(TokenSkew)) {
			return DeviceKey{}, time.Time{}, fmt.Errorf("%w: issued in the future", ErrBadToken)
		}
		return k, exp, nil
	}
	if len(keys) == 0 {
		return DeviceKey{}, time.Time{}, fmt.Errorf("%w: the device has no keys", ErrBadToken)
	}
	return DeviceKey{}, time.Time{}, fmt.Errorf("%w: %w", ErrBadToken, errors.Join(errs...))
}
