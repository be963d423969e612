package auth_test

import (
	"strings"
	"testing"

	"github.com/roosthub/roost/auth"
)

func TestParseOIDCIssuers(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
	}{
		{"empty", "", ""},
		{"one", `[{"name":"acme","label":"Acme SSO","issuer":"https://login.acme.com","client_id":"roost","client_secret":"s"}]`, ""},
		{"loopback http", `[{"name":"dev","issuer":"http://127.0.0.1:5556","client_id":"roost"}]`, ""},
		{"plain http", `[{"name":"dev","issuer":"http://login.acme.com","client_id":"roost"}]`, "https"},
		{"bad name", `[{"name":"Acme SSO","issuer":"https://login.acme.com","client_id":"roost"}]`, "name"},
		{"twice", `[{"name":"a","issuer":"https://x.com","client_id":"r"},{"name":"a","issuer":"https://y.com","client_id":"r"}]`, "twice"},
		{"no client", `[{"name":"a","issuer":"https://x.com"}]`, "client_id"},
		{"unknown field", `[{"name":"a","issuer":"https://x.com","client_id":"r","scopes":"x"}]`, "unknown field"},
		{"not a list", `{"name":"a"}`, "JSON list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is, err := auth.ParseOIDCIssuers(tc.in)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("got %v, want no error", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("got %v, want an error about %q", err, tc.err)
			case tc.name == "loopback http" && is[0].Label != "dev":
				t.Errorf("label defaults to the name: got %q", is[0].Label)
			}
		})
	}
}
