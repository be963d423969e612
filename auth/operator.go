package auth

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/roosthub/roost/internal/accesslog"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

// Operator checks the operator token wherever it is asked for: the admin
// API, /metrics, a node's internal API and the console's operator sign-in.
// The right token is compared first and always passes; only failures are
// counted, per address (ten in a row, then doubling waits; at most 100 an
// hour), and an address past its budget is answered 429. The token's 192
// random bits are what keeps it from being guessed; the throttle keeps
// guessers from filling the log unseen and from making it cheap.
type Operator struct {
	token string
	lim   *limiter
	log   *slog.Logger
}

// NewOperator returns an operator check of its own, for a process without
// the whole service (a data-plane node).
func NewOperator(token string, now func() time.Time, log *slog.Logger) *Operator {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Operator{token: token, lim: newLimiter(now, nil, nil, log), log: log}
}

// errOperatorToken answers a wrong operator token.
var errOperatorToken = fmt.Errorf("this needs the operator token: %w", tenants.ErrUnauthorized)

// Is reports whether presented is the operator token (constant time).
func (o *Operator) Is(presented string) bool {
	return presented != "" && subtle.ConstantTimeCompare([]byte(presented), []byte(o.token)) == 1
}

// Check returns nil if presented is the operator token. Otherwise it counts
// a failure from addr and returns ErrUnauthorized, or, for an address past
// its budget, an ErrThrottled (not counted again).
func (o *Operator) Check(presented, addr string) error {
	if o.Is(presented) {
		return nil
	}
	return o.Fail(addr)
}

// Fail counts a failed operator-token attempt from addr, as Check does.
func (o *Operator) Fail(addr string) error {
	c := charge{operatorAddress, addr}
	if _, wait := o.lim.reserve(c); wait > 0 {
		return waitError(wait, "too many wrong operator tokens from this address")
	}
	o.log.Warn("wrong operator token", "remote", addr)
	return errOperatorToken
}

// Bearer returns the bearer token of a request's Authorization header.
func Bearer(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// Require lets through only requests bearing the operator token, for
// handlers of plain text (a node's internal API, its /metrics): a wrong
// token is 401, an address past its budget 429 with Retry-After.
func (o *Operator) Require(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := o.Check(Bearer(r), accesslog.ClientIP(r))
		if err == nil {
			next.ServeHTTP(w, r)
			return
		}
		p := problem.Of(err)
		if p.RetryAfter != "" {
			w.Header().Set("Retry-After", p.RetryAfter)
		}
		http.Error(w, err.Error(), p.Status)
	})
}
