package problem_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

// Errors of every kind the table holds, bare, wrapped and carrying what
// their kind carries (a field, a quota and limit, a wait).
var kinds = []struct {
	name string
	err  error
}{
	{"field", &tenants.FieldError{Field: "topic", Message: "must not hold wildcards"}},
	{"wrapped field", fmt.Errorf("publish: %w", &tenants.FieldError{Field: "filter", Message: "$SYS is closed"})},
	{"invalid", fmt.Errorf("bad body: %w", tenants.ErrInvalid)},
	{"rate quota", &tenants.QuotaError{Quota: "publish_rate", Limit: 100}},
	{"limit quota", &tenants.QuotaError{Quota: "max_retained", Limit: 0}},
	{"wrapped quota", fmt.Errorf("retain: %w", &tenants.QuotaError{Quota: "messages_per_month", Limit: 1_000_000})},
	{"quota", tenants.ErrQuotaExceeded},
	{"throttled with a wait", tenants.Throttled(2500*time.Millisecond, "too many live views; try again in 3s")},
	{"throttled", tenants.ErrThrottled},
	{"unavailable with a wait", &tenants.RetryError{Kind: tenants.ErrUnavailable, After: time.Minute, Msg: "draining"}},
	{"unavailable", fmt.Errorf("no home: %w", tenants.ErrUnavailable)},
	{"conflict", fmt.Errorf("tenant acme: %w", tenants.ErrConflict)},
	{"unauthorized", tenants.ErrUnauthorized},
	{"not found", fmt.Errorf("device d1: %w", tenants.ErrNotFound)},
	{"forbidden", fmt.Errorf("a $ topic: %w", tenants.ErrForbidden)},
	{"internal", errors.New("disk full")},
}

// TestErrUndoesOf: an error rebuilt from its problem is answered with the
// same problem, and keeps the type its kind carries.
func TestErrUndoesOf(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			want := problem.Of(k.err)
			back := want.Err()
			if got := problem.Of(back); !reflect.DeepEqual(got, want) {
				t.Errorf("Of(Of(err).Err()) = %+v, want %+v", got, want)
			}
			var fe *tenants.FieldError
			if errors.As(k.err, &fe) {
				var got *tenants.FieldError
				// A wrapped one's message is the whole detail.
				if !errors.As(back, &got) || got.Field != fe.Field || k.err == error(fe) && got.Message != fe.Message {
					t.Errorf("rebuilt field error %#v, want %#v", got, fe)
				}
			}
			var qe *tenants.QuotaError
			if errors.As(k.err, &qe) {
				var got *tenants.QuotaError
				if !errors.As(back, &got) || *got != *qe {
					t.Errorf("rebuilt quota error %#v, want %#v", got, qe)
				}
			}
		})
	}
}

// TestKind: every code Of gives for a kind names that kind again.
func TestKind(t *testing.T) {
	for _, k := range kinds {
		p := problem.Of(k.err)
		kind := problem.Kind(p.Code)
		switch {
		case p.Internal() && kind != nil:
			t.Errorf("%s: Kind(%q) = %v, want nil", k.name, p.Code, kind)
		case !p.Internal() && !errors.Is(k.err, kind):
			t.Errorf("%s: Kind(%q) = %v, which the error is not", k.name, p.Code, kind)
		}
	}
}
