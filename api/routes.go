package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

// routes is the whole API surface. openapi.yaml describes exactly these
// routes; TestRoutesMatchSpec checks both directions.
func (s *Server) routes() chi.Router {
	st := s.store
	r := chi.NewRouter()
	r.Use(s.observe, withOrigin)
	r.NotFound(s.serve(func(w http.ResponseWriter, r *http.Request) error {
		return errorf(http.StatusNotFound, "not_found", "no such route")
	}))
	r.MethodNotAllowed(s.serve(func(w http.ResponseWriter, r *http.Request) error {
		return errorf(http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed here")
	}))

	r.Get("/healthz", s.serve(handleHealth()))
	r.Get("/readyz", s.serve(handleReady(s.ready)))
	r.Get("/openapi.yaml", handleSpec())
	r.With(s.onlyOperator).Get("/metrics", s.serve(handleMetrics(s.metrics)))

	r.Route("/v1", func(r chi.Router) {
		r.Post("/signup", s.serve(handleSignup(s.auth)))
		r.Post("/login", s.serve(handleLogin(s.auth)))
		// The second step of a login for an account with two-factor on.
		r.Post("/login/mfa", s.serve(handleLoginMFA(s.auth)))
		r.Post("/password/forgot", s.serve(handlePasswordForgot(s.auth)))
		r.Post("/password/reset", s.serve(handlePasswordReset(s.auth)))
		r.Post("/verify", s.serve(handleVerify(s.auth)))
		// Stripe signs its events; no bearer token.
		r.Post("/billing/webhook", s.serve(handleBillingWebhook(s.billing)))

		r.Group(func(r chi.Router) {
			r.Use(s.authenticate)
			r.Post("/logout", s.serve(handleLogout(s.auth)))
			r.Get("/me", s.serve(handleMe(s.auth)))
			r.Get("/me/mfa", s.serve(handleMFAGet(s.auth)))
			r.Post("/invites/accept", s.serve(handleInviteAccept(s.auth)))
			r.Post("/me/mfa/setup", s.serve(handleMFASetup(s.auth)))
			r.Post("/me/mfa/enable", s.serve(handleMFAEnable(s.auth)))
			r.Post("/me/mfa/disable", s.serve(handleMFADisable(s.auth)))
			r.Post("/me/mfa/recovery-codes", s.serve(handleMFARecoveryCodes(s.auth)))
			r.Post("/password", s.serve(handlePasswordChange(s.auth)))
			r.Post("/verify/resend", s.serve(handleVerifyResend(s.auth)))
			r.Get("/sessions", s.serve(handleSessionList(s.auth)))
			r.Delete("/sessions", s.serve(handleSessionEndOthers(s.auth)))
			r.Delete("/sessions/{id}", s.serve(handleSessionEnd(s.auth)))
			r.Get("/tenants", s.serve(handleTenantList(st)))
			r.Post("/tenants", s.serve(handleTenantCreate(s.auth)))

			r.Route("/tenants/{tenant}", func(r chi.Router) {
				r.Use(s.tenantAccess)
				viewer, admin, owner := s.need(tenants.RoleViewer), s.need(tenants.RoleAdmin), s.need(tenants.RoleOwner)

				r.With(viewer).Get("/", s.serve(handleTenantGet(st)))
				// Admins set the deny action; renaming and the queue
				// policy are owners' (TenantUpdate.MayApply).
				r.With(admin).Patch("/", s.serve(handleTenantUpdate(st)))
				r.With(owner).Delete("/", s.serve(handleTenantDelete(st)))

				r.With(viewer).Get("/devices", s.serve(handleDeviceList(st)))
				r.With(admin).Post("/devices", s.serve(handleDeviceCreate(st)))
				r.With(viewer).Get("/devices/{device}", s.serve(handleDeviceGet(st)))
				r.With(admin).Patch("/devices/{device}", s.serve(handleDeviceUpdate(st)))
				r.With(admin).Delete("/devices/{device}", s.serve(handleDeviceDelete(st)))
				r.With(admin).Post("/devices/{device}/secret", s.serve(handleDeviceRotate(st)))
				r.With(viewer).Get("/devices/{device}/status", s.serve(handleDeviceStatus(st, s.dataPlane, s.now)))
				r.With(admin).Post("/devices/{device}/disconnect", s.serve(handleDeviceDisconnect(st, s.dataPlane)))
				r.With(viewer).Get("/devices/{device}/keys", s.serve(handleDeviceKeyList(st)))
				r.With(admin).Post("/devices/{device}/keys", s.serve(handleDeviceKeyCreate(st)))
				r.With(admin).Delete("/devices/{device}/keys/{id}", s.serve(handleDeviceKeyDelete(st)))
				r.With(viewer).Get("/devices/{device}/certificates", s.serve(handleDeviceCertificateList(st)))
				r.With(admin).Post("/devices/{device}/certificates", s.serve(handleDeviceCertificateCreate(st)))
				r.With(admin).Delete("/devices/{device}/certificates/{id}", s.serve(handleDeviceCertificateDelete(st)))
				r.With(viewer).Get("/devices/{device}/shadow", s.serve(handleShadowGet(st)))
				r.With(admin).Patch("/devices/{device}/shadow", s.serve(handleShadowUpdate(st)))
				r.With(viewer).Get("/cas", s.serve(handleCAList(st)))
				r.With(admin).Post("/cas", s.serve(handleCACreate(st)))
				r.With(admin).Delete("/cas/{id}", s.serve(handleCADelete(st)))
				r.With(admin).Post("/messages", s.serve(handleMessagePublish(s.dataPlane)))
				r.With(viewer).Get("/retained", s.serve(handleRetainedList(s.dataPlane)))
				r.With(viewer).Get("/retained/message", s.serve(handleRetainedGet(s.dataPlane)))
				r.With(admin).Delete("/retained", s.serve(handleRetainedDelete(s.dataPlane)))
				// A command acts on a device, as a publish does: admins only.
				r.With(admin).Post("/devices/{device}/commands", s.serve(handleCommand(st, s.dataPlane, s.log)))
				r.With(viewer).Get("/devices/{device}/commands/{id}", s.serve(handleCommandGet(st)))
				r.With(viewer).Get("/devices/{device}/session", s.serve(handleDeviceSession(st, s.dataPlane)))
				r.With(admin).Delete("/devices/{device}/session/queue", s.serve(handleQueuePurge(st, s.dataPlane)))

				r.With(viewer).Get("/acl/rules", s.serve(handleACLList(st)))
				r.With(admin).Post("/acl/rules", s.serve(handleACLCreate(st)))
				r.With(admin).Delete("/acl/rules/{id}", s.serve(handleACLDelete(st)))
				r.With(viewer).Post("/acl/check", s.serve(handleACLCheck(st)))

				// Issue 22: device groups (a group exists while a device
				// is in it) and bulk import. "devices:import" is one path
				// segment, never a {device}: device names have no ':'.
				r.With(viewer).Get("/groups", s.serve(handleGroupList(st)))
				r.With(admin).Post("/groups/{group}/messages", s.serve(handleGroupPublish(st, s.dataPlane)))
				r.With(admin).Post("/devices:import", s.serve(handleDeviceImport(st)))
				// Marks a CA for just-in-time provisioning, or unmarks it.
				r.With(admin).Patch("/cas/{id}", s.serve(handleCAUpdate(st)))

				r.With(viewer).Get("/api-keys", s.serve(handleAPIKeyList(st)))
				r.With(admin).Post("/api-keys", s.serve(handleAPIKeyCreate(st)))
				r.With(admin).Delete("/api-keys/{id}", s.serve(handleAPIKeyDelete(st)))

				r.With(viewer).Get("/members", s.serve(handleMemberList(st)))
				r.With(viewer).Get("/mfa", s.serve(handleTenantMFAGet(s.auth)))
				r.With(owner).Put("/mfa", s.serve(handleTenantMFASet(s.auth)))
				r.With(admin, s.verifiedEmail).Post("/members", s.serve(handleMemberAdd(s.auth)))
				r.With(viewer).Get("/invites", s.serve(handleInviteList(s.auth)))
				r.With(admin, s.verifiedEmail).Post("/invites", s.serve(handleInviteCreate(st, s.auth)))
				r.With(admin).Delete("/invites/{id}", s.serve(handleInviteRevoke(s.auth)))
				// Anyone may leave; tenants.By decides the rest.
				r.With(viewer).Delete("/members/{account}", s.serve(handleMemberRemove(s.auth)))

				r.With(viewer).Get("/rules", s.serve(handleExportList(st, s.dataPlane)))
				r.With(admin).Post("/rules", s.serve(handleExportCreate(st, s.ruleTests)))
				r.With(admin).Delete("/rules/{id}", s.serve(handleExportDelete(st)))
				// A dry run: it sends nothing, as acl/check changes nothing.
				r.With(viewer).Post("/rules/test", s.serve(handleRuleTest(st, s.now, s.ruleTests)))

				r.With(viewer).Get("/destinations", s.serve(handleDestinationList(st, s.operatorKafka)))
				r.With(admin).Post("/destinations", s.serve(handleDestinationCreate(st, s.sealer, s.webhooks.Guard())))
				r.With(viewer).Get("/destinations/{id}", s.serve(handleDestinationGet(st, s.deliveries(), s.operatorKafka)))
				r.With(admin).Patch("/destinations/{id}", s.serve(handleDestinationUpdate(st, s.sealer, s.webhooks.Guard())))
				r.With(admin).Delete("/destinations/{id}", s.serve(handleDestinationDelete(st)))
				r.With(admin).Post("/destinations/{id}/secret", s.serve(handleDestinationRotate(st, s.sealer)))
				// Sends a request out of the hub: admins only.
				r.With(admin).Post("/destinations/{id}/test", s.serve(handleDestinationTest(st, s.sealer, s.webhooks, s.sendTests, s.now, s.log)))
				r.With(viewer).Get("/destinations/{id}/dead-letters", s.serve(handleDeadLetterList(st, s.deliveries())))
				r.With(admin).Post("/destinations/{id}/dead-letters/replay", s.serve(handleDeadLetterReplay(st, s.deliveries())))
				r.With(admin).Delete("/destinations/{id}/dead-letters", s.serve(handleDeadLetterPurge(st, s.deliveries())))

				r.With(viewer).Get("/quotas", s.serve(handleQuotas(st)))
				r.With(viewer).Get("/usage", s.serve(handleUsage(st, s.now)))
				r.With(viewer).Get("/audit", s.serve(handleAuditFiltered(st)))
				r.With(viewer).Get("/events", s.serve(handleEvents(st)))
				r.With(viewer).Get("/stream", s.serve(s.handleStream(st)))

				r.With(viewer).Get("/billing", s.serve(handleBillingGet(s.billing)))
				r.With(admin).Patch("/billing", s.serve(handleBillingUpdate(s.billing)))
				r.With(admin, s.verifiedEmail).Post("/billing/checkout", s.serve(handleBillingCheckout(s.billing)))
				r.With(admin).Post("/billing/portal", s.serve(handleBillingPortal(s.billing)))
			})
		})

		r.Route("/admin", func(r chi.Router) {
			r.Use(s.onlyOperator)
			r.Get("/tenants", s.serve(handleAdminTenantList(st, s.now)))
			r.Get("/tenants/{tenant}", s.serve(handleAdminTenantGet(st)))
			r.Patch("/tenants/{tenant}", s.serve(handleAdminTenantUpdate(st)))
			r.Delete("/tenants/{tenant}", s.serve(handleAdminTenantDelete(st)))
			r.Post("/tenants/{tenant}/impersonate", s.serve(handleAdminImpersonate(s.auth)))
			r.Get("/stats", s.serve(handleAdminStats(st, s.dataPlane, s.now)))
		})
	})
	return r
}
