package broker

import (
	"context"
	"encoding/base64"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

var _ dataplane.RetainedLister = (*Hub)(nil)

// Retained lists a tenant's retained messages matching filter, sorted by
// topic, a page from offset on. The hub's own ($SYS) are not the
// tenant's and are left out; a tenant whose broker is not running has
// none to show.
func (h *Hub) Retained(ctx context.Context, tenant, filter string, offset, limit int) ([]dataplane.Retained, int, error) {
	if err := tenants.ValidateFilter(filter); err != nil {
		return nil, 0, &tenants.FieldError{Field: "filter", Message: err.Error()}
	}
	inst := h.reg.running(tenant)
	if inst == nil {
		return nil, 0, nil
	}
	var all []dataplane.Retained
	for _, pk := range inst.server.Topics.Messages(filter) {
		if strings.HasPrefix(pk.TopicName, "$SYS") {
			continue
		}
		r := dataplane.Retained{Topic: pk.TopicName, QoS: pk.FixedHeader.Qos, Size: len(pk.Payload), Encoding: "text"}
		p := pk.Payload
		if len(p) > dataplane.PreviewBytes {
			p, r.Truncated = p[:dataplane.PreviewBytes], true
		}
		if utf8.Valid(p) || (r.Truncated && utf8.Valid(trimPartialRune(p))) {
			r.Payload = string(trimPartialRune(p))
		} else {
			r.Payload, r.Encoding = base64.StdEncoding.EncodeToString(p), "base64"
		}
		all = append(all, r)
	}
	slices.SortFunc(all, func(a, b dataplane.Retained) int { return strings.Compare(a.Topic, b.Topic) })
	if offset >= len(all) {
		return nil, 0, nil
	}
	end := min(offset+limit, len(all))
	next := 0
	if end < len(all) {
		next = end
	}
	return all[offset:end], next, nil
}

// trimPartialRune drops a UTF-8 sequence cut by the preview's end.
func trimPartialRune(p []byte) []byte {
	for i := 0; i < utf8.UTFMax && len(p) > 0; i++ {
		if utf8.Valid(p) {
			return p
		}
		p = p[:len(p)-1]
	}
	return p
}
