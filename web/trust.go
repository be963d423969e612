package web

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

// casPage lists the certificate authorities the tenant trusts for its
// devices' client certificates, and (admins) adds and removes them.
func (c *Console) casPage(w http.ResponseWriter, r *http.Request) {
	c.renderCAs(w, r, http.StatusOK, page{})
}

func (c *Console) renderCAs(w http.ResponseWriter, r *http.Request, status int, p page) {
	cas, err := c.store.CAs(r.Context(), tenantOf(r).Slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	p.Title, p.Nav, p.Data = "Certificate authorities", "devices", cas
	c.render(w, r, status, "cas.html", p)
}

func (c *Console) caCreate(w http.ResponseWriter, r *http.Request) {
	in := tenants.CAInput{Certificate: strings.TrimSpace(r.PostFormValue("certificate"))}
	if _, err := c.store.CreateCA(r.Context(), tenantOf(r).Slug, in); err != nil {
		if errors.Is(err, tenants.ErrCAInUse) {
			err = &tenants.FieldError{Field: "certificate", Message: "this certificate authority belongs to another tenant: use a CA of your own, or pin the devices' certificates"}
		}
		if !errors.Is(err, tenants.ErrInvalid) {
			c.fail(w, r, err)
			return
		}
		errs := formErrors(err)
		if msg, ok := errs["_"]; ok {
			errs = map[string]string{"certificate": msg}
		}
		c.renderCAs(w, r, http.StatusBadRequest, page{Form: map[string]string{"certificate": in.Certificate}, Errors: errs})
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/cas", "saved")
}

// caProvisioning marks a CA for provisioning with the form's groups and
// metadata, or ("off") unmarks it.
func (c *Console) caProvisioning(w http.ResponseWriter, r *http.Request) {
	var u tenants.CAUpdate
	if r.PostFormValue("provision") == "on" {
		md, err := parseMetadata(r.PostFormValue("metadata"))
		if err == nil {
			u.Provisioning = &tenants.ProvisioningTemplate{Groups: parseGroups(r.PostFormValue("groups")), Metadata: md}
			_, err = c.store.UpdateCA(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id"), u)
		}
		if errors.Is(err, tenants.ErrInvalid) {
			c.renderCAs(w, r, http.StatusBadRequest, page{Errors: map[string]string{"provisioning": formErrors(err)[firstKey(formErrors(err))]}})
			return
		}
		if err != nil {
			c.fail(w, r, err)
			return
		}
	} else if _, err := c.store.UpdateCA(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id"), u); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/cas", "saved")
}

func firstKey(m map[string]string) string {
	for k := range m {
		return k
	}
	return ""
}

func (c *Console) caDelete(w http.ResponseWriter, r *http.Request) {
	if err := c.store.DeleteCA(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/cas", "deleted")
}

type auditData struct {
	Entries []tenants.AuditEntry
	// ExportURL downloads the entries the filters select as CSV; NextURL
	// is the next page's ("" on the last).
	ExportURL, NextURL string
	Filtered           bool
}

// auditPage is the tenant's audit trail, newest first, a page at a time,
// filtered by action, actor and dates (auditFilterOf).
func (c *Console) auditPage(w http.ResponseWriter, r *http.Request) {
	slug := tenantOf(r).Slug
	f, form := auditFilterOf(r)
	es, next, err := c.store.AuditWhere(r.Context(), slug, f, tenants.Page{Limit: 100, Cursor: r.URL.Query().Get("after")})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	q := url.Values{}
	for k, v := range form {
		if v != "" {
			q.Set(k, v)
		}
	}
	d := auditData{Entries: es, Filtered: len(q) > 0, ExportURL: "/tenants/" + slug + "/audit/export?" + q.Encode()}
	if next != "" {
		q.Set("after", next)
		d.NextURL = "/tenants/" + slug + "/audit?" + q.Encode()
	}
	c.render(w, r, http.StatusOK, "audit.html", page{Title: "Audit trail", Nav: "settings", Form: form, Data: d})
}
