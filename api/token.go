package api

import (
	"errors"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Console session tokens are JWTs signed with HS256 by a key the store keeps,
// so every control-plane process accepts them and restarts keep sessions.
const (
	tokenIssuer   = "roost"
	tokenAudience = "roost-api"
)

type tokens struct {
	key []byte
	ttl time.Duration
	now func() time.Time
}

func (t tokens) issue(accountID string) (string, time.Time, error) {
	now := t.now()
	exp := now.Add(t.ttl)
	claims := jwt.RegisteredClaims{
		Issuer:    tokenIssuer,
		Audience:  jwt.ClaimStrings{tokenAudience},
		Subject:   accountID,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(exp),
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.key)
	return s, exp, err
}

// parse returns the account a token was issued to. The algorithm is pinned to
// HS256, so a token that names "none" or an asymmetric algorithm is refused
// before its signature is looked at.
func (t tokens) parse(token string) (string, error) {
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return t.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithIssuer(tokenIssuer),
		jwt.WithAudience(tokenAudience),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(t.now),
	)
	if err != nil {
		return "", err
	}
	if claims.Subject == "" {
		return "", errors.New("token has no subject")
	}
	return claims.Subject, nil
}
