package api

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

type exportStore interface {
	ExportRules(ctx context.Context, tenant string) ([]tenants.ExportRule, error)
	CreateExportRule(ctx context.Context, tenant string, in tenants.ExportRuleInput) (tenants.ExportRule, error)
	DeleteExportRule(ctx context.Context, tenant, id string) error
}

// exportRule is a rule with how many of its writes Kafka refused since the
// data plane started.
type exportRule struct {
	tenants.ExportRule
	Errors int64 `json:"errors"`
}

func handleExportList(es exportStore, dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant := chi.URLParam(r, "tenant")
		rules, err := es.ExportRules(r.Context(), tenant)
		if err != nil {
			return err
		}
		var errs map[string]int64
		if dp != nil {
			errs = dp.ExportErrors(tenant)
		}
		items := make([]exportRule, len(rules))
		for i, rule := range rules {
			items[i] = exportRule{ExportRule: rule, Errors: errs[rule.ID]}
		}
		writeJSON(w, http.StatusOK, newList(items, ""))
		return nil
	}
}

func handleExportCreate(es exportStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.ExportRuleInput
		if err := decode(r, &in); err != nil {
			return err
		}
		rule, err := es.CreateExportRule(r.Context(), chi.URLParam(r, "tenant"), in)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, exportRule{ExportRule: rule})
		return nil
	}
}

func handleExportDelete(es exportStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := es.DeleteExportRule(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
