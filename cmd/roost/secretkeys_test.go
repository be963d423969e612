package main

import (
	"strings"
	"testing"

	"github.com/roosthub/roost/dataout"
)

// TestSecretKeysOld: ROOST_SECRET_KEYS_OLD puts earlier operator tokens
// in the sealer's key ring; a token too short to be one stops start-up.
func TestSecretKeysOld(t *testing.T) {
	c, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(),
		"ROOST_SECRET_KEYS_OLD": "rop_first-earlier-token, rop_second-earlier-token"}))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := c.sealer("rop_current-operator-token")
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"rop_first-earlier-token", "rop_second-earlier-token"} {
		old, _ := dataout.NewSealer(dataout.KeyFromToken(tok))
		sealed := old.Seal([]byte("secret"), "ctx")
		if p, err := ring.Open(sealed, "ctx"); err != nil || string(p) != "secret" || !ring.Stale(sealed) {
			t.Errorf("a value sealed under %s: %q, %v, stale %v", tok, p, err, ring.Stale(sealed))
		}
	}
	stranger, _ := dataout.NewSealer(dataout.KeyFromToken("rop_never-configured-token"))
	if _, err := ring.Open(stranger.Seal([]byte("x"), "ctx"), "ctx"); err == nil {
		t.Error("a value sealed under a token not in the ring opened")
	}
	_, err = parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_SECRET_KEYS_OLD": "short"}))
	if err == nil || !strings.Contains(err.Error(), "ROOST_SECRET_KEYS_OLD") {
		t.Errorf("a short earlier token: %v, want an error naming ROOST_SECRET_KEYS_OLD", err)
	}
}
