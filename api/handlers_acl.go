package api

import (
	"context"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

type aclStore interface {
	ACLRules(ctx context.Context, tenant string) ([]tenants.ACLRule, error)
	CreateACLRule(ctx context.Context, tenant string, in tenants.ACLRuleInput) (tenants.ACLRule, error)
	DeleteACLRule(ctx context.Context, tenant, id string) error
	CheckACL(ctx context.Context, tenant string, c tenants.ACLCheck) (bool, *tenants.ACLRule, error)
}

// handleACLList pages through the rules in position order. The cursor is a
// position; the list is short (tenants.MaxACLRules) and read whole.
func handleACLList(as aclStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p, err := page(r)
		if err != nil {
			return err
		}
		rules, err := as.ACLRules(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		start := 0
		if p.Cursor != "" {
			if start, err = strconv.Atoi(p.Cursor); err != nil || start < 0 {
				return &httpError{status: http.StatusBadRequest, code: "invalid", field: "cursor", msg: "cursor is not one this API returned"}
			}
		}
		limit := p.Limit
		if limit == 0 {
			limit = tenants.DefaultPageSize
		}
		start = min(start, len(rules))
		end := min(start+limit, len(rules))
		next := ""
		if end < len(rules) {
			next = strconv.Itoa(end)
		}
		writeJSON(w, http.StatusOK, newList(rules[start:end], next))
		return nil
	}
}

func handleACLCreate(as aclStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.ACLRuleInput
		if err := decode(r, &in); err != nil {
			return err
		}
		rule, err := as.CreateACLRule(r.Context(), chi.URLParam(r, "tenant"), in)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, rule)
		return nil
	}
}

func handleACLDelete(as aclStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := as.DeleteACLRule(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type aclVerdict struct {
	Allowed bool             `json:"allowed"`
	Rule    *tenants.ACLRule `json:"rule"`
}

func handleACLCheck(as aclStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var c tenants.ACLCheck
		if err := decode(r, &c); err != nil {
			return err
		}
		allowed, rule, err := as.CheckACL(r.Context(), chi.URLParam(r, "tenant"), c)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, aclVerdict{Allowed: allowed, Rule: rule})
		return nil
	}
}

type apiKeyStore interface {
	CreateAPIKey(ctx context.Context, tenant string, in tenants.APIKeyInput, createdBy string) (tenants.APIKey, string, error)
	APIKeys(ctx context.Context, tenant string, p tenants.Page) ([]tenants.APIKey, string, error)
	DeleteAPIKey(ctx context.Context, tenant, id string) error
}

type apiKeyWithToken struct {
	tenants.APIKey
	Key string `json:"key"`
}

func handleAPIKeyList(ks apiKeyStore) handler {
	return handleList(func(r *http.Request, p tenants.Page) ([]tenants.APIKey, string, error) {
		return ks.APIKeys(r.Context(), chi.URLParam(r, "tenant"), p)
	})
}

func handleAPIKeyCreate(ks apiKeyStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.APIKeyInput
		if err := decode(r, &in); err != nil {
			return err
		}
		if err := (tenants.By{Role: roleFrom(r.Context())}).MayMakeKey(in.Role); err != nil {
			return &httpError{status: http.StatusForbidden, code: "forbidden", field: "role", msg: "a key cannot have a higher role than its creator"}
		}
		// The key is made on behalf of the caller's account (or, made by a
		// key, of that key's): it ends when that account leaves.
		k, token, err := ks.CreateAPIKey(r.Context(), chi.URLParam(r, "tenant"), in, principalFrom(r.Context()).creator())
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusCreated, apiKeyWithToken{APIKey: k, Key: token})
		return nil
	}
}

func handleAPIKeyDelete(ks apiKeyStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := ks.DeleteAPIKey(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
