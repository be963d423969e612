package api

import (
	"context"
	"errors"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

type certificateStore interface {
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
	CreateCA(ctx context.Context, tenant string, in tenants.CAInput) (tenants.CA, error)
	CAs(ctx context.Context, tenant string) ([]tenants.CA, error)
	DeleteCA(ctx context.Context, tenant, id string) error
	UpdateCA(ctx context.Context, tenant, id string, u tenants.CAUpdate) (tenants.CA, error)
	CreateDeviceCertificate(ctx context.Context, tenant, device string, in tenants.DeviceCertificateInput) (tenants.DeviceCertificate, error)
	DeviceCertificates(ctx context.Context, tenant, device string) ([]tenants.DeviceCertificate, error)
	DeleteDeviceCertificate(ctx context.Context, tenant, device, id string) error
}

// items answers a short, unpaged list.
func items[T any](w http.ResponseWriter, list []T) {
	if list == nil {
		list = []T{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": list})
}

func handleCAList(cs certificateStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		cas, err := cs.CAs(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		items(w, cas)
		return nil
	}
}

// handleCAUpdate marks a CA for just-in-time provisioning with a template,
// or unmarks it ({"provisioning": null}).
func handleCAUpdate(cs certificateStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var u tenants.CAUpdate
		if err := decode(r, &u); err != nil {
			return err
		}
		ca, err := cs.UpdateCA(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id"), u)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, ca)
		return nil
	}
}

func handleCACreate(cs certificateStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.CAInput
		if err := decode(r, &in); err != nil {
			return err
		}
		ca, err := cs.CreateCA(r.Context(), chi.URLParam(r, "tenant"), in)
		if errors.Is(err, tenants.ErrCAInUse) {
			return errorf(http.StatusConflict, "ca_in_use", "this certificate authority belongs to another tenant: a CA is bound to the one tenant "+
				"that registered it, since devices are named by their certificate's CN and one tenant's sensor-1 would pass as another's; "+
				"use a CA of your own, or pin the devices' certificates (POST .../devices/{device}/certificates)")
		}
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, ca)
		return nil
	}
}

func handleCADelete(cs certificateStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := cs.DeleteCA(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

func handleDeviceCertificateList(cs certificateStore) handler {
	return handleDeviceItems(cs, cs.DeviceCertificates)
}

func handleDeviceCertificateCreate(cs certificateStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.DeviceCertificateInput
		if err := decode(r, &in); err != nil {
			return err
		}
		c, err := cs.CreateDeviceCertificate(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"), in)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, c)
		return nil
	}
}

func handleDeviceCertificateDelete(cs certificateStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := cs.DeleteDeviceCertificate(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
