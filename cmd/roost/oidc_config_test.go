package main

import (
	"strings"
	"testing"
)

// TestOIDCIssuersSetting: ROOST_OIDC_ISSUERS reaches the auth front, and a
// bad one stops start-up naming the variable.
func TestOIDCIssuersSetting(t *testing.T) {
	good := `[{"name":"acme","label":"Acme","issuer":"https://login.acme.com","client_id":"roost","client_secret":"s"}]`
	c, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_OIDC_ISSUERS": good}))
	if err != nil {
		t.Fatal(err)
	}
	if is := c.authConfig().OIDC; len(is) != 1 || is[0].Name != "acme" || is[0].ClientSecret != "s" {
		t.Errorf("auth config issuers = %+v", is)
	}
	for _, bad := range []string{`[{"name":"acme","issuer":"http://login.acme.com","client_id":"r"}]`, `not json`, `[{"name":"ACME","issuer":"https://x.com","client_id":"r"}]`} {
		_, err := parseConfig("serve", nil, env(map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_OIDC_ISSUERS": bad}))
		if err == nil || !strings.Contains(err.Error(), "ROOST_OIDC_ISSUERS") {
			t.Errorf("ROOST_OIDC_ISSUERS=%s: got %v, want an error naming it", bad, err)
		}
	}
}
