package web

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// exportRow is an export rule with its failures so far.
type exportRow struct {
	Rule   tenants.ExportRule
	Errors int64
}

// exportRulesPage lists the tenant's export rules (to Kafka, or to a
// webhook destination) with their failures, and (admins) adds and removes
// them, as the API's /rules does.
func (c *Console) exportRulesPage(w http.ResponseWriter, r *http.Request) {
	c.renderExportRules(w, r, http.StatusOK, page{})
}

func (c *Console) renderExportRules(w http.ResponseWriter, r *http.Request, status int, p page) {
	t := tenantOf(r)
	rules, err := c.store.Rules(r.Context(), t.Slug)
	if err != nil {
		c.internal(w, r, err)
		return
	}
	var errs map[string]int64
	if c.cfg.DataPlane != nil {
		errs = c.cfg.DataPlane.ExportErrors(t.Slug)
	}
	rows := make([]exportRow, len(rules))
	for i, rule := range rules {
		rows[i] = exportRow{Rule: rule, Errors: errs[rule.ID]}
	}
	p.Title, p.Nav, p.Data = "Export rules", "settings", rows
	c.render(w, r, status, "rules.html", p)
}

func (c *Console) exportRuleCreate(w http.ResponseWriter, r *http.Request) {
	in := tenants.ExportRuleInput{Filter: strings.TrimSpace(r.PostFormValue("filter")), Topic: strings.TrimSpace(r.PostFormValue("topic")),
		Destination: strings.TrimSpace(r.PostFormValue("destination")), Condition: strings.TrimSpace(r.PostFormValue("condition")),
		Projection: strings.TrimSpace(r.PostFormValue("projection"))}
	form := map[string]string{"filter": in.Filter, "topic": in.Topic, "destination": in.Destination, "condition": in.Condition, "projection": in.Projection}
	again := func(errs map[string]string) {
		c.renderExportRules(w, r, http.StatusBadRequest, page{Form: form, Errors: errs})
	}
	if err := in.Validate(); err != nil {
		again(formErrors(err))
		return
	}
	if err := c.compileRule(r.Context(), tenantOf(r).Slug, tenants.ExportRule{Filter: in.Filter, Condition: in.Condition, Projection: in.Projection}); err != nil {
		var re *dataout.RuleError
		if !errors.As(err, &re) {
			c.fail(w, r, err)
			return
		}
		again(map[string]string{re.Field: re.Err.Error()})
		return
	}
	if _, err := c.store.CreateExportRule(r.Context(), tenantOf(r).Slug, in); err != nil {
		if errors.Is(err, tenants.ErrInvalid) || errors.Is(err, tenants.ErrQuotaExceeded) || errors.Is(err, tenants.ErrNotFound) {
			again(formErrors(err))
			return
		}
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/export-rules", "saved")
}

func (c *Console) exportRuleDelete(w http.ResponseWriter, r *http.Request) {
	if err := c.store.DeleteExportRule(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "id")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+tenantOf(r).Slug+"/export-rules", "deleted")
}

// compileRule compiles a rule a form makes within the tenant's share of
// this process's CPU, as the API's POST …/rules does: a condition of
// nested list literals takes a tenth of a second or more to compile. Past
// the share (if it cannot wait a second for it) the error is throttled.
func (c *Console) compileRule(ctx context.Context, tenant string, rule tenants.ExportRule) error {
	budget := c.rules.Of(tenant)
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := budget.Wait(wctx); err != nil {
		return tenants.Throttled(time.Second, "the tenant's new rules have used their share of the CPU: try again shortly")
	}
	start := time.Now()
	_, err := dataout.CompileRule(rule)
	budget.Spend(time.Since(start))
	return err
}
