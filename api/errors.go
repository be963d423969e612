package api

import (
	"errors"
	"log/slog"
	"net/http"

	kinds "github.com/roosthub/roost/internal/problem"
)

// problem is an RFC 9457 problem document. Code is a stable machine-readable
// name for the kind of error; Field names the input a validation error is
// about; Quota and Limit name the quota that a request would exceed.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Code   string `json:"code"`
	Field  string `json:"field,omitempty"`
	Quota  string `json:"quota,omitempty"`
	Limit  *int64 `json:"limit,omitempty"`
	// Line and Column point into an expression the request gave (a
	// rule's condition), 1-based.
	Line      int    `json:"line,omitempty"`
	Column    int    `json:"column,omitempty"`
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
	line, col  int
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, code, msg string) error {
	return &httpError{status: status, code: code, msg: msg}
}

// toProblem maps err to the problem the client sees: an error the API
// itself detected carries its own; the directory's kinds are mapped by the
// one table in internal/problem, shared with the console. Errors of no known
// kind are internal: the client gets a plain message and the request id,
// and the error is logged with that id.
func toProblem(err error, requestID string, log *slog.Logger) problem {
	p := problem{Type: "about:blank", RequestID: requestID}
	var he *httpError
	if errors.As(err, &he) {
		p.Status, p.Code, p.Field, p.Detail, p.retryAfter, p.Line, p.Column = he.status, he.code, he.field, he.msg, he.retryAfter, he.line, he.col
	} else {
		k := kinds.Of(err)
		if k.Internal() {
			log.Error("internal error", "request_id", requestID, "err", err)
		}
		p.Status, p.Code, p.Field, p.Detail, p.Quota, p.Limit, p.retryAfter = k.Status, k.Code, k.Field, k.Detail, k.Quota, k.Limit, k.RetryAfter
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
