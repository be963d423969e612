package auth

import (
	"log/slog"
)

// OIDCIssuer is an OpenID Connect issuer the operator lets people sign in
// with.
type OIDCIssuer struct {
	// Name names the issuer in the console's URLs (/login/sso/{name}):
	// lower-case letters, digits and dashes.
	Name string `json:"name"`
	// Label is shown on the button: "Sign in with <Label>".
	Label string `json:"label"`
	// Issuer is the issuer URL its discovery document is found under.
	Issuer       string `json:"issuer"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
}

// ssoClients are the configured issuers.
type ssoClients struct {
	issuers []OIDCIssuer
	log     *slog.Logger
}

func newSSOClients(issuers []OIDCIssuer, log *slog.Logger) (*ssoClients, error) {
	return &ssoClients{issuers: issuers, log: log}, nil
}
