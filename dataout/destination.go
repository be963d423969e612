package dataout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/roosthub/roost/tenants"
)

// The contexts sealed values are bound to: a value copied to another
// tenant's or destination's row does not open there.
func secretContext(tenant, id string) string  { return tenant + "/" + id + "/secret" }
func headersContext(tenant, id string) string { return tenant + "/" + id + "/headers" }

// SealSecret seals a destination's signing secret for its row.
func (s *Sealer) SealSecret(tenant, id, secret string) string {
	return s.Seal([]byte(secret), secretContext(tenant, id))
}

// SealHeaders seals a destination's header values for its row; "" for
// none.
func (s *Sealer) SealHeaders(tenant, id string, h map[string]string) string {
	if len(h) == 0 {
		return ""
	}
	b, _ := json.Marshal(h)
	return s.Seal(b, headersContext(tenant, id))
}

// Webhook opens a destination's sealed secret and headers (a Kafka
// destination's password): what the API's
// send test and the delivery send with. An error wrapping ErrKeyChanged
// means the operator token changed since the secret was sealed.
func (s *Sealer) Webhook(tenant string, d tenants.Destination) (Webhook, error) {
	if d.Type == tenants.DestinationKafka {
		return s.openKafka(tenant, d)
	}
	secret, err := s.Open(d.Sealed.Secret, secretContext(tenant, d.ID))
	if err != nil {
		return Webhook{}, fmt.Errorf("destination %s: secret: %w", d.ID, err)
	}
	wh := Webhook{URL: d.URL, Secret: string(secret)}
	if d.Sealed.Headers != "" {
		b, err := s.Open(d.Sealed.Headers, headersContext(tenant, d.ID))
		if err != nil {
			return Webhook{}, fmt.Errorf("destination %s: headers: %w", d.ID, err)
		}
		if err := json.Unmarshal(b, &wh.Headers); err != nil {
			return Webhook{}, fmt.Errorf("destination %s: headers: %w", d.ID, err)
		}
	}
	return wh, nil
}

// Resealer keeps a destination's sealed values: ResealDestination
// replaces them with to if they are still from (tenants.Store has it).
type Resealer interface {
	ResealDestination(ctx context.Context, tenant, id string, from, to tenants.Sealed) (bool, error)
}

// Refresh seals d's values again under the current key if some were
// sealed under an old key of the ring, and writes them to st unless the
// row changed since d was read. It does nothing for a destination sealed
// under the current key; an error leaves the row as it was (its values
// still open under the old key).
func (s *Sealer) Refresh(ctx context.Context, st Resealer, tenant string, d tenants.Destination) error {
	_, err := s.refresh(ctx, st, tenant, d)
	return err
}

// staleSealed reports whether one of a destination's values is sealed
// under an old key.
func (s *Sealer) staleSealed(v tenants.Sealed) bool {
	return s.Stale(v.Secret) || s.Stale(v.Headers) || s.Stale(v.Password)
}

// errUnopened marks a sealed value Refresh could not open.
var errUnopened = errors.New("sealed value does not open")

// refresh is Refresh, reporting whether it wrote the row.
func (s *Sealer) refresh(ctx context.Context, st Resealer, tenant string, d tenants.Destination) (bool, error) {
	from := d.Sealed
	if !s.staleSealed(from) {
		return false, nil
	}
	to := from
	for _, v := range []struct {
		val     *string
		context string
	}{{&to.Secret, secretContext(tenant, d.ID)}, {&to.Headers, headersContext(tenant, d.ID)}, {&to.Password, passwordContext(tenant, d.ID)}} {
		if *v.val == "" {
			continue
		}
		var err error
		if *v.val, err = s.Reseal(*v.val, v.context); err != nil {
			return false, fmt.Errorf("destination %s: reseal: %w: %w", d.ID, errUnopened, err)
		}
	}
	return st.ResealDestination(ctx, tenant, d.ID, from, to)
}
