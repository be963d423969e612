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
	"slices"
	"strings"
)

// ErrKeyChanged: a sealed value was sealed under another key than the
// sealer's (the operator token changed); the destination's secret must be
// rotated.
var ErrKeyChanged = errors.New("sealed under another key: the operator token changed; rotate the destination's secret")

// Sealer encrypts destination secrets at rest (AES-256-GCM). The key comes
// from configuration, not from the database that holds what it seals, so
// a copy of the database alone does not reveal the secrets.
//
// A sealer may also hold old keys (a key ring): values sealed under them
// still open, and Stale tells them apart so that they are sealed again
// under the current key (see Refresh). That is how the operator token is
// rotated without every destination's secret being rotated too.
type Sealer struct {
	aead cipher.AEAD
	kid  string
	old  map[string]cipher.AEAD // key id → an old key's cipher
}

// KeyFromToken derives the sealing key from the operator token, which
// every process of a fleet is given (ROOST_ADMIN_TOKEN), as the forwarding
// key is.
func KeyFromToken(token string) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("roost: destination secrets at rest"))
	return m.Sum(nil)
}

// KeysFromTokens derives the keys of earlier operator tokens, given
// comma-separated (ROOST_SECRET_KEYS_OLD); blanks are ignored.
func KeysFromTokens(tokens string) [][]byte {
	var out [][]byte
	for _, t := range strings.Split(tokens, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, KeyFromToken(t))
		}
	}
	return out
}

// NewSealer returns a sealer with a 32-byte key, sealing under it and
// opening what it or one of the old keys sealed.
func NewSealer(key []byte, old ...[]byte) (*Sealer, error) {
	aead, kid, err := newCipher(key)
	if err != nil {
		return nil, err
	}
	s := &Sealer{aead: aead, kid: kid, old: map[string]cipher.AEAD{}}
	for _, k := range old {
		a, id, err := newCipher(k)
		if err != nil {
			return nil, fmt.Errorf("sealer: old key: %w", err)
		}
		if id != kid {
			s.old[id] = a
		}
	}
	return s, nil
}

func newCipher(key []byte) (cipher.AEAD, string, error) {
	if len(key) != 32 {
		return nil, "", fmt.Errorf("sealer: key of %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, "", err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, "", err
	}
	// The key id names the key without revealing it, so a value sealed
	// under an older key is told apart from a damaged one.
	m := hmac.New(sha256.New, key)
	m.Write([]byte("key id"))
	return aead, hex.EncodeToString(m.Sum(nil)[:4]), nil
}

// Stale reports whether sealed was sealed under one of the old keys: it
// opens, but should be sealed again under the current key.
func (s *Sealer) Stale(sealed string) bool {
	parts := strings.SplitN(sealed, ".", 3)
	if len(parts) != 3 || parts[0] != "v1" {
		return false
	}
	_, old := s.old[parts[1]]
	return old
}

// OldPrefixes are the prefixes of values sealed under the ring's old keys
// ("v1.<key id>."), in key id order: what a store looks for to find the
// values to seal again (see Reseal).
func (s *Sealer) OldPrefixes() []string {
	out := make([]string, 0, len(s.old))
	for kid := range s.old {
		out = append(out, "v1."+kid+".")
	}
	slices.Sort(out)
	return out
}

// Reseal returns sealed sealed again under the current key if it was
// sealed under an old one (see Stale), and sealed itself otherwise. It
// fails, leaving the value to its owner, if the value does not open.
func (s *Sealer) Reseal(sealed, context string) (string, error) {
	if !s.Stale(sealed) {
		return sealed, nil
	}
	plain, err := s.Open(sealed, context)
	if err != nil {
		return "", err
	}
	return s.Seal(plain, context), nil
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
	aead := s.aead
	if parts[1] != s.kid {
		if aead = s.old[parts[1]]; aead == nil {
			return nil, ErrKeyChanged
		}
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(raw) < aead.NonceSize() {
		return nil, errors.New("sealed value: damaged")
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, raw[:n], raw[n:], []byte(context))
	if err != nil {
		return nil, errors.New("sealed value: does not open (damaged, or moved from another row)")
	}
	return plain, nil
}
