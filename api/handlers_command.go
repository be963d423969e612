package api

import (
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// commandInput is a command for a device. Timeout is in seconds.
type commandInput struct {
	Name     string   `json:"name"`
	Payload  string   `json:"payload"`
	Encoding string   `json:"encoding,omitempty"`
	Timeout  *float64 `json:"timeout,omitempty"`
	Queue    bool     `json:"queue"`
}

// commandOutput is a command that was answered or queued; the reply's
// payload is UTF-8 text or base64, as the stream's.
type commandOutput struct {
	ID          string   `json:"id"`
	Device      string   `json:"device"`
	Name        string   `json:"name"`
	Topic       string   `json:"topic"`
	Status      string   `json:"status"`
	Payload     *string  `json:"payload,omitempty"`
	Encoding    string   `json:"encoding,omitempty"`
	ContentType string   `json:"content_type,omitempty"`
	TookMS      *float64 `json:"took_ms,omitempty"`
}

// decodePayload reads a payload given as UTF-8 text or base64.
func decodePayload(payload, encoding string) ([]byte, error) {
	switch encoding {
	case "", "utf-8":
		if !utf8.ValidString(payload) {
			return nil, &tenants.FieldError{Field: "payload", Message: "must be UTF-8 text; send binary as base64"}
		}
		return []byte(payload), nil
	case "base64":
		b, err := base64.StdEncoding.DecodeString(payload)
		if err != nil {
			return nil, &tenants.FieldError{Field: "payload", Message: "is not valid base64"}
		}
		return b, nil
	}
	return nil, &tenants.FieldError{Field: "encoding", Message: "must be utf-8 or base64"}
}

var (
	errDeviceOffline  = errorf(http.StatusConflict, "device_offline", "the device is not connected; send the command with \"queue\": true to queue it for its persistent session")
	errCommandTimeout = errorf(http.StatusGatewayTimeout, "command_timeout", "the device did not reply within the command's timeout")
)

// handleCommand sends a command to a device through the data plane (the
// node it is connected to) and answers with its reply: 200 with the
// reply, 504 command_timeout, 409 device_offline, or 202 for a command
// asked to be queued.
func handleCommand(ds deviceStore, dp dataplane.DataPlane) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := liveDevice(r, ds, dp)
		if err != nil {
			return err
		}
		var in commandInput
		if err := decodeLimit(r, &in, maxMessageBody); err != nil {
			return err
		}
		payload, err := decodePayload(in.Payload, in.Encoding)
		if err != nil {
			return err
		}
		c := dataplane.Command{Name: in.Name, Payload: payload, Queue: in.Queue, Timeout: dataplane.DefaultCommandTimeout}
		if in.Timeout != nil {
			max := dataplane.MaxCommandTimeout.Seconds()
			if t := *in.Timeout; math.IsNaN(t) || t <= 0 || t > max {
				return &tenants.FieldError{Field: "timeout", Message: fmt.Sprintf("must be more than 0 and at most %g seconds", max)}
			}
			c.Timeout = time.Duration(*in.Timeout * float64(time.Second))
		}
		// The reply may take the whole timeout: the response must be
		// allowed to be written after it.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(c.Timeout + 30*time.Second))
		res, err := dp.Command(r.Context(), d.Tenant, d.Name, c)
		if err != nil {
			return err
		}
		out := commandOutput{ID: res.ID, Device: d.Name, Name: c.Name, Topic: res.Topic, Status: res.Outcome}
		switch res.Outcome {
		case dataplane.CommandOffline:
			return errDeviceOffline
		case dataplane.CommandTimeout:
			return errCommandTimeout
		case dataplane.CommandQueued:
			writeJSON(w, http.StatusAccepted, out)
			return nil
		case dataplane.CommandReplied:
			p, enc := string(res.Reply), "utf-8"
			if !utf8.Valid(res.Reply) {
				p, enc = base64.StdEncoding.EncodeToString(res.Reply), "base64"
			}
			ms := float64(res.Took.Microseconds()) / 1000
			out.Payload, out.Encoding, out.ContentType, out.TookMS = &p, enc, res.ReplyContentType, &ms
			writeJSON(w, http.StatusOK, out)
			return nil
		}
		return fmt.Errorf("command %s: unknown outcome %q", res.ID, res.Outcome)
	}
}
