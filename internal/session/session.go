// Package session issues and checks console session tokens: JWTs signed
// with HS256 by a key the store keeps, so every control-plane process
// accepts them and restarts keep sessions. The REST API takes them as bearer
// tokens and the web console as a cookie.
package session

import (
	"errors"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	tokenIssuer   = "roost"
	tokenAudience = "roost-api"
)

// Tokens issues and parses session tokens.
type Tokens struct {
	Key []byte
	TTL time.Duration
	Now func() time.Time
}

// Issue returns a session token for the account and when it expires.
func (t Tokens) Issue(accountID string) (string, time.Time, error) {
	return t.IssueFor(accountID, t.TTL)
}

// IssueFor returns a token for any subject, valid for ttl.
func (t Tokens) IssueFor(subject string, ttl time.Duration) (string, time.Time, error) {
	accountID := subject
	now := t.Now()
	exp := now.Add(ttl)
	claims := jwt.RegisteredClaims{
		Issuer:    tokenIssuer,
		Audience:  jwt.ClaimStrings{tokenAudience},
		Subject:   accountID,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(exp),
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.Key)
	return s, exp, err
}

// Parse returns the account a token was issued to. The algorithm is pinned to
// HS256, so a token that names "none" or an asymmetric algorithm is refused
// before its signature is looked at.
func (t Tokens) Parse(token string) (string, error) {
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return t.Key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(tokenIssuer),
		jwt.WithAudience(tokenAudience),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(t.Now),
	)
	if err != nil {
		return "", err
	}
	if claims.Subject == "" {
		return "", errors.New("token has no subject")
	}
	return claims.Subject, nil
}
