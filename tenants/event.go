package tenants

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/roosthub/roost/events"
)

// EventQuery selects a page of a tenant's stored events, newest first.
// Page.Cursor is the id of the last event of the page before (as
// returned by Events); Type, Device, Since (inclusive) and Until
// (exclusive) narrow the events when set.
type EventQuery struct {
	Page
	Type   string
	Device string
	Since  time.Time
	Until  time.Time
}

// Validate checks the query.
func (q EventQuery) Validate() error {
	if q.Type != "" && !slices.Contains(events.Types, q.Type) {
		return invalid("type", "is not an event type")
	}
	if len(q.Device) > 128 {
		return invalid("device", "is longer than a device name can be")
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return invalid("until", "must be after since")
	}
	if q.Cursor != "" {
		if _, err := eventCursor(q.Cursor); err != nil {
			return invalid("cursor", "is not one this API returned")
		}
	}
	return nil
}

func eventCursor(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, strconv.ErrSyntax
	}
	return n, nil
}

// DefaultEventRetention is how long a tenant's events are kept when its
// event_retention quota is 0.
const DefaultEventRetention = 24 * time.Hour

// EventRetentionPeriod is how long the tenant's events are kept.
func (q Quotas) EventRetentionPeriod() time.Duration {
	if q.EventRetention <= 0 {
		return DefaultEventRetention
	}
	return time.Duration(q.EventRetention) * time.Second
}

// IsEventsFilter reports whether a filter is one of the tenant's event
// topics ($events/...), which rules may match.
func IsEventsFilter(filter string) bool {
	return strings.HasPrefix(filter, "$events/")
}
