// Package session signs and checks session tokens: JWTs signed with HS256
// by a key the store keeps, so every control-plane process accepts them
// and restarts keep sessions. A token names its session record (the JWT
// id), which the server checks on every request, so that a session can be
// ended before the token expires. The REST API takes them as bearer tokens
// and the web console as a cookie.
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
	Now func() time.Time
}

// Claims are what a token says: whose it is and which session record it
// names.
type Claims struct {
	Subject   string
	SessionID string
	ExpiresAt time.Time
}

// Issue returns a token for subject and session id, valid until exp.
func (t Tokens) Issue(subject, sessionID string, exp time.Time) (string, error) {
	now := t.Now()
	claims := jwt.RegisteredClaims{
		Issuer:    tokenIssuer,
		Audience:  jwt.ClaimStrings{tokenAudience},
		Subject:   subject,
		ID:        sessionID,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(exp),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.Key)
}

// Parse returns what a token says, if it is well signed and unexpired. The
// algorithm is pinned to HS256, so a token that names "none" or an
// asymmetric algorithm is refused before its signature is looked at.
func (t Tokens) Parse(token string) (Claims, error) {
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return t.Key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(tokenIssuer),
		jwt.WithAudience(tokenAudience),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(t.Now),
	)
	if err != nil {
		return Claims{}, err
	}
	if claims.Subject == "" || claims.ID == "" {
		return Claims{}, errors.New("token names no subject or session")
	}
	return Claims{Subject: claims.Subject, SessionID: claims.ID, ExpiresAt: claims.ExpiresAt.Time}, nil
}
