package web

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

type aclData struct {
	Rules []tenants.ACLRule
	// Verdict answers the checker.
	Verdict *verdict
}

type verdict struct {
	Check   tenants.ACLCheck
	Allowed bool
	Rule    *tenants.ACLRule
}

func (c *Console) aclPage(w http.ResponseWriter, r *http.Request) {
	c.renderACL(w, r, http.StatusOK, page{}, nil)
}

func (c *Console) renderACL(w http.ResponseWriter, r *http.Request, status int, p page, v *verdict) {
	rules, err := c.store.ACLRules(r.Context(), tenantOf(r).Slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	p.Title, p.Nav, p.Data = "Access rules", "acl", aclData{Rules: rules, Verdict: v}
	c.render(w, r, status, "acl.html", p)
}

func (c *Console) aclCreate(w http.ResponseWriter, r *http.Request) {
	in := tenants.ACLRuleInput{Effect: tenants.Effect(r.PostFormValue("effect")), Action: tenants.Action(r.PostFormValue("action")),
		Topic: strings.TrimSpace(r.PostFormValue("topic")), Device: strings.TrimSpace(r.PostFormValue("device")), Group: strings.TrimSpace(r.PostFormValue("group"))}
	if in.Group != "" && in.Device == tenants.AnyDevice {
		in.Device = "" // the form's default: a group rule names no device
	}
	form := map[string]string{"effect": string(in.Effect), "action": string(in.Action), "topic": in.Topic, "device": in.Device, "group": in.Group, "position": r.PostFormValue("position")}
	if s := strings.TrimSpace(r.PostFormValue("position")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			c.renderACL(w, r, http.StatusBadRequest, page{Form: form, Errors: map[string]string{"position": "a position is a number from 0 (the first rule)"}}, nil)
			return
		}
		in.Position = &n // counted from 0, as the API counts
	}
	if _, err := c.store.CreateACLRule(r.Context(), tenantOf(r).Slug, in); err != nil {
		if !errors.Is(err, tenants.ErrInvalid) && !errors.Is(err, tenants.ErrQuotaExceeded) {
			c.fail(w, r, err)
			return
		}
		c.renderACL(w, r, http.StatusBadRequest, page{Form: form, Errors: formErrors(err)}, nil)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/acl", "rule")
}

func (c *Console) aclMove(w http.ResponseWriter, r *http.Request) {
	to, err := strconv.Atoi(r.PostFormValue("position"))
	if err != nil || to < 0 {
		c.errorPage(w, r, http.StatusBadRequest, "The new position must be a number from 0.")
		return
	}
	if _, err := c.store.MoveACLRule(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id"), to); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/acl", "rule-moved")
}

func (c *Console) aclDelete(w http.ResponseWriter, r *http.Request) {
	if err := c.store.DeleteACLRule(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/acl", "rule-deleted")
}

// aclCheck answers "would device D be allowed to publish or subscribe to
// topic T?" on the rules page. Any member may ask.
func (c *Console) aclCheck(w http.ResponseWriter, r *http.Request) {
	q := tenants.ACLCheck{Device: strings.TrimSpace(r.PostFormValue("device")), Action: tenants.Action(r.PostFormValue("action")), Topic: strings.TrimSpace(r.PostFormValue("topic"))}
	form := map[string]string{"check_device": q.Device, "check_action": string(q.Action), "check_topic": q.Topic}
	allowed, rule, err := c.store.CheckACL(r.Context(), tenantOf(r).Slug, q)
	if err != nil {
		if !errors.Is(err, tenants.ErrInvalid) {
			c.fail(w, r, err)
			return
		}
		errs := formErrors(err)
		for k, v := range errs {
			errs["check_"+k] = v
		}
		c.renderACL(w, r, http.StatusBadRequest, page{Form: form, Errors: errs}, nil)
		return
	}
	c.renderACL(w, r, http.StatusOK, page{Form: form}, &verdict{Check: q, Allowed: allowed, Rule: rule})
}
