package api

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// commandStore is what the command routes need of the store: the device,
// the audit log, and the queued commands the data plane recorded.
type commandStore interface {
	Device(ctx context.Context, tenant, name string) (tenants.Device, error)
	AuditCommand(ctx context.Context, tenant, device, name, id string) error
	Command(ctx context.Context, tenant, device, id string) (tenants.QueuedCommand, error)
	Now() time.Time
}

// commandInput is a command for a device. Timeout and TTL are in seconds.
type commandInput struct {
	Name     string   `json:"name"`
	Payload  string   `json:"payload"`
	Encoding string   `json:"encoding,omitempty"`
	Timeout  *float64 `json:"timeout,omitempty"`
	Queue    bool     `json:"queue"`
	TTL      *float64 `json:"ttl,omitempty"`
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
	// CreatedAt, ExpiresAt and RepliedAt are a queued command's.
	CreatedAt *time.Time `json:"created_at,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RepliedAt *time.Time `json:"replied_at,omitempty"`
}

// setReply puts a reply's payload in the answer: UTF-8 text, else base64.
func (o *commandOutput) setReply(reply []byte, contentType string) {
	p, enc := string(reply), "utf-8"
	if !utf8.Valid(reply) {
		p, enc = base64.StdEncoding.EncodeToString(reply), "base64"
	}
	o.Payload, o.Encoding, o.ContentType = &p, enc, contentType
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
// asked to be queued (recorded, to be read with handleCommandGet). Each
// command published is written to the tenant's audit log.
func handleCommand(cs commandStore, dp dataplane.DataPlane, log *slog.Logger) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		d, err := liveDevice(r, cs, dp)
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
		if in.TTL != nil {
			max := dataplane.MaxCommandTTL.Seconds()
			switch t := *in.TTL; {
			case !in.Queue:
				return &tenants.FieldError{Field: "ttl", Message: "is for queued commands (\"queue\": true); a command that waits for its reply expires at its timeout"}
			case math.IsNaN(t) || t < 1 || t > max:
				return &tenants.FieldError{Field: "ttl", Message: fmt.Sprintf("must be at least 1 and at most %g seconds", max)}
			}
			c.TTL = time.Duration(*in.TTL * float64(time.Second))
		}
		// The reply may take the whole timeout: the response must be
		// allowed to be written after it.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(c.Timeout + 30*time.Second))
		res, err := dp.Command(r.Context(), d.Tenant, d.Name, c)
		if err != nil {
			return err
		}
		if res.Outcome != dataplane.CommandOffline {
			// Published: whatever the device does, it was sent. The
			// audit outlives the request, which may have ended waiting.
			// One that fails is logged, and the answer is the command's:
			// an error would have the caller send it again.
			if err := cs.AuditCommand(context.WithoutCancel(r.Context()), d.Tenant, d.Name, c.Name, res.ID); err != nil {
				log.Error("audit a command sent", "tenant", d.Tenant, "device", d.Name, "command", c.Name, "id", res.ID, "err", err)
			}
		}
		out := commandOutput{ID: res.ID, Device: d.Name, Name: c.Name, Topic: res.Topic, Status: res.Outcome}
		switch res.Outcome {
		case dataplane.CommandOffline:
			return errDeviceOffline
		case dataplane.CommandTimeout:
			return errCommandTimeout
		case dataplane.CommandQueued:
			if !res.ExpiresAt.IsZero() {
				out.ExpiresAt = &res.ExpiresAt
			}
			writeJSON(w, http.StatusAccepted, out)
			return nil
		case dataplane.CommandReplied:
			ms := float64(res.Took.Microseconds()) / 1000
			out.setReply(res.Reply, res.ReplyContentType)
			out.TookMS = &ms
			writeJSON(w, http.StatusOK, out)
			return nil
		}
		return fmt.Errorf("command %s: unknown outcome %q", res.ID, res.Outcome)
	}
}

// handleCommandGet answers what became of a queued command: queued (no
// reply yet), replied (with the reply) or expired. A command kept for an
// hour after it expires; one that waited for its reply in its request is
// not kept (404).
func handleCommandGet(cs commandStore) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant, device := chi.URLParam(r, "tenant"), chi.URLParam(r, "device")
		if _, err := cs.Device(r.Context(), tenant, device); err != nil {
			return err
		}
		c, err := cs.Command(r.Context(), tenant, device, chi.URLParam(r, "id"))
		if err != nil {
			return err
		}
		out := commandOutput{ID: c.ID, Device: c.Device, Name: c.Name, Topic: c.Topic, Status: c.Status(cs.Now()),
			CreatedAt: &c.CreatedAt, ExpiresAt: &c.ExpiresAt, RepliedAt: c.RepliedAt}
		if c.RepliedAt != nil {
			out.setReply(c.Reply, c.ReplyContentType)
		}
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}
