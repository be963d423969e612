package api

import (
	"errors"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/tenants"
)

// handleInviteList lists the tenant's pending invites (admins).
func handleInviteList(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		invs, err := front.Invites(r.Context(), chi.URLParam(r, "tenant"))
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, list[tenants.Invite]{Items: invs})
		return nil
	}
}

// handleInviteCreate invites an email with a role and mails the link; the
// link is not in the answer, so that only the mailbox's owner holds it.
func handleInviteCreate(st *tenants.Store, front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		var in tenants.MemberInput
		if err := decode(r, &in); err != nil {
			return err
		}
		slug := chi.URLParam(r, "tenant")
		t, err := st.Tenant(r.Context(), slug)
		if err != nil {
			return err
		}
		p := principalFrom(r.Context())
		inv, err := front.Invite(r.Context(), slug, t.Name, p.actor(), p.by(roleFrom(r.Context())), in)
		if err != nil {
			return err
		}
		w.Header().Set("Location", "/v1/tenants/"+slug+"/invites")
		writeJSON(w, http.StatusCreated, inv)
		return nil
	}
}

func handleInviteRevoke(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p := principalFrom(r.Context())
		if err := front.RevokeInvite(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "id"), p.by(roleFrom(r.Context()))); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

type inviteToken struct {
	Token string `json:"token"`
}

// handleInviteAccept makes the caller a member with the invite's role: the
// invite must be for the caller's email, verified.
func handleInviteAccept(front *auth.Service) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p := principalFrom(r.Context())
		if p.account == nil {
			return errorf(http.StatusForbidden, "forbidden", "an invite is accepted by an account; call this with a session token")
		}
		var in inviteToken
		if err := decode(r, &in); err != nil {
			return err
		}
		inv, err := front.AcceptInvite(r.Context(), *p.account, in.Token, clientIP(r))
		if errors.Is(err, auth.ErrEmailUnverified) {
			return errorf(http.StatusForbidden, "email_unverified", "verify your email first: open the link mailed to you, or ask for a new one with POST /v1/verify/resend")
		}
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, inv)
		return nil
	}
}
