package api

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// handleRetainedList lists the tenant's retained messages matching
// ?filter= (# if none), a page at a time, from its broker (the tenant's
// home node on a fleet). Reserved topics are never listed.
func handleRetainedList(dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if dp == nil {
			return errNoDataPlane
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
		msgs, next, err := dp.Retained(r.Context(), chi.URLParam(r, "tenant"), filter, offset, p.Limit)
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

// retainedMessage is one retained message, whole.
type retainedMessage struct {
	Topic    string `json:"topic"`
	Payload  string `json:"payload"`
	Encoding string `json:"encoding"`
	QoS      byte   `json:"qos"`
	Size     int    `json:"size"`
}

// topicParam is the ?topic= a route about one topic needs.
func topicParam(r *http.Request) (string, error) {
	t := r.URL.Query().Get("topic")
	if t == "" {
		return "", &tenants.FieldError{Field: "topic", Message: "is required"}
	}
	return t, nil
}

// handleRetainedGet answers the message retained on ?topic=, its payload
// whole (UTF-8 text or base64).
func handleRetainedGet(dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if dp == nil {
			return errNoDataPlane
		}
		topic, err := topicParam(r)
		if err != nil {
			return err
		}
		m, err := dp.RetainedMessage(r.Context(), chi.URLParam(r, "tenant"), topic)
		if err != nil {
			return err
		}
		out := retainedMessage{Topic: m.Topic, Payload: string(m.Payload), Encoding: "utf-8", QoS: m.QoS, Size: len(m.Payload)}
		if !utf8.Valid(m.Payload) {
			out.Payload, out.Encoding = base64.StdEncoding.EncodeToString(m.Payload), "base64"
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}

// handleRetainedDelete clears the message retained on ?topic= (one topic:
// no wildcards).
func handleRetainedDelete(dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if dp == nil {
			return errNoDataPlane
		}
		topic, err := topicParam(r)
		if err != nil {
			return err
		}
		if err := dp.DeleteRetained(r.Context(), chi.URLParam(r, "tenant"), topic); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
