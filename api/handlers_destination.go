package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

type destinationStore interface {
	Destinations(ctx context.Context, tenant string) ([]tenants.Destination, error)
	Destination(ctx context.Context, tenant, id string) (tenants.Destination, error)
	CreateDestination(ctx context.Context, tenant, id string, in tenants.DestinationInput, sealed tenants.Sealed) (tenants.Destination, error)
	UpdateDestination(ctx context.Context, tenant, id string, up tenants.DestinationUpdate, sealHeaders func(map[string]string) string) (tenants.Destination, error)
	RotateDestinationSecret(ctx context.Context, tenant, id, sealedSecret string) (tenants.Destination, error)
	DeleteDestination(ctx context.Context, tenant, id string) error
	ResealDestination(ctx context.Context, tenant, id string, from, to tenants.Sealed) (bool, error)
}

// destinationWithSecret is a destination as made or rotated: the only
// answers that carry its signing secret.
type destinationWithSecret struct {
	tenants.Destination
	Secret string `json:"secret,omitempty"` // a webhook's; a Kafka destination has none
}

// checkKafka applies the hub's address policy to a Kafka destination's
// bootstrap servers, the hub's own Kafka brokers (by name, or resolved
// now) among the refused.
func checkKafka(ctx context.Context, g *dataout.Guard, k *tenants.Kafka) error {
	if err := g.CheckKafka(ctx, k.Brokers, k.TLS); err != nil {
		return &httpError{status: http.StatusBadRequest, code: "invalid", field: "kafka.brokers", msg: "kafka.brokers: " + err.Error()}
	}
	return nil
}

// checkURL applies the hub's address policy to a webhook URL.
func checkURL(g *dataout.Guard, url string) error {
	if err := g.CheckURL(url); err != nil {
		return &httpError{status: http.StatusBadRequest, code: "invalid", field: "url", msg: "url: " + err.Error()}
	}
	return nil
}

// forRole is a destination as the caller's role may see it: below admin,
// the URL's path and query are left out, as webhook URLs often carry a
// credential there (https://hooks.example.com/services/T0/B0/secret).
//
// A Kafka destination's SASL user name is left out likewise.
func forRole(r *http.Request, d tenants.Destination) tenants.Destination {
	if roleFrom(r.Context()).AtLeast(tenants.RoleAdmin) {
		return d
	}
	if d.Kafka != nil {
		d.Kafka = d.Kafka.Public()
		if d.Kafka.SASL != nil {
			d.Kafka.SASL.Username = ""
		}
		return d
	}
	d.URL = dataout.OriginOf(d.URL)
	return d
}

// errBuiltIn refuses to change the built-in operator-kafka destination.
func errBuiltIn(what string) error {
	return errorf(http.StatusConflict, "conflict", tenants.OperatorKafka+" is the operator's Kafka export, built into the hub: it cannot be "+what+
		"; rules name it with a Kafka topic, and deleting those rules stops the export")
}

// builtIn refuses a write to the built-in destination.
func builtIn(r *http.Request, what string) error {
	if chi.URLParam(r, "id") == tenants.OperatorKafka {
		return errBuiltIn(what)
	}
	return nil
}

// handleDestinationList lists the tenant's destinations, after the
// built-in operator-kafka when the hub exports to the operator's Kafka
// (operatorKafka: ROOST_KAFKA_BROKERS is set).
func handleDestinationList(ds destinationStore, operatorKafka bool) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		list, err := ds.Destinations(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		for i := range list {
			list[i] = forRole(r, list[i])
		}
		if operatorKafka {
			list = append([]tenants.Destination{tenants.OperatorKafkaDestination()}, list...)
		}
		writeJSON(w, http.StatusOK, newList(list, ""))
		return nil
	}
}

func handleDestinationCreate(ds destinationStore, sealer *dataout.Sealer, guard *dataout.Guard) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.DestinationInput
		if err := decode(r, &in); err != nil {
			return err
		}
		if err := in.Validate(); err != nil {
			return err
		}
		tenant, id := chi.URLParam(r, "tenant"), tenants.NewDestinationID()
		var secret string
		var sealed tenants.Sealed
		if in.Type == tenants.DestinationKafka {
			if err := checkKafka(r.Context(), guard, in.Kafka); err != nil {
				return err
			}
			if in.Kafka.SASL != nil {
				sealed.Password = sealer.SealPassword(tenant, id, in.Kafka.SASL.Password)
			}
		} else {
			if err := checkURL(guard, in.URL); err != nil {
				return err
			}
			secret = dataout.NewSecret()
			sealed = tenants.Sealed{Secret: sealer.SealSecret(tenant, id, secret), Headers: sealer.SealHeaders(tenant, id, in.Headers)}
		}
		d, err := ds.CreateDestination(r.Context(), tenant, id, in, sealed)
		if err != nil {
			return err
		}
		w.Header().Set("Location", "/v1/tenants/"+tenant+"/destinations/"+d.ID)
		writeJSON(w, http.StatusCreated, destinationWithSecret{Destination: d, Secret: secret})
		return nil
	}
}

// destinationWithStatus is one destination with its delivery status; the
// status is null when the data plane cannot say (a control plane running
// apart from it, or one keeping no outboxes).
type destinationWithStatus struct {
	tenants.Destination
	Status *dataplane.DeliveryStatus `json:"status"`
}

