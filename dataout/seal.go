package dataout

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrKeyChanged: a sealed value was sealed under another key than the
// sealer's (the operator token changed); the destination's secret must be
// rotated.
var ErrKeyChanged = errors.New("sealed under another key: the operator token changed; rotate the destination's secret")

// Sealer encrypts destination secrets at rest (AES-256-GCM). The key comes
// from configuration, not from the database that holds what it seals, so
// a copy of the database alone does not reveal the secrets.
type Sealer struct {
	aead cipher.AEAD
	kid  string
}

// KeyFromToken derives the sealing key from the operator token, which
// every process of a fleet is given (ROOST_ADMIN_TOKEN), as the forwarding
// key is.
func KeyFromToken(token string) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("roost: destination secrets at rest"))
	return m.Sum(nil)
}

// NewSealer returns a sealer with a 32-byte key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("sealer: key of %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	// The key id names the key without revealing it, so a value sealed
	// under an older key is told apart from a damaged one.
	m := hmac.New(sha256.New, key)
	m.Write([]byte("key id"))
	return &Sealer{aead: aead, kid: hex.EncodeToString(m.Sum(nil)[:4])}, nil
}

// Seal encrypts plain, bound to context (such as "tenant/destination"):
// a sealed value copied to another row does not open there.
func (s *Sealer) Seal(plain []byte, context string) string {
	nonce := make([]byte, s.aead.NonceSize())
	rand.Read(nonce)
	out := s.aead.Seal(nonce, nonce, plain, []byte(context))
	return "v1." + s.kid + "." + base64.RawURLEncoding.EncodeToString(out)
}

// Open decrypts a value Seal made with the same context.
func (s *Sealer) Open(sealed, context string) ([]byte, error) {
	parts := strings.SplitN(sealed, ".", 3)
	if len(parts) != 3 || parts[0] != "v1" {
		return nil, errors.New("sealed value: unknown format")
	}
	if parts[1] != s.kid {
		return nil, ErrKeyChanged
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(raw) < s.aead.NonceSize() {
		return nil, errors.New("sealed value: damaged")
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], []byte(context))
	if err != nil {
		return nil, errors.New("sealed value: does not open (damaged, or moved from another row)")
	}
	return plain, nil
}
