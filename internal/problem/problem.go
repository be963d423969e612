// Package problem is the one table from the directory's error kinds to
// HTTP: the API's problem documents and the console's error pages are both
// drawn from it, so the two cannot answer one error differently, and a
// node's internal API sends its errors to a control plane as its problems,
// which Err turns back into errors of the same kinds.
package problem

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/roosthub/roost/tenants"
)

// Problem is how one error is answered over HTTP. Code is a stable
// machine-readable name for its kind; Field names the input a validation
// error is about; Quota and Limit name the quota a request would exceed;
// RetryAfter, when set, is the Retry-After header in seconds.
type Problem struct {
	Status     int
	Code       string
	Field      string
	Detail     string
	Quota      string
	Limit      *int64
	RetryAfter string
}

// Internal reports whether the error was of no known kind: the client sees
// a plain message, and the error belongs in the log.
func (p Problem) Internal() bool { return p.Status == http.StatusInternalServerError }

// kinds maps each error kind to a status and code.
var kinds = []struct {
	kind   error
	status int
	code   string
}{
	{tenants.ErrNotFound, http.StatusNotFound, "not_found"},
	{tenants.ErrConflict, http.StatusConflict, "conflict"},
	{tenants.ErrInvalid, http.StatusBadRequest, "invalid"},
	{tenants.ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{tenants.ErrForbidden, http.StatusForbidden, "forbidden"},
	{tenants.ErrQuotaExceeded, http.StatusForbidden, "quota_exceeded"},
	{tenants.ErrMFARequired, http.StatusForbidden, "mfa_required"},
	{tenants.ErrThrottled, http.StatusTooManyRequests, "too_many_attempts"},
	{tenants.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
}

// InternalDetail is what a client is told of an error of no known kind.
const InternalDetail = "internal error; quote the request id when reporting it"

// Of maps err to its problem.
func Of(err error) Problem {
	var p Problem
	for _, k := range kinds {
		if errors.Is(err, k.kind) {
			p.Status, p.Code, p.Detail = k.status, k.code, err.Error()
			break
		}
	}
	if p.Status == 0 {
		return Problem{Status: http.StatusInternalServerError, Code: "internal", Detail: InternalDetail}
	}
	var fe *tenants.FieldError
	var qe *tenants.QuotaError
	var re *tenants.RetryError
	switch {
	case errors.As(err, &fe):
		p.Field = fe.Field
	case errors.As(err, &qe):
		limit := qe.Limit
		p.Quota, p.Limit = qe.Quota, &limit
		if qe.Lifts() {
			// A rate lifts within a second: try again then (a RetryError
			// below may say to wait longer).
			p.Status, p.RetryAfter = http.StatusTooManyRequests, "1"
		}
	}
	if errors.As(err, &re) && re.After > 0 {
		p.RetryAfter = strconv.Itoa(seconds(re.After))
	}
	return p
}

// Kind returns the error kind a code names, or nil for a code the table
// does not hold ("internal" among them).
func Kind(code string) error {
	for _, k := range kinds {
		if k.code == code {
			return k.kind
		}
	}
	return nil
}

// Err rebuilds an error from a problem that crossed a wire (a node's
// internal API): of the kind its code names, with its field, quota and
// limit, and wait, its message the detail, so that Of answers it as the
// sender's Of answered the original. A code the table does not hold gives
// an error of no kind.
func (p Problem) Err() error {
	kind := Kind(p.Code)
	if kind == nil {
		return errors.New(p.Detail)
	}
	switch {
	case p.Field != "" && errors.Is(kind, tenants.ErrInvalid):
		kind = &tenants.FieldError{Field: p.Field, Message: strings.TrimPrefix(p.Detail, p.Field+": ")}
	case p.Quota != "" && errors.Is(kind, tenants.ErrQuotaExceeded):
		qe := &tenants.QuotaError{Quota: p.Quota}
		if p.Limit != nil {
			qe.Limit = *p.Limit
		}
		kind = qe
	}
	if s, err := strconv.Atoi(p.RetryAfter); err == nil && s > 0 && Of(kind).RetryAfter != p.RetryAfter {
		return &tenants.RetryError{Kind: kind, After: time.Duration(s) * time.Second, Msg: p.Detail}
	}
	if kind.Error() == p.Detail {
		return kind
	}
	return &detailed{kind: kind, msg: p.Detail}
}

// detailed is an error of a kind whose message says more than the kind's.
type detailed struct {
	kind error
	msg  string
}

func (e *detailed) Error() string { return e.msg }
func (e *detailed) Unwrap() error { return e.kind }

// seconds rounds a wait up to whole seconds, at least one.
func seconds(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }
