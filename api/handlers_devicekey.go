package api

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

type deviceKeyStore interface {
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
	CreateDeviceKey(ctx context.Context, tenant, device string, in tenants.DeviceKeyInput) (tenants.DeviceKey, error)
	DeviceKeys(ctx context.Context, tenant, device string) ([]tenants.DeviceKey, error)
	DeleteDeviceKey(ctx context.Context, tenant, device, id string) error
}

func handleDeviceKeyList(ks deviceKeyStore) handler {
	return handleDeviceItems(ks, ks.DeviceKeys)
}

// handleDeviceItems answers a device's short, unpaged list of credentials;
// an unknown device is a 404, not an empty list.
func handleDeviceItems[T any](ds interface {
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
}, list func(ctx context.Context, tenant, device string) ([]T, error)) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant, device := chi.URLParam(r, "tenant"), chi.URLParam(r, "device")
		if _, err := ds.Device(r.Context(), tenant, device); err != nil {
			return err
		}
		l, err := list(r.Context(), tenant, device)
		if err != nil {
			return err
		}
		items(w, l)
		return nil
	}
}

func handleDeviceKeyCreate(ks deviceKeyStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.DeviceKeyInput
		if err := decode(r, &in); err != nil {
			return err
		}
		k, err := ks.CreateDeviceKey(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"), in)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, k)
		return nil
	}
}

func handleDeviceKeyDelete(ks deviceKeyStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := ks.DeleteDeviceKey(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
