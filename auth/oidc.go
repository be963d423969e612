package auth

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/roosthub/roost/tenants"
)

// Single sign-on with OpenID Connect: the operator names issuers
// (OIDCIssuer); the console sends a person to one with the authorization
// code flow, PKCE (S256), a random state and a random nonce, all kept in a
// sealed cookie of the browser that started; the callback checks the
// state, exchanges the code with the verifier, verifies the ID token
// (signature by the issuer's keys, issuer, audience, expiry) and its
// nonce, and requires email_verified. The account is the one linked to the
// person's subject there, else the one with that email (then linked), else
// a new one. Two-factor sign-in, if on, is asked for after.

// OIDCIssuer is an OpenID Connect issuer the operator lets people sign in
// with.
type OIDCIssuer struct {
	// Name names the issuer in the console's URLs (/login/sso/{name}):
	// lower-case letters, digits and dashes.
	Name string `json:"name"`
	// Label is shown on the button: "Sign in with <Label>"; Name if empty.
	Label string `json:"label,omitempty"`
	// Issuer is the issuer URL its discovery document is found under.
	Issuer       string `json:"issuer"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
}

var issuerName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// ParseOIDCIssuers reads issuers from JSON (a list of OIDCIssuer), as
// ROOST_OIDC_ISSUERS holds them, and checks them.
func ParseOIDCIssuers(s string) ([]OIDCIssuer, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	var out []OIDCIssuer
	if err := dec.Decode(&out); err != nil {
		return nil, fmt.Errorf("a JSON list of {name, label, issuer, client_id, client_secret}: %w", err)
	}
	seen := map[string]bool{}
	for i, is := range out {
		u, err := url.Parse(is.Issuer)
		switch {
		case !issuerName.MatchString(is.Name):
			return nil, fmt.Errorf("issuer %d: name %q must be lower-case letters, digits and dashes", i, is.Name)
		case seen[is.Name]:
			return nil, fmt.Errorf("issuer %d: name %q is used twice", i, is.Name)
		case err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname()))):
			return nil, fmt.Errorf("issuer %s: %q must be an https:// URL", is.Name, is.Issuer)
		case is.ClientID == "":
			return nil, fmt.Errorf("issuer %s: client_id is required", is.Name)
		}
		seen[is.Name] = true
		if out[i].Label == "" {
			out[i].Label = is.Name
		}
	}
	return out, nil
}

func isLoopback(host string) bool { return host == "localhost" || host == "127.0.0.1" || host == "::1" }

// ssoStateTTL bounds a sign-in at an issuer, from leaving to coming back.
const ssoStateTTL = 10 * time.Minute

// ssoClients are the configured issuers, each discovered on first use (an
// issuer down when the hub starts does not stop it).
type ssoClients struct {
	log     *slog.Logger
	issuers []OIDCIssuer
	mu      sync.Mutex
	found   map[string]*oidc.Provider
}

func newSSOClients(issuers []OIDCIssuer, log *slog.Logger) (*ssoClients, error) {
	return &ssoClients{log: log, issuers: issuers, found: map[string]*oidc.Provider{}}, nil
}

func (c *ssoClients) issuer(name string) (OIDCIssuer, bool) {
	for _, is := range c.issuers {
		if is.Name == name {
			return is, true
		}
	}
	return OIDCIssuer{}, false
}

func (c *ssoClients) provider(ctx context.Context, is OIDCIssuer) (*oidc.Provider, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.found[is.Name]; p != nil {
		return p, nil
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(dctx, is.Issuer)
	if err != nil {
		c.log.Error("sso: discovery", "issuer", is.Issuer, "err", err)
		return nil, fmt.Errorf("the sign-in service %s does not answer; try again later: %w", is.Label, tenants.ErrUnavailable)
	}
	c.found[is.Name] = p
	return p, nil
}

// SSOIssuers are the issuers people may sign in with (names and labels).
func (s *Service) SSOIssuers() []OIDCIssuer {
	out := make([]OIDCIssuer, len(s.sso.issuers))
	for i, is := range s.sso.issuers {
		out[i] = OIDCIssuer{Name: is.Name, Label: is.Label}
	}
	return out
}

// ssoState is what the browser carries, sealed, between leaving for the
// issuer and coming back.
type ssoState struct {
	Issuer   string    `json:"i"`
	State    string    `json:"s"`
	Nonce    string    `json:"n"`
	Verifier string    `json:"v"`
	Next     string    `json:"x"`
	At       time.Time `json:"t"`
}

// ErrSSOUnknown is an issuer name that is not configured.
var ErrSSOUnknown = fmt.Errorf("no such sign-in service: %w", tenants.ErrNotFound)

// errSSOFailed refuses a callback that does not check out.
var errSSOFailed = fmt.Errorf("the single sign-on did not complete; try again: %w", tenants.ErrUnauthorized)

// SSOStart begins a sign-in at the issuer called name, coming back to
// redirectURL: it returns the issuer's URL to send the browser to and the
// sealed state the browser must carry back (a cookie).
func (s *Service) SSOStart(ctx context.Context, name, redirectURL, next string) (authURL, sealed string, err error) {
	is, ok := s.sso.issuer(name)
	if !ok {
		return "", "", ErrSSOUnknown
	}
	p, err := s.sso.provider(ctx, is)
	if err != nil {
		return "", "", err
	}
	st := ssoState{Issuer: name, State: tenants.NewToken(), Nonce: tenants.NewToken(), Verifier: oauth2.GenerateVerifier(), Next: next, At: s.now()}
	b, _ := json.Marshal(st)
	cfg := oauthConfig(is, p, redirectURL)
	return cfg.AuthCodeURL(st.State, oidc.Nonce(st.Nonce), oauth2.S256ChallengeOption(st.Verifier)),
		s.sealer.Seal(b, "sso-state"), nil
}

func oauthConfig(is OIDCIssuer, p *oidc.Provider, redirectURL string) *oauth2.Config {
	return &oauth2.Config{ClientID: is.ClientID, ClientSecret: is.ClientSecret, Endpoint: p.Endpoint(), RedirectURL: redirectURL,
		Scopes: []string{oidc.ScopeOpenID, "email"}}
}

// SSOFinish completes a sign-in at the issuer called name: sealed is the
// state the browser carried, state and code the issuer's answer. It
// returns the session (or the two-factor challenge) and where to go next.
func (s *Service) SSOFinish(ctx context.Context, name, redirectURL, sealed, state, code string) (Issued, string, error) {
	is, ok := s.sso.issuer(name)
	if !ok {
		return Issued{}, "", ErrSSOUnknown
	}
	raw, err := s.sealer.Open(sealed, "sso-state")
	if err != nil {
		return Issued{}, "", errSSOFailed
	}
	var st ssoState
	if err := json.Unmarshal(raw, &st); err != nil || st.Issuer != name || s.now().Sub(st.At) > ssoStateTTL || st.At.After(s.now().Add(time.Minute)) {
		return Issued{}, "", errSSOFailed
	}
	if subtle.ConstantTimeCompare([]byte(state), []byte(st.State)) != 1 || code == "" {
		return Issued{}, "", errSSOFailed
	}
	p, err := s.sso.provider(ctx, is)
	if err != nil {
		return Issued{}, "", err
	}
	xctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	tok, err := oauthConfig(is, p, redirectURL).Exchange(xctx, code, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		s.log.Info("sso: code exchange refused", "issuer", is.Issuer, "err", err)
		return Issued{}, "", errSSOFailed
	}
	rawID, _ := tok.Extra("id_token").(string)
	idt, err := p.Verifier(&oidc.Config{ClientID: is.ClientID, Now: s.now}).Verify(xctx, rawID)
	if err != nil {
		s.log.Info("sso: ID token refused", "issuer", is.Issuer, "err", err)
		return Issued{}, "", errSSOFailed
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(st.Nonce)) != 1 {
		s.log.Info("sso: ID token's nonce is not this sign-in's", "issuer", is.Issuer)
		return Issued{}, "", errSSOFailed
	}
	var claims struct {
		Email         string `json:"email"`
		EmailVerified any    `json:"email_verified"`
	}
	if err := idt.Claims(&claims); err != nil {
		return Issued{}, "", errSSOFailed
	}
	// Some issuers send "true" as a string.
	if v := claims.EmailVerified; claims.Email == "" || (v != true && v != "true") {
		return Issued{}, "", fmt.Errorf("%s did not vouch for your email address (email_verified); ask its administrator, or sign in with a password: %w",
			is.Label, tenants.ErrForbidden)
	}
	a, created, err := s.store.SSOAccount(ctx, idt.Issuer, idt.Subject, claims.Email)
	if err != nil {
		return Issued{}, "", err
	}
	is2, err := s.startAccount(ctx, a, created)
	return is2, st.Next, err
}

// SSORedirectURL is the console's callback URL for the issuer called name:
// under the hub's public URL (ROOST_PUBLIC_URL) if it is set, else under
// base, the URL the request came to. Register it at the issuer.
func (s *Service) SSORedirectURL(name, base string) string {
	if s.publicURL != "" {
		base = s.publicURL
	}
	return strings.TrimSuffix(base, "/") + "/login/sso/" + url.PathEscape(name) + "/callback"
}