func handleDestinationGet(ds destinationStore, dl dataplane.Deliveries, operatorKafka bool) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant := chi.URLParam(r, "tenant")
		if operatorKafka && chi.URLParam(r, "id") == tenants.OperatorKafka {
			// No outbox: the export writes before the publisher's ack,
			// its failures are each rule's errors (GET .../rules).
			writeJSON(w, http.StatusOK, destinationWithStatus{Destination: tenants.OperatorKafkaDestination()})
			return nil
		}
		d, err := ds.Destination(r.Context(), tenant, chi.URLParam(r, "id"))
		if err != nil {
			return err
		}
		out := destinationWithStatus{Destination: forRole(r, d)}
		if dl != nil {
			st, err := dl.DeliveryStatus(r.Context(), tenant, d.ID)
			switch {
			case errors.Is(err, tenants.ErrUnavailable):
			case err != nil:
				return err
			default:
				out.Status = &st
			}
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}

func handleDestinationUpdate(ds destinationStore, sealer *dataout.Sealer, guard *dataout.Guard) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := builtIn(r, "changed"); err != nil {
			return err
		}
		var up tenants.DestinationUpdate
		if err := decode(r, &up); err != nil {
			return err
		}
		if err := up.Validate(); err != nil {
			return err
		}
		if up.URL != nil {
			if err := checkURL(guard, *up.URL); err != nil {
				return err
			}
		}
		tenant, id := chi.URLParam(r, "tenant"), chi.URLParam(r, "id")
		if up.Kafka != nil {
			if err := checkKafka(r.Context(), guard, up.Kafka); err != nil {
				return err
			}
			if up.Kafka.SASL != nil && up.Kafka.SASL.Password != "" {
				up.SealedPassword = sealer.SealPassword(tenant, id, up.Kafka.SASL.Password)
			}
		}
		d, err := ds.UpdateDestination(r.Context(), tenant, id, up, func(h map[string]string) string { return sealer.SealHeaders(tenant, id, h) })
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, d)
		return nil
	}
}

func handleDestinationRotate(ds destinationStore, sealer *dataout.Sealer) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := builtIn(r, "given a secret"); err != nil {
			return err
		}
		tenant, id, secret := chi.URLParam(r, "tenant"), chi.URLParam(r, "id"), dataout.NewSecret()
		d, err := ds.Destination(r.Context(), tenant, id)
		if err != nil {
			return err
		}
		if d.Type != tenants.DestinationWebhook {
			return errorf(http.StatusConflict, "conflict", "a Kafka destination has no signing secret; change its password with PATCH")
		}
		d, err = ds.RotateDestinationSecret(r.Context(), tenant, id, sealer.SealSecret(tenant, id, secret))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, destinationWithSecret{Destination: d, Secret: secret})
		return nil
	}
}

func handleDestinationDelete(ds destinationStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := builtIn(r, "deleted"); err != nil {
			return err
		}
		if err := ds.DeleteDestination(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

// testResult is what a send test answers: how the receiver took one
// signed sample request.
type testResult struct {
	Delivered bool            `json:"delivered"`
	Status    int             `json:"status,omitempty"`
	LatencyMS int64           `json:"latency_ms"`
	Error     *testError      `json:"error,omitempty"`
	Sent      json.RawMessage `json:"sent"`
}

type testError struct {
	Kind    dataout.ErrorKind `json:"kind"`
	Message string            `json:"message"`
}

// sampleBatch is the message a send test carries.
func sampleBatch(tenant, destination string, now time.Time) dataout.Batch {
	b := make([]byte, 8)
	rand.Read(b)
	return dataout.Batch{Tenant: tenant, Destination: destination, Messages: []dataout.Message{{
		ID: "test_" + hex.EncodeToString(b), Topic: "$roost/test", Payload: []byte(`{"test":true,"text":"a test request from Roost"}`),
		QoS: 1, Time: now,
	}}}
}

// handleDestinationTest sends one signed sample request now (to a Kafka
// destination: produces one sample record) and answers with how it went; the receiver's failure is a 200 that says so, not an
// error of the API.
func handleDestinationTest(ds destinationStore, sealer *dataout.Sealer, sender *dataout.Sender, limit *sendLimiter, now func() time.Time, log *slog.Logger) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := builtIn(r, "sent a test (publish on a topic a rule exports instead)"); err != nil {
			return err
		}
		tenant := chi.URLParam(r, "tenant")
		d, err := ds.Destination(r.Context(), tenant, chi.URLParam(r, "id"))
		if err != nil {
			return err
		}
		if err := limit.take(tenant); err != nil {
			return err
		}
		wh, err := sealer.Webhook(tenant, d)
		if errors.Is(err, dataout.ErrKeyChanged) && d.Type == tenants.DestinationKafka {
			return errorf(http.StatusConflict, "conflict",
				"the destination's password was sealed under an earlier operator token; set it again (PATCH .../destinations/"+d.ID+")")
		}
		if errors.Is(err, dataout.ErrKeyChanged) {
			return errorf(http.StatusConflict, "conflict",
				"the destination's secret was sealed under an earlier operator token; rotate it (POST .../destinations/"+d.ID+"/secret)")
		}
		if err != nil {
			return err
		}
		if err := sealer.Refresh(r.Context(), ds, tenant, d); err != nil {
			log.Warn("seal a destination's secrets under the current key", "destination", d.ID, "err", err)
		}
		batch := sampleBatch(tenant, d.ID, now())
		a := sender.Send(r.Context(), wh, batch)
		res := testResult{Delivered: a.OK(), Status: a.Status, LatencyMS: a.Latency.Milliseconds(), Sent: dataout.Body(batch)}
		if wh.Kafka != nil {
			res.Sent = dataout.KafkaRecord(batch, batch.Messages[0])
		}
		if a.Err != nil {
			res.Error = &testError{Kind: a.Kind, Message: a.Err.Error()}
		}
		writeJSON(w, http.StatusOK, res)
		return nil
	}
}
