package api

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	kinds "github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/tenants"
)

type groupStore interface {
	Groups(ctx context.Context, tenant string, p tenants.Page) ([]tenants.Group, string, error)
	GroupDevices(ctx context.Context, tenant, group string) ([]string, error)
}

// deviceFilter reads a device list's filters: ?group=, ?search= and any
// number of ?metadata.<key>=<value> (each must hold).
func deviceFilter(r *http.Request) (tenants.DeviceFilter, error) {
	q := r.URL.Query()
	f := tenants.DeviceFilter{Group: q.Get("group"), Search: q.Get("search")}
	for k, vs := range q {
		key, ok := strings.CutPrefix(k, "metadata.")
		if !ok {
			continue
		}
		if key == "" || len(vs) != 1 {
			return f, &httpError{status: http.StatusBadRequest, code: "invalid", field: k, msg: "a metadata filter is metadata.<key>=<value>, once per key"}
		}
		if f.Metadata == nil {
			f.Metadata = map[string]string{}
		}
		f.Metadata[key] = vs[0]
	}
	return f, nil
}

func handleGroupList(gs groupStore) handler {
	return handleList(func(r *http.Request, p tenants.Page) ([]tenants.Group, string, error) {
		return gs.Groups(r.Context(), chi.URLParam(r, "tenant"), p)
	})
}

// groupPublished answers a publish to a group: how many of its devices
// were published to, and, when it stopped before the last (a quota ran
// out), the device it stopped at and why.
type groupPublished struct {
	Group     string        `json:"group"`
	Topic     string        `json:"topic"`
	QoS       byte          `json:"qos"`
	Retain    bool          `json:"retain"`
	Bytes     int           `json:"bytes"`
	Devices   int           `json:"devices"`
	Published int           `json:"published"`
	Stopped   *groupStopped `json:"stopped,omitempty"`
}

type groupStopped struct {
	Device string `json:"device"`
	Status int    `json:"status"`
	Code   string `json:"code"`
	Detail string `json:"detail,omitempty"`
}

// payloadOf decodes a message's payload as POST …/messages does.
func payloadOf(in messageInput) ([]byte, error) {
	switch in.Encoding {
	case "", "utf-8":
		if !utf8.ValidString(in.Payload) {
			return nil, &tenants.FieldError{Field: "payload", Message: "must be UTF-8 text; send binary as base64"}
		}
		return []byte(in.Payload), nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(in.Payload)
		if err != nil {
			return nil, &tenants.FieldError{Field: "payload", Message: "is not valid base64"}
		}
		return b, nil
	}
	return nil, &tenants.FieldError{Field: "encoding", Message: "must be utf-8 or base64"}
}

// handleGroupPublish publishes one message to each device of a group, on
// the topic template with ${device} replaced by the device's name, in name
// order, each as POST …/messages would (rules, quotas). It stops at the
// first refusal: nothing published is a problem response, part of the
// group a 202 that says where it stopped.
func handleGroupPublish(gs groupStore, dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if dp == nil {
			return errNoDataPlane
		}
		var in messageInput
		if err := decodeLimit(r, &in, maxMessageBody); err != nil {
			return err
		}
		if !strings.Contains(in.Topic, tenants.DevicePlaceholder) {
			return &tenants.FieldError{Field: "topic", Message: "must contain ${device}: each device of the group gets the message on its own topic"}
		}
		if strings.Contains(strings.ReplaceAll(in.Topic, tenants.DevicePlaceholder, ""), "${") {
			return &tenants.FieldError{Field: "topic", Message: "the only placeholder is ${device}"}
		}
		payload, err := payloadOf(in)
		if err != nil {
			return err
		}
		tenant, group := chi.URLParam(r, "tenant"), chi.URLParam(r, "group")
		if err := tenants.ValidateTopic(strings.ReplaceAll(in.Topic, tenants.DevicePlaceholder, "d")); err != nil {
			return &tenants.FieldError{Field: "topic", Message: err.Error()}
		}
		devices, err := gs.GroupDevices(r.Context(), tenant, group)
		if err != nil {
			return err
		}
		if len(devices) == 0 {
			return errorf(http.StatusNotFound, "not_found", "group "+group+" has no devices")
		}
		out := groupPublished{Group: group, Topic: in.Topic, QoS: in.QoS, Retain: in.Retain, Bytes: len(payload), Devices: len(devices)}
		for _, d := range devices {
			m := dataplane.Message{Topic: strings.ReplaceAll(in.Topic, tenants.DevicePlaceholder, d), Payload: payload, QoS: in.QoS, Retain: in.Retain}
			if err := dp.Publish(r.Context(), tenant, m); err != nil {
				if out.Published == 0 {
					return err
				}
				k := kinds.Of(err)
				out.Stopped = &groupStopped{Device: d, Status: k.Status, Code: k.Code, Detail: k.Detail}
				if k.Internal() {
					out.Stopped.Detail = "internal error"
				}
				break
			}
			out.Published++
		}
		writeJSON(w, http.StatusAccepted, out)
		return nil
	}
}
