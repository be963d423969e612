package tenants

import (
	"errors"
	"fmt"
	"time"
)

// The kinds of error the directory returns. Callers test for them with
// errors.Is; the API maps each to one HTTP status.
var (
	ErrNotFound      = errors.New("not found")
	ErrConflict      = errors.New("conflict")
	ErrInvalid       = errors.New("invalid")
	ErrForbidden     = errors.New("forbidden")
	ErrUnauthorized  = errors.New("unauthorized")
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrUnavailable: a part the request needs (a data-plane node) does
	// not answer now; trying again later may work.
	ErrUnavailable = errors.New("unavailable")
	// ErrThrottled: too many attempts of this kind from this caller; the
	// same request later may work.
	ErrThrottled = errors.New("too many attempts")
)

// FieldError is an ErrInvalid that names the offending input field.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// QuotaError is an ErrQuotaExceeded that names the quota and its limit.
type QuotaError struct {
	Quota string
	Limit int64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("quota %s exceeded (limit %d)", e.Quota, e.Limit)
}

// Unwrap makes errors.Is(err, ErrQuotaExceeded) true.
func (e *QuotaError) Unwrap() error { return ErrQuotaExceeded }

// IsRate reports whether the quota is a rate, which lifts again within a
// second (rates allow a second's burst), rather than a limit waiting does
// not lift.
// Lifts reports whether the quota lifts again by itself, soon enough to
// try again: a rate, or max_pending_commands (as pending commands are
// replied to or expire). Such a refusal is a 429, not a 403.
func (e *QuotaError) Lifts() bool { return e.IsRate() || e.Quota == "max_pending_commands" }

func (e *QuotaError) IsRate() bool {
	switch e.Quota {
	case "connect_rate", "publish_rate", "tenant_publish_rate":
		return true
	}
	return false
}

// RetryError is an error of one kind (ErrThrottled, ErrUnavailable) that
// says when trying again makes sense.
type RetryError struct {
	Kind  error
	After time.Duration
	Msg   string
}

func (e *RetryError) Error() string { return e.Msg }

// Unwrap makes errors.Is(err, e.Kind) true.
func (e *RetryError) Unwrap() error { return e.Kind }

// Throttled returns an ErrThrottled that asks to wait d.
func Throttled(d time.Duration, msg string) error {
	return &RetryError{Kind: ErrThrottled, After: d, Msg: msg}
}
