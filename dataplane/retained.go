package dataplane

import "context"

// RetainedLister lists a tenant's retained messages. The data plane in
// this process has it; a control plane running apart (cluster.Remote)
// does not yet, and the API answers 501 there.
type RetainedLister interface {
	// Retained lists the retained messages on topics matching filter,
	// by topic, from offset on, at most limit; next is the offset of the
	// next page, 0 at the end.
	Retained(ctx context.Context, tenant, filter string, offset, limit int) (msgs []Retained, next int, err error)
}

// Retained is one retained message, with a preview of its payload.
type Retained struct {
	Topic string `json:"topic"`
	// Payload is the payload's first PreviewBytes, as text when they are
	// UTF-8, else base64 (Encoding says which).
	Payload   string `json:"payload_preview"`
	Encoding  string `json:"encoding"`
	Truncated bool   `json:"truncated"`
	QoS       byte   `json:"qos"`
	Size      int    `json:"size"`
}

// PreviewBytes is how much of a retained payload a listing shows.
const PreviewBytes = 256
