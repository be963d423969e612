// Package auth is the one front door of the REST API and the console:
// sign-up and sign-in with their throttles, sessions the server can end,
// the operator token's check, and the membership and tenant-creation
// limits. Both call one Service, so a rule is written once and an attempt
// made through one is counted against the other.
//
// Throttles never refuse a credential for what others did elsewhere:
// password guesses are counted per (account, address) pair, per address and
// per account, and an address an account signed in from lately is held only
// to its own pair's budget. Every attempt is counted before the password
// hash it guards, so parallel attempts cannot outrun a budget.
package auth

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/internal/session"
	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

// Config is what the service needs.
type Config struct {
	Store *tenants.Store
	// SigningKey signs session tokens; at least 32 bytes.
	SigningKey []byte
	// TokenTTL is how long a session lasts; 12 hours if zero.
	TokenTTL time.Duration
	// AdminToken is the operator token.
	AdminToken string
	Log        *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxFreeTenants is how many tenants on the free plan an account may
	// own; DefaultMaxFreeTenants if zero, no limit if negative.
	MaxFreeTenants int
	// TenantsPerDay is how many tenants one account may create in 24
	// hours, deleted ones included (a deleted tenant's slug stays
	// reserved); DefaultTenantsPerDay if zero, no limit if negative.
	TenantsPerDay int
	// SignupsPerHour bounds the sign-ups the process takes an hour from
	// everyone together; DefaultSignupsPerHour if zero, none if negative.
	SignupsPerHour int
	// Sealer seals two-factor secrets at rest (the key ring destination
	// secrets are sealed with); nil: one keyed from AdminToken.
	Sealer *dataout.Sealer
	// OIDC are the OpenID Connect issuers people may sign in with.
	OIDC []OIDCIssuer
	// Mailer sends the account mails (verify, reset, password changed);
	// nil: they are logged and dropped.
	Mailer mail.Mailer
	// PublicURL is the console's base URL, for the links in mails
	// ("https://hub.example.com"); empty: links are relative.
	PublicURL string
}

// Defaults of the settings.
const (
	DefaultMaxFreeTenants = 3
	DefaultTenantsPerDay  = 10
	DefaultSignupsPerHour = 600
)

// The budgets. Login failures: five in a row per (account, address) pair,
// ten per account from addresses it has not signed in from lately, twenty
// per address, before waits start doubling from a second; at most 100 an
// hour each. Sign-ups: 30 an hour per address (every attempt counts).
// Members added: 30 an hour per actor, 60 per tenant. Operator-token
// failures: ten in a row per address, at most 100 an hour. An address is
// an IPv4 address or an IPv6 /64 (network).
var (
	loginPair       = budget{name: "login-pair", free: 5, perHour: 100}
	loginAccount    = budget{name: "login-account", free: 10, perHour: 100}
	loginAddress    = budget{name: "login-address", free: 20, perHour: 100, address: true}
	signupAddress   = budget{name: "signup-address", perHour: 30, address: true}
	memberByActor   = budget{name: "member-actor", perHour: 30}
	memberPerTenant = budget{name: "member-tenant", perHour: 60}
	operatorAddress = budget{name: "operator-address", free: 10, perHour: 100, address: true}
)

// ImpersonationTTL bounds an operator's impersonation session.
const ImpersonationTTL = 15 * time.Minute

// Service is the auth front. It is safe for concurrent use.
type Service struct {
	store     *tenants.Store
	tokens    session.Tokens
	ttl       time.Duration
	now       func() time.Time
	log       *slog.Logger
	lim       *limiter
	signupAll budget
	tenants   tenants.TenantLimits
	operator  *Operator
	// sealer seals two-factor secrets (mfa.go).
	sealer *dataout.Sealer
	// sso signs people in at OpenID Connect issuers (oidc.go).
	sso *ssoClients
	// out sends mail; publicURL prefixes the links in it.
	out       *outbox
	publicURL string
}

// New builds the service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("auth: no store")
	}
	if len(cfg.SigningKey) < 32 {
		return nil, errors.New("auth: signing key shorter than 32 bytes")
	}
	if len(cfg.AdminToken) < 16 {
		return nil, errors.New("auth: admin token shorter than 16 characters")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 12 * time.Hour
	}
	if cfg.MaxFreeTenants == 0 {
		cfg.MaxFreeTenants = DefaultMaxFreeTenants
	}
	if cfg.TenantsPerDay == 0 {
		cfg.TenantsPerDay = DefaultTenantsPerDay
	}
	if cfg.SignupsPerHour == 0 {
		cfg.SignupsPerHour = DefaultSignupsPerHour
	}
	if cfg.Sealer == nil {
		sealer, err := dataout.NewSealer(dataout.KeyFromToken(cfg.AdminToken))
		if err != nil {
			return nil, err
		}
		cfg.Sealer = sealer
	}
	lim := newLimiter(cfg.Now, cfg.Store, tallyKey(cfg.SigningKey), cfg.Log)
	s := &Service{
		store:     cfg.Store,
		tokens:    session.Tokens{Key: cfg.SigningKey, Now: cfg.Now},
		ttl:       cfg.TokenTTL,
		now:       cfg.Now,
		log:       cfg.Log,
		lim:       lim,
		signupAll: budget{name: "signup", perHour: max(cfg.SignupsPerHour, 0)},
		tenants:   tenants.TenantLimits{MaxFree: max(cfg.MaxFreeTenants, 0), PerDay: max(cfg.TenantsPerDay, 0)},
		operator:  &Operator{token: cfg.AdminToken, lim: lim, log: cfg.Log},
		sealer:    cfg.Sealer,
		publicURL: strings.TrimSuffix(cfg.PublicURL, "/"),
	}
	if cfg.Mailer == nil {
		cfg.Mailer = logMailer{cfg.Log}
	}
	s.out = &outbox{mailer: cfg.Mailer, slots: make(chan struct{}, 64), resetSlots: make(chan struct{}, 16)}
	sso, err := newSSOClients(cfg.OIDC, cfg.Log)
	if err != nil {
		return nil, err
	}
	s.sso = sso
	return s, nil
}

// Operator is the service's check of the operator token.
func (s *Service) Operator() *Operator { return s.operator }

// TokenTTL is how long a session lasts.
func (s *Service) TokenTTL() time.Duration { return s.ttl }

// waitError is the ErrThrottled for a wait, in words.
func waitError(wait time.Duration, what string) error {
	return tenants.Throttled(wait, fmt.Sprintf("%s; try again in %s", what, roundUp(wait)))
}

// roundUp writes a wait in whole seconds, rounded up.
func roundUp(d time.Duration) time.Duration {
	return max(time.Second, (d+time.Second-1)/time.Second*time.Second)
}
