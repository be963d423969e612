package api

import (
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// handleRetainedList lists the tenant's retained messages matching
// ?filter= (# if none), a page at a time, from its broker. A data plane
// that cannot list them (a control plane running apart) answers 501.
func handleRetainedList(dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		rl, ok := dp.(dataplane.RetainedLister)
		if !ok {
			return errorf(http.StatusNotImplemented, "not_implemented", "this control plane cannot list retained messages yet")
		}
		p, err := page(r)
		if err != nil {
			return err
		}
		offset := 0
		if p.Cursor != "" {
			if offset, err = strconv.Atoi(p.Cursor); err != nil || offset < 0 {
				return &httpError{status: http.StatusBadRequest, code: "invalid", field: "cursor", msg: "cursor is not one this API returned"}
			}
		}
		if p.Limit == 0 {
			p.Limit = tenants.DefaultPageSize
		}
		filter := r.URL.Query().Get("filter")
		if filter == "" {
			filter = "#"
		}
		msgs, next, err := rl.Retained(r.Context(), chi.URLParam(r, "tenant"), filter, offset, p.Limit)
		if err != nil {
			return err
		}
		cursor := ""
		if next > 0 {
			cursor = strconv.Itoa(next)
		}
		writeJSON(w, http.StatusOK, newList(msgs, cursor))
		return nil
	}
}
