package tenants

import (
	"context"
	"time"
)

// AuditEntry records one change: who did what to which object, when.
type AuditEntry struct {
	ID     string    `json:"id"`
	Tenant string    `json:"tenant,omitempty"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Object string    `json:"object"`
	At     time.Time `json:"at"`
}

type actorKey struct{}

// WithActor returns a context that names who is acting, for the audit log:
// "account:<id>", "apikey:<id>", "operator" or "system".
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

func actorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "system"
}
