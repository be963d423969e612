package tenants

import (
	"strings"
	"time"
	"unicode/utf8"
)

// APIKey lets an application call the API for one tenant with one role.
type APIKey struct {
	ID         string     `json:"id"`
	Tenant     string     `json:"tenant"`
	Name       string     `json:"name"`
	Role       Role       `json:"role"`
	Prefix     string     `json:"prefix"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	// CreatedBy is the account the key was made on behalf of; it ends when
	// that account leaves the tenant. Nil: made by the operator, or before
	// Roost recorded it (such keys are kept until revoked by hand).
	CreatedBy *string `json:"created_by"`

	hash string
}

// apiKeyPrefix starts every API key, so a key pasted somewhere is easy to
// recognise and a bearer token is easy to tell from a console session.
const apiKeyPrefix = "rk_"

// IsAPIKey reports whether a bearer token has the form of an API key.
func IsAPIKey(token string) bool { return strings.HasPrefix(token, apiKeyPrefix) }

// An API key is "rk_" + the id's 26 characters + "_" + 43 characters of
// secret. The id finds the row; the secret is checked against its hash.
func newAPIKeyToken(id string) string {
	return apiKeyPrefix + strings.TrimPrefix(id, "key_") + "_" + newSecret(32)
}

func apiKeyIDFromToken(token string) (string, bool) {
	rest, ok := strings.CutPrefix(token, apiKeyPrefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 26 {
		return "", false
	}
	return "key_" + id, true
}

// visiblePrefix is the part of a key shown in lists, enough to tell keys
// apart and nothing of the secret.
func visiblePrefix(token string) string { return token[:len(apiKeyPrefix)+8] }

// APIKeyInput creates a key.
type APIKeyInput struct {
	Name string `json:"name"`
	Role Role   `json:"role,omitempty"`
}

// Validate checks the input; the role defaults to viewer.
func (in *APIKeyInput) Validate() error {
	if in.Role == "" {
		in.Role = RoleViewer
	}
	if !in.Role.Valid() {
		return invalid("role", "must be owner, admin or viewer")
	}
	if in.Name == "" {
		return invalid("name", "is required")
	}
	if utf8.RuneCountInString(in.Name) > 100 {
		return invalid("name", "must be at most 100 characters")
	}
	return validateDisplayName("name", in.Name)
}
