package dataout

import (
	"encoding/json"
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
