package api

import (
	"context"
	"encoding/base64"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

var errNoDataPlane = errorf(http.StatusServiceUnavailable, "no_data_plane", "this process does not run the MQTT data plane")

type deviceStatus struct {
	Device      string                 `json:"device"`
	Online      bool                   `json:"online"`
	Connections []dataplane.Connection `json:"connections"`
	LastSeenAt  *time.Time             `json:"last_seen_at"`
	dataplane.QueueStats
}

// liveDevice finds the device of the path for a data-plane route.
func liveDevice(r *http.Request, ds interface {
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
}, dp dataplane.DataPlane) (tenants.Device, error) {
	if dp == nil {
		return tenants.Device{}, errNoDataPlane
	}
	return ds.Device(r.Context(), chi.URLParam(r, "tenant"), chi.URLParam(r, "device"))
}

func handleDeviceStatus(ds deviceStore, dp dataplane.DataPlane, now func() time.Time) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := liveDevice(r, ds, dp)
		if err != nil {
			return err
		}
		conns := dp.Connections(d.Tenant, d.Name)
		if conns == nil {
			conns = []dataplane.Connection{}
		}
		// The stored time is written about once a second; a device that is
		// online is being seen now.
		seen := d.LastSeenAt
		if len(conns) > 0 {
			t := now().UTC()
			seen = &t
		}
		writeJSON(w, http.StatusOK, deviceStatus{Device: d.Name, Online: len(conns) > 0, Connections: conns, LastSeenAt: seen,
			QueueStats: dp.Queue(d.Tenant, d.Name)})
		return nil
	}
}

type disconnected struct {
	Disconnected int `json:"disconnected"`
}

func handleDeviceDisconnect(ds deviceStore, dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := liveDevice(r, ds, dp)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, disconnected{Disconnected: dp.Disconnect(d.Tenant, d.Name)})
		return nil
	}
}

type messageInput struct {
	Topic    string `json:"topic"`
	Payload  string `json:"payload"`
	Encoding string `json:"encoding,omitempty"`
	QoS      byte   `json:"qos"`
	Retain   bool   `json:"retain"`
}

type published struct {
	Topic  string `json:"topic"`
	QoS    byte   `json:"qos"`
	Retain bool   `json:"retain"`
	Bytes  int    `json:"bytes"`
}

// maxMessageBody leaves room for the largest plan's packets in base64.
const maxMessageBody = 12 << 20

func handleMessagePublish(dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if dp == nil {
			return errNoDataPlane
		}
		var in messageInput
		if err := decodeLimit(r, &in, maxMessageBody); err != nil {
			return err
		}
		var payload []byte
		switch in.Encoding {
		case "", "utf-8":
			if !utf8.ValidString(in.Payload) {
				return &tenants.FieldError{Field: "payload", Message: "must be UTF-8 text; send binary as base64"}
			}
			payload = []byte(in.Payload)
		case "base64":
			b, err := base64.StdEncoding.DecodeString(in.Payload)
			if err != nil {
				return &tenants.FieldError{Field: "payload", Message: "is not valid base64"}
			}
			payload = b
		default:
			return &tenants.FieldError{Field: "encoding", Message: "must be utf-8 or base64"}
		}
		m := dataplane.Message{Topic: in.Topic, Payload: payload, QoS: in.QoS, Retain: in.Retain}
		if err := dp.Publish(r.Context(), chi.URLParam(r, "tenant"), m); err != nil {
			return err
		}
		writeJSON(w, http.StatusAccepted, published{Topic: m.Topic, QoS: m.QoS, Retain: m.Retain, Bytes: len(payload)})
		return nil
	}
}

// handleMetrics serves the Prometheus metrics.
func handleMetrics(h http.Handler) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		if h == nil {
			return errorf(http.StatusServiceUnavailable, "unavailable", "metrics are not served by this process")
		}
		h.ServeHTTP(w, r)
		return nil
	}
}
