package tenants_test

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/roosthub/roost/tenants"
)

func TestCheckSecret(t *testing.T) {
	secret := "q5mJx0bC2vR8yT1uW4eZ6aN3kL9pD7fG"
	sum := sha256.Sum256([]byte(secret))
	hash := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name, secret, hash string
		want               bool
	}{
		{"the secret", secret, hash, true},
		{"the secret, hash in upper case", secret, strings.ToUpper(hash), true},
		{"another secret", secret + "x", hash, false},
		{"no secret", "", hash, false},
		{"the hash given as the secret", hash, hash, false},
		{"a hash cut short", secret, hash[:63], false},
		{"a hash too long", secret, hash + "0", false},
		{"no hash", secret, "", false},
	} {
		if got := tenants.CheckSecret(tc.secret, tc.hash); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	// Every device connect checks a secret.
	if n := testing.AllocsPerRun(100, func() { tenants.CheckSecret(secret, hash) }); n != 0 {
		t.Errorf("CheckSecret allocates %v times, want 0", n)
	}
}
