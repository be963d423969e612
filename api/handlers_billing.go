package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/billing"
	"github.com/roosthub/roost/tenants"
)

// errBillingOff is the problem every billing route answers while billing
// is off.
var errBillingOff = &httpError{status: http.StatusConflict, code: "billing_off", msg: billing.ErrOff.Error()}

// billingError maps the billing service's own errors.
func billingError(err error) error {
	switch {
	case errors.Is(err, billing.ErrOff):
		return errBillingOff
	case errors.Is(err, billing.ErrSignature):
		return errorf(http.StatusBadRequest, "bad_signature", err.Error())
	}
	return err
}

func handleBillingGet(b *billing.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		o, err := b.Overview(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, o)
		return nil
	}
}

type billingUpdate struct {
	// SpendCap is absent (unchanged), null (removed) or a cap.
	SpendCap json.RawMessage `json:"spend_cap"`
}

func handleBillingUpdate(b *billing.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in billingUpdate
		if err := decode(r, &in); err != nil {
			return err
		}
		tenant := chi.URLParam(r, "tenant")
		if in.SpendCap != nil {
			var c *tenants.SpendCap
			if !bytes.Equal(in.SpendCap, []byte("null")) {
				dec := json.NewDecoder(bytes.NewReader(in.SpendCap))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&c); err != nil {
					return &tenants.FieldError{Field: "spend_cap", Message: `must be null or {"cents": <integer>, "block": <boolean>}`}
				}
			}
			if err := b.SetSpendCap(r.Context(), tenant, c); err != nil {
				return err
			}
		}
		o, err := b.Overview(r.Context(), tenant)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, o)
		return nil
	}
}

type urlView struct {
	URL string `json:"url"`
}

// callerEmail is the email of the account calling, for the Stripe customer;
// an API key has none.
func callerEmail(r *http.Request) string {
	if p := principalFrom(r.Context()); p.account != nil {
		return p.account.Email
	}
	return ""
}

func handleBillingCheckout(b *billing.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in struct {
			Plan string `json:"plan"`
		}
		if err := decode(r, &in); err != nil {
			return err
		}
		if !b.Enabled() {
			return errBillingOff
		}
		if in.Plan == "" {
			return &tenants.FieldError{Field: "plan", Message: "is required"}
		}
		u, err := b.Checkout(r.Context(), chi.URLParam(r, "tenant"), in.Plan, callerEmail(r))
		if err != nil {
			return billingError(err)
		}
		writeJSON(w, http.StatusOK, urlView{URL: u})
		return nil
	}
}

func handleBillingPortal(b *billing.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		u, err := b.Portal(r.Context(), chi.URLParam(r, "tenant"), callerEmail(r))
		if err != nil {
			return billingError(err)
		}
		writeJSON(w, http.StatusOK, urlView{URL: u})
		return nil
	}
}

// maxWebhookBytes bounds a Stripe event; Stripe's are a few KiB.
const maxWebhookBytes = 256 << 10

// handleBillingWebhook takes Stripe's events. The signature is checked over
// the body exactly as received.
func handleBillingWebhook(b *billing.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if !b.Enabled() {
			return errBillingOff
		}
		body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxWebhookBytes))
		if err != nil {
			return errorf(http.StatusRequestEntityTooLarge, "body_too_large", "a Stripe event is at most 256 KiB")
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return errorf(http.StatusBadRequest, "bad_json", "the body is empty")
		}
		if err := b.HandleWebhook(r.Context(), body, r.Header.Get("Stripe-Signature")); err != nil {
			return billingError(err)
		}
		writeJSON(w, http.StatusOK, map[string]bool{"received": true})
		return nil
	}
}
