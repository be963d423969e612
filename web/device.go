package web

import (
	"crypto/hmac"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

type deviceRow struct {
	tenants.Device
	Online bool
}

type devicesData struct {
	Search  string
	Group   string
	Meta    string // a key=value metadata filter
	Devices []deviceRow
	Next    string
	// More is the query string of the next page's link.
	More template.URL
}

const devicesPerPage = 25

func (c *Console) deviceList(w http.ResponseWriter, r *http.Request) {
	c.renderDevices(w, r, http.StatusOK, page{})
}

func (c *Console) renderDevices(w http.ResponseWriter, r *http.Request, status int, p page) {
	t := tenantOf(r)
	q := r.URL.Query()
	search := strings.TrimSpace(q.Get("q"))
	f := tenants.DeviceFilter{Search: search, Group: strings.TrimSpace(q.Get("group"))}
	meta := strings.TrimSpace(q.Get("meta"))
	if k, v, ok := strings.Cut(meta, "="); ok && strings.TrimSpace(k) != "" {
		f.Metadata = map[string]string{strings.TrimSpace(k): strings.TrimSpace(v)}
	}
	d := devicesData{Search: search, Group: f.Group, Meta: meta}
	ds, next, err := c.store.FilterDevices(r.Context(), t.Slug, f, tenants.Page{Limit: devicesPerPage, Cursor: q.Get("after")})
	if errors.Is(err, tenants.ErrInvalid) {
		// A malformed group lists nothing, and says why.
		p.Errors = formErrors(err)
		ds, next, err = nil, "", nil
	}
	if err != nil {
		c.internal(w, r, err)
		return
	}
	d.Next = next
	d.More = template.URL(url.Values{"q": {search}, "group": {f.Group}, "meta": {meta}, "after": {next}}.Encode())
	for _, dev := range ds {
		row := deviceRow{Device: dev}
		if c.cfg.DataPlane != nil {
			row.Online = len(c.cfg.DataPlane.Connections(t.Slug, dev.Name)) > 0
		}
		d.Devices = append(d.Devices, row)
	}
	p.Title, p.Nav, p.Data = "Devices", "devices", d
	c.render(w, r, status, "devices.html", p)
}

// parseGroups reads group names separated by commas or spaces.
func parseGroups(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t' })
}

// parseMetadata reads key=value lines.
func parseMetadata(s string) (map[string]string, error) {
	md := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, &tenants.FieldError{Field: "metadata", Message: fmt.Sprintf("%q is not key=value", line)}
		}
		md[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return md, nil
}

// credentials is what a device needs to connect, shown once with its
// secret.
type credentials struct {
	Device    tenants.Device
	Secret    string
	Endpoints []Endpoint
	Snippets  []snippet
	// Gone: the secret was shown already (the page was opened again).
	Gone bool
}

type snippet struct {
	ID, Title, Text string
}

func (c *Console) credentials(t *tenants.Tenant, d tenants.Device, secret string) credentials {
	host, port := "localhost", "1883"
	if u, err := url.Parse(c.cfg.Endpoints[0].URL); err == nil && u.Hostname() != "" {
		host, port = u.Hostname(), u.Port()
	}
	user, topic := t.Slug+"/"+d.Name, "telemetry/"+d.Name
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	return credentials{Device: d, Secret: secret, Endpoints: c.cfg.Endpoints, Snippets: []snippet{
		{"pub", "Publish (mosquitto_pub)", fmt.Sprintf("mosquitto_pub -h %s -p %s -V mqttv5 -i %s -u %s -P %s -t %s -m 'hello from %s'",
			host, port, q(d.Name), q(user), q(secret), q(topic), d.Name)},
		{"sub", "Receive commands (mosquitto_sub; one connection per client id: a second one replaces the first)", fmt.Sprintf("mosquitto_sub -h %s -p %s -V mqttv5 -i %s -u %s -P %s -t %s -v",
			host, port, q(d.Name), q(user), q(secret), q("commands/"+d.Name))},
		{"go", "Go (paho.mqtt.golang)", fmt.Sprintf(`opts := mqtt.NewClientOptions().AddBroker("tcp://%s:%s").
	SetClientID(%q).SetUsername(%q).SetPassword(%q)
c := mqtt.NewClient(opts)
if t := c.Connect(); t.Wait() && t.Error() != nil {
	log.Fatal(t.Error())
}
c.Publish(%q, 1, false, "hello").Wait()`, host, port, d.Name, user, secret, topic)},
		{"python", "Python (paho-mqtt 2)", fmt.Sprintf(`import paho.mqtt.client as mqtt

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=%q, protocol=mqtt.MQTTv5)
c.username_pw_set(%q, %q)
c.connect(%q, %s)
c.loop_start()
c.publish(%q, "hello", qos=1).wait_for_publish()`, d.Name, user, secret, host, port, topic)},
	}}
}

func (c *Console) deviceCreate(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	name := strings.TrimSpace(r.PostFormValue("name"))
	form := map[string]string{"name": name, "metadata": r.PostFormValue("metadata"), "groups": r.PostFormValue("groups")}
	md, err := parseMetadata(r.PostFormValue("metadata"))
	var d tenants.Device
	var secret string
	if err == nil {
		d, secret, err = c.store.CreateDevice(r.Context(), t.Slug, tenants.DeviceInput{Name: name, Metadata: md, Groups: parseGroups(r.PostFormValue("groups"))})
	}
	if err != nil {
		if errors.Is(err, tenants.ErrConflict) {
			err = &tenants.FieldError{Field: "name", Message: "a device with this name exists"}
		}
		var qe *tenants.QuotaError
		if errors.As(err, &qe) {
			err = &tenants.FieldError{Field: "name", Message: fmt.Sprintf("the tenant has its %d devices (max_devices); delete one or move to a bigger plan", qe.Limit)}
		}
		if !errors.Is(err, tenants.ErrInvalid) {
			c.fail(w, r, err)
			return
		}
		c.renderDevices(w, r, http.StatusBadRequest, page{Form: form, Errors: formErrors(err)})
		return
	}
	c.handOverSecret(w, r, t, d, secret, "created")
}

// secretCookie carries a new device secret from the POST that made it to
// the one page that shows it (redirect after POST: a refresh does not
// create or rotate again). It lives a minute, is sent only to that page,
// and is bound to the visitor's account and the device by an HMAC; the page
// clears it as it shows the secret, so it is shown once.
const secretCookie = "roost_secret"

// secretTTL is how long a new secret waits for its page.
const secretTTL = time.Minute

func (c *Console) handOverSecret(w http.ResponseWriter, r *http.Request, t *tenants.Tenant, d tenants.Device, secret, what string) {
	to := "/tenants/" + url.PathEscape(t.Slug) + "/devices/" + url.PathEscape(d.Name) + "/" + what
	http.SetCookie(w, &http.Cookie{Name: secretCookie, Value: secret + "." + c.mac("secret", accountOf(r).ID, t.Slug, d.Name, what, secret),
		Path: to, HttpOnly: true, Secure: c.cfg.SecureCookies, SameSite: http.SameSiteStrictMode, MaxAge: int(secretTTL / time.Second)})
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// deviceSecretPage shows a device's new secret, once (see secretCookie);
// "created" or "secret" (rotated) says how it came.
func (c *Console) deviceSecretPage(what string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t := tenantOf(r)
		d, err := c.store.Device(r.Context(), t.Slug, chi.URLParam(r, "device"))
		if err != nil {
			c.fail(w, r, err)
			return
		}
		title := "Device " + d.Name + " created"
		if what == "secret" {
			title = "New secret for " + d.Name
		}
		secret := ""
		if ck, err := r.Cookie(secretCookie); err == nil {
			if s, sig, ok := strings.Cut(ck.Value, "."); ok && hmac.Equal([]byte(sig), []byte(c.mac("secret", accountOf(r).ID, t.Slug, d.Name, what, s))) {
				secret = s
			}
			http.SetCookie(w, &http.Cookie{Name: secretCookie, Path: r.URL.Path, HttpOnly: true, Secure: c.cfg.SecureCookies, MaxAge: -1})
		}
		if secret == "" {
			c.render(w, r, http.StatusOK, "credentials.html", page{Title: title, Nav: "devices", Data: credentials{Device: d, Gone: true}})
			return
		}
		c.render(w, r, http.StatusOK, "credentials.html", page{Title: title, Nav: "devices", Data: c.credentials(t, d, secret)})
	}
}

type deviceData struct {
	Device       tenants.Device
	Connections  []dataplane.Connection
	Queue        dataplane.QueueStats
	Keys         []tenants.DeviceKey
	Certificates []tenants.DeviceCertificate
	Metadata     [][2]string
	// Sessions are the device's sessions in the data plane
	// (subscriptions and queues).
	Sessions []dataplane.ClientSession
}

func (c *Console) deviceDetail(w http.ResponseWriter, r *http.Request) {
	c.renderDevice(w, r, http.StatusOK, page{})
}

func (c *Console) renderDevice(w http.ResponseWriter, r *http.Request, status int, p page) {
	t := tenantOf(r)
	ctx := r.Context()
	d, err := c.store.Device(ctx, t.Slug, chi.URLParam(r, "device"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	data := deviceData{Device: d}
	if c.cfg.DataPlane != nil {
		data.Connections = c.cfg.DataPlane.Connections(t.Slug, d.Name)
		data.Queue = c.cfg.DataPlane.Queue(t.Slug, d.Name)
		if s, err := c.cfg.DataPlane.Session(ctx, t.Slug, d.Name); err == nil {
			data.Sessions = s.Sessions
		}
	}
	if data.Keys, err = c.store.DeviceKeys(ctx, t.Slug, d.Name); err != nil {
		c.internal(w, r, err)
		return
	}
	if data.Certificates, err = c.store.DeviceCertificates(ctx, t.Slug, d.Name); err != nil {
		c.internal(w, r, err)
		return
	}
	for k, v := range d.Metadata {
		data.Metadata = append(data.Metadata, [2]string{k, v})
	}
	sort.Slice(data.Metadata, func(i, j int) bool { return data.Metadata[i][0] < data.Metadata[j][0] })
	// The groups and metadata form starts from what the device has, or
	// from what was sent when it comes back with an error.
	if p.Form == nil {
		p.Form = map[string]string{}
	}
	if _, sent := p.Form["groups"]; !sent {
		p.Form["groups"] = strings.Join(d.Groups, ", ")
		var lines []string
		for _, kv := range data.Metadata {
			lines = append(lines, kv[0]+"="+kv[1])
		}
		p.Form["metadata"] = strings.Join(lines, "\n")
	}
	p.Title, p.Nav, p.Data = "Device "+d.Name, "devices", data
	c.render(w, r, status, "device.html", p)
}

func devicePath(r *http.Request) string {
	return "/tenants/" + tenantOf(r).Slug + "/devices/" + url.PathEscape(chi.URLParam(r, "device"))
}

func (c *Console) deviceDisconnect(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	d, err := c.store.Device(r.Context(), t.Slug, chi.URLParam(r, "device"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if c.cfg.DataPlane != nil {
		c.cfg.DataPlane.Disconnect(t.Slug, d.Name)
	}
	redirect(w, r, devicePath(r), "disconnected")
}

func (c *Console) deviceRotate(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	d, secret, err := c.store.RotateDeviceSecret(r.Context(), t.Slug, chi.URLParam(r, "device"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.handOverSecret(w, r, t, d, secret, "secret")
}

func (c *Console) deviceEnable(w http.ResponseWriter, r *http.Request) {
	enabled := r.PostFormValue("enabled") == "true"
	if _, err := c.store.UpdateDevice(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "device"), tenants.DeviceUpdate{Enabled: &enabled}); err != nil {
		c.fail(w, r, err)
		return
	}
	done := "disabled"
	if enabled {
		done = "enabled"
	}
	redirect(w, r, devicePath(r), done)
}

func (c *Console) deviceDelete(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	if err := c.store.DeleteDevice(r.Context(), t.Slug, chi.URLParam(r, "device")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, "/tenants/"+t.Slug+"/devices", "deleted")
}

// deviceLabels replaces the device's groups and metadata with the form's:
// groups separated by commas or spaces, metadata as key=value lines (both
// empty for none). An error comes back on the page next to its field.
func (c *Console) deviceLabels(w http.ResponseWriter, r *http.Request) {
	groups := parseGroups(r.PostFormValue("groups"))
	md, err := parseMetadata(r.PostFormValue("metadata"))
	if err == nil {
		_, err = c.store.UpdateDevice(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "device"), tenants.DeviceUpdate{Groups: &groups, Metadata: &md})
	}
	if err == nil {
		redirect(w, r, devicePath(r), "saved")
		return
	}
	if !errors.Is(err, tenants.ErrInvalid) {
		c.fail(w, r, err)
		return
	}
	errs := formErrors(err)
	for f, msg := range errs {
		if f != "groups" && f != "metadata" {
			delete(errs, f)
			field := "metadata"
			if strings.HasPrefix(f, "group") {
				field = "groups"
			}
			errs[field] = f + ": " + msg
		}
	}
	c.renderDevice(w, r, http.StatusBadRequest, page{Errors: errs, Form: map[string]string{"groups": r.PostFormValue("groups"), "metadata": r.PostFormValue("metadata")}})
}

// deviceKeyAdd registers a public key (PEM) the device signs its tokens with.
func (c *Console) deviceKeyAdd(w http.ResponseWriter, r *http.Request) {
	_, err := c.store.CreateDeviceKey(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "device"), tenants.DeviceKeyInput{PublicKey: r.PostFormValue("public_key")})
	c.afterCredentialForm(w, r, err, "public_key")
}

// deviceCertAdd pins a certificate (PEM) or its fingerprint to the device.
func (c *Console) deviceCertAdd(w http.ResponseWriter, r *http.Request) {
	in := tenants.DeviceCertificateInput{Certificate: strings.TrimSpace(r.PostFormValue("certificate"))}
	if !strings.HasPrefix(in.Certificate, "-----BEGIN") {
		in.Certificate, in.Fingerprint = "", in.Certificate
	}
	_, err := c.store.CreateDeviceCertificate(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "device"), in)
	c.afterCredentialForm(w, r, err, "certificate")
}

// afterCredentialForm answers a key or certificate form: back to the device,
// or its page again with the error next to the field.
func (c *Console) afterCredentialForm(w http.ResponseWriter, r *http.Request, err error, field string) {
	if err == nil {
		redirect(w, r, devicePath(r), "saved")
		return
	}
	if !errors.Is(err, tenants.ErrInvalid) && !errors.Is(err, tenants.ErrConflict) && !errors.Is(err, tenants.ErrQuotaExceeded) {
		c.fail(w, r, err)
		return
	}
	var fe *tenants.FieldError
	msg := err.Error()
	if errors.As(err, &fe) {
		msg = fe.Message
	}
	c.renderDevice(w, r, http.StatusBadRequest, page{Errors: map[string]string{field: msg}, Form: map[string]string{field: r.PostFormValue(field)}})
}

func (c *Console) deviceKeyDelete(w http.ResponseWriter, r *http.Request) {
	if err := c.store.DeleteDeviceKey(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "device"), chi.URLParam(r, "id")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, devicePath(r), "deleted")
}

func (c *Console) deviceCertDelete(w http.ResponseWriter, r *http.Request) {
	if err := c.store.DeleteDeviceCertificate(r.Context(), tenantOf(r).Slug, chi.URLParam(r, "device"), chi.URLParam(r, "id")); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, r, devicePath(r), "deleted")
}
