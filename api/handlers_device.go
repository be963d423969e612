package api

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

type deviceStore interface {
	CreateDevice(ctx context.Context, tenant string, in tenants.DeviceInput) (tenants.Device, string, error)
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
	FilterDevices(ctx context.Context, tenant string, f tenants.DeviceFilter, p tenants.Page) ([]tenants.Device, string, error)
	UpdateDevice(ctx context.Context, tenant, name string, u tenants.DeviceUpdate) (tenants.Device, error)
	DeleteDevice(ctx context.Context, tenant, name string) error
	RotateDeviceSecret(ctx context.Context, tenant, name string) (tenants.Device, string, error)
}

// deviceWithSecret is a device as answered by create and rotate: the only
// two responses that ever carry its secret.
type deviceWithSecret struct {
	tenants.Device
	Secret string `json:"secret"`
}

// handleDeviceList lists devices by name, filtered by ?group=, ?search=
// and ?metadata.<key>=<value> (see deviceFilter).
func handleDeviceList(ds deviceStore) handler {
	return handleList(func(r *http.Request, p tenants.Page) ([]tenants.Device, string, error) {
		f, err := deviceFilter(r)
		if err != nil {
			return nil, "", err
		}
		return ds.FilterDevices(r.Context(), chi.URLParam(r, "tenant"), f, p)
	})
}

func handleDeviceCreate(ds deviceStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.DeviceInput
		if err := decode(r, &in); err != nil {
			return err
		}
		tenant := chi.URLParam(r, "tenant")
		d, secret, err := ds.CreateDevice(r.Context(), tenant, in)
		if err != nil {
			return err
		}
		w.Header().Set("Location", "/v1/tenants/"+tenant+"/devices/"+d.Name)
		writeJSON(w, http.StatusCreated, deviceWithSecret{Device: d, Secret: secret})
		return nil
	}
}

func handleDeviceGet(ds deviceStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := ds.Device(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, d)
		return nil
	}
}

func handleDeviceUpdate(ds deviceStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var u tenants.DeviceUpdate
		if err := decode(r, &u); err != nil {
			return err
		}
		d, err := ds.UpdateDevice(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"), u)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, d)
		return nil
	}
}

func handleDeviceDelete(ds deviceStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := ds.DeleteDevice(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

func handleDeviceRotate(ds deviceStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, secret, err := ds.RotateDeviceSecret(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, deviceWithSecret{Device: d, Secret: secret})
		return nil
	}
}
