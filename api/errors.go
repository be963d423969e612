package api

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/roosthub/roost/tenants"
)

// problem is an RFC 9457 problem document. Code is a stable machine-readable
// name for the kind of error; Field names the input a validation error is
// about; Quota and Limit name the quota that a request would exceed.
type problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	Code      string `json:"code"`
	Field     string `json:"field,omitempty"`
	Quota     string `json:"quota,omitempty"`
	Limit     *int64 `json:"limit,omitempty"`
	RequestID string `json:"request_id,omitempty"`

	retryAfter string
}

// httpError is an error that carries its own status, for the failures the API
// itself detects (bad JSON, a missing token, too many login attempts).
type httpError struct {
	status     int
	code       string
	field      string
	msg        string
	retryAfter string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, code, msg string) error {
	return &httpError{status: status, code: code, msg: msg}
}

// statusOf is the one table from the directory's error kinds to HTTP.
var statusOf = []struct {
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
	{tenants.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
}

// toProblem maps err to the problem the client sees. Errors of no known kind
// are internal: the client gets a plain message and the request id, and the
// error is logged with that id.
func toProblem(err error, requestID string, log *slog.Logger) problem {
	p := problem{Type: "about:blank", RequestID: requestID}
	var he *httpError
	var fe *tenants.FieldError
	var qe *tenants.QuotaError
	switch {
	case errors.As(err, &he):
		p.Status, p.Code, p.Field, p.Detail, p.retryAfter = he.status, he.code, he.field, he.msg, he.retryAfter
	case errors.As(err, &fe):
		p.Status, p.Code, p.Field, p.Detail = http.StatusBadRequest, "invalid", fe.Field, fe.Error()
	case errors.As(err, &qe):
		p.Status, p.Code, p.Quota, p.Limit, p.Detail = http.StatusForbidden, "quota_exceeded", qe.Quota, &qe.Limit, qe.Error()
		if qe.IsRate() {
			p.Status, p.retryAfter = http.StatusTooManyRequests, "1"
		}
	default:
		for _, s := range statusOf {
			if errors.Is(err, s.kind) {
				p.Status, p.Code, p.Detail = s.status, s.code, err.Error()
				break
			}
		}
	}
	if p.Status == 0 {
		log.Error("internal error", "request_id", requestID, "err", err)
		p.Status, p.Code, p.Detail = http.StatusInternalServerError, "internal", "internal error; quote the request id when reporting it"
	}
	p.Title = http.StatusText(p.Status)
	return p
}

func writeProblem(w http.ResponseWriter, p problem) {
	if p.retryAfter != "" {
		w.Header().Set("Retry-After", p.retryAfter)
	}
	writeJSONType(w, "application/problem+json", p.Status, p)
}
