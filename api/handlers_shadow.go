package api

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

// shadowStore is what the shadow routes need of the directory.
type shadowStore interface {
	Shadow(ctx context.Context, tenant, device string) (tenants.Shadow, error)
	UpdateShadow(ctx context.Context, tenant, device string, u tenants.ShadowUpdate) (tenants.Shadow, error)
}

// handleShadowGet answers a device's shadow; an unknown device is a 404.
func handleShadowGet(ss shadowStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		sh, err := ss.Shadow(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, sh)
		return nil
	}
}

// handleShadowUpdate merges desired (or reported) state into a device's
// shadow: a stale version is a 409, a shadow over max_shadow_bytes is
// refused naming the quota. The device is told the delta by its broker,
// which hears of the change from the directory.
func handleShadowUpdate(ss shadowStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var u tenants.ShadowUpdate
		if err := decode(r, &u); err != nil {
			return err
		}
		u.Source = "api"
		sh, err := ss.UpdateShadow(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"), u)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, sh)
		return nil
	}
}
