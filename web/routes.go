package web

import (
	"net/http"

	"github.com/go-chi/chi/v5"
)

// routes is the console's page table. Every POST goes through the CSRF
// check; every tenant page through membership (404 otherwise); every write
// through the admin role.
func (c *Console) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(c.accessLog, secure)
	r.Handle("/static/*", static())
	r.Group(func(r chi.Router) {
		r.Use(c.csrf, c.validText)
		r.NotFound(c.notFound)
		r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
			c.errorPage(w, r, http.StatusMethodNotAllowed, "This page does not take a "+r.Method+".")
		})
		r.Get("/", c.home)
		r.Get("/signup", c.signupPage)
		r.Post("/signup", c.signup)
		r.Get("/login", c.loginPage)
		r.Post("/login", c.login)
		r.Post("/logout", c.logout)

		r.Group(func(r chi.Router) {
			r.Use(c.signedIn)
			r.Get("/tenants", c.tenantList)
			r.Post("/tenants", c.tenantCreate)
			r.Route("/tenants/{tenant}", func(r chi.Router) {
				r.Use(c.member)
				r.Get("/", c.overview)
				r.Get("/devices", c.deviceList)
				r.Get("/devices/{device}", c.deviceDetail)
				r.Get("/devices/{device}/created", c.deviceSecretPage("created"))
				r.Get("/devices/{device}/secret", c.deviceSecretPage("secret"))
				r.Get("/"+importPath, c.importPage)
				r.Get("/acl", c.aclPage)
				r.Get("/webhooks", c.webhooksPage)
				r.Post("/acl/check", c.aclCheck)
				r.Get("/live", c.livePage)
				r.Get("/live/stream", c.liveStream)
				r.Get("/usage", c.usagePage)
				r.Get("/events", c.eventsPage)
				r.Get("/api-keys", c.keyList)
				r.Get("/members", c.memberList)
				r.Get("/billing", c.billingPage)
				r.Get("/settings", c.settingsPage)
				r.Get("/cas", c.casPage)
				r.Get("/audit", c.auditPage)
				r.Get("/export-rules", c.exportRulesPage)
				// Anyone may leave; tenants.By decides who may remove whom.
				r.Post("/members/{account}/delete", c.memberRemove)
				r.Group(func(r chi.Router) {
					r.Use(c.admin)
					r.Post("/devices", c.deviceCreate)
					r.Post("/"+importPath, c.importUpload)
					r.Post("/devices/{device}/disconnect", c.deviceDisconnect)
					r.Post("/devices/{device}/secret", c.deviceRotate)
					r.Post("/devices/{device}/enabled", c.deviceEnable)
					r.Post("/devices/{device}/delete", c.deviceDelete)
					r.Post("/devices/{device}/keys", c.deviceKeyAdd)
					r.Post("/devices/{device}/keys/{id}/delete", c.deviceKeyDelete)
					r.Post("/devices/{device}/certificates", c.deviceCertAdd)
					r.Post("/devices/{device}/certificates/{id}/delete", c.deviceCertDelete)
					r.Post("/acl", c.aclCreate)
					r.Post("/acl/{id}/move", c.aclMove)
					r.Post("/acl/{id}/delete", c.aclDelete)
					r.Post("/webhooks", c.webhookCreate)
					r.Post("/webhooks/{id}/test", c.webhookTest)
					r.Post("/webhooks/{id}/delete", c.webhookDelete)
					r.Post("/webhooks/rules", c.webhookRuleCreate)
					r.Post("/webhooks/rules/{id}/delete", c.webhookRuleDelete)
					r.Post("/webhooks/{id}/replay", c.webhookDead(true))
					r.Post("/webhooks/{id}/purge", c.webhookDead(false))
					r.Post("/live/publish", c.livePublish)
					r.Post("/api-keys", c.keyCreate)
					r.Post("/api-keys/{id}/delete", c.keyDelete)
					r.Post("/members", c.memberAdd)
					r.Post("/billing/checkout", c.billingCheckout)
					r.Post("/billing/portal", c.billingPortal)
					r.Post("/billing/cap", c.billingCap)
					r.Post("/settings", c.settingsUpdate)
					r.Post("/cas", c.caCreate)
					r.Post("/cas/{id}/delete", c.caDelete)
					r.Post("/cas/{id}/provisioning", c.caProvisioning)
					r.Post("/export-rules", c.exportRuleCreate)
					r.Post("/export-rules/{id}/delete", c.exportRuleDelete)
				})
			})
		})

		r.Get("/admin/login", c.operatorLoginPage)
		r.Post("/admin/login", c.operatorLogin)
		r.Post("/admin/logout", c.operatorLogout)
		r.Group(func(r chi.Router) {
			r.Use(c.operatorOnly)
			r.Get("/admin", c.adminTenants)
			r.Get("/admin/tenants/{tenant}", c.adminTenant)
			r.Post("/admin/tenants/{tenant}", c.adminTenantUpdate)
		})
	})
	return r
}

// Router exposes the page table, for tests that walk it.
func (c *Console) Router() chi.Routes { return c.router }
