package tenants

import (
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"
)

// Account is a person who signs in to the console or the API. Accounts belong
// to tenants through memberships.
type Account struct {
	ID        string    `json:"id"`
	Email     string    `json:"email"`
	CreatedAt time.Time `json:"created_at"`
	// EmailVerified tells whether the person proved the email is theirs
	// (POST /v1/verify with the token mailed to it). Until then they may
	// sign in but not buy a plan or add members.
	EmailVerified   bool       `json:"email_verified"`
	EmailVerifiedAt *time.Time `json:"email_verified_at,omitempty"`

	passwordHash string
}

// Signup is what a new account is created from.
type Signup struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// Validate checks the signup and normalises the email to lower case.
func (s *Signup) Validate() error {
	email, err := normaliseEmail(s.Email)
	if err != nil {
		return err
	}
	s.Email = email
	n := utf8.RuneCountInString(s.Password)
	if n < minPasswordLen {
		return invalid("password", "must be at least %d characters", minPasswordLen)
	}
	if len(s.Password) > maxPasswordLen {
		return invalid("password", "must be at most %d bytes", maxPasswordLen)
	}
	return nil
}

func normaliseEmail(email string) (string, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	if email == "" {
		return "", invalid("email", "is required")
	}
	if len(email) > 254 {
		return "", invalid("email", "must be at most 254 bytes")
	}
	addr, err := mail.ParseAddress(email)
	if err != nil || addr.Address != email || addr.Name != "" {
		return "", invalid("email", "is not an email address")
	}
	return email, nil
}

// ValidatePassword checks a new password against the same rules as a
// sign-up's.
func ValidatePassword(password string) error {
	if utf8.RuneCountInString(password) < minPasswordLen {
		return invalid("password", "must be at least %d characters", minPasswordLen)
	}
	if len(password) > maxPasswordLen {
		return invalid("password", "must be at most %d bytes", maxPasswordLen)
	}
	return nil
}

// CredentialStamp names the account's password as it is now, without
// revealing anything of it: it changes whenever the password is set (each
// hash has its own salt), by a reset or a change. What was granted on the
// strength of a password (a two-factor challenge) carries the stamp, and
// is refused once the password has changed. Empty for an account read
// without its password (a session's).
func (a Account) CredentialStamp() string {
	if a.passwordHash == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(a.passwordHash))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

func (a *Account) setVerified(t sql.NullTime) {
	a.EmailVerifiedAt = nullTime(t)
	a.EmailVerified = t.Valid
}
