package api_test

import (
	"encoding/csv"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// importReq posts a body of contentType to devices:import.
func (e *env) importReq(token, query, contentType, accept, body string) response {
	e.t.Helper()
	req, err := http.NewRequest("POST", e.url+"/v1/tenants/acme/devices:import"+query, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", contentType)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	return e.send(req)
}

// TestDeviceImportCSVErrorRows: in the CSV answer an error line names the
// device its row gave, and the username of the device already registered
// under that name; a created line has its username and secret.
func TestDeviceImportCSVErrorRows(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.importReq(u.token, "", "text/csv", "", "name\nsensor-1\n"), 200, "import sensor-1")

	r := e.importReq(u.token, "?mode=rows", "text/csv", "text/csv", "name\nsensor-1\nBad Name\nsensor-2\nsensor-2\n")
	want(t, r, 200, "per row, with errors")
	recs, err := csv.NewReader(strings.NewReader(string(r.body))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 5 {
		t.Fatalf("CSV answer %q: want a header and 4 lines", r.body)
	}
	for i, want := range [][]string{
		{"2", "sensor-1", "acme/sensor-1", "", "name: a device with this name exists"},
		{"3", "Bad Name", "", "", "name: "},
		{"4", "sensor-2", "acme/sensor-2", "secret", ""},
		{"5", "sensor-2", "", "", "name: repeats the device of row 4"},
	} {
		got := recs[i+1]
		if got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || (got[3] != "") != (want[3] != "") || !strings.HasPrefix(got[4], want[4]) {
			t.Errorf("CSV line %d: got %q, want %q (a secret or not, the error's start)", i+1, got, want)
		}
	}
}

// TestDeviceImport: 10,000 CSV rows, eleven of them bad: all-or-nothing
// creates none and names the eleven rows; per row creates the rest, whose
// secrets come back once (JSON, or a CSV download) and connect over MQTT,
// even for a name that was refused (and cached as unknown) before the
// import. NDJSON, bad headers, bodies, modes and roles; max_devices.
func TestDeviceImport(t *testing.T) {
	e := newEnv(t)
	u := e.signup("owner")
	e.mustTenant(u, "acme")
	want(t, e.do("PATCH", "/v1/admin/tenants/acme", adminToken, map[string]any{"quotas": map[string]any{"max_devices": 10200}}), 200, "max_devices 10200")

	// dev-00002 tries to connect before it exists.
	if _, err := e.dialMQTT(t, "acme/dev-00002", "nope", "dev-00002", paho.ClientConfig{}); err == nil {
		t.Fatal("a device that does not exist yet connected")
	}

	var b strings.Builder
	b.WriteString("name,groups,metadata.room,metadata.floor\n")
	bad := map[int]bool{}
	for i := 2; i <= 10001; i++ { // file rows: the header is row 1
		name := fmt.Sprintf("dev-%05d", i)
		switch {
		case i%1000 == 0:
			name = "bad name " + name
			bad[i] = true
		case i == 10001:
			name = "dev-00002" // repeats row 2
			bad[i] = true
		}
		fmt.Fprintf(&b, "%s,lab;floor-%d,r%d,%d\n", name, i%3, i%50, i%3)
	}
	body := b.String()

	start := time.Now()
	r := e.importReq(u.token, "", "text/csv", "", body)
	want(t, r, 422, "all or nothing with bad rows")
	t.Logf("all mode, 10,000 rows refused in %v", time.Since(start))
	m := r.json()
	if m["rows"] != float64(10000) || len(asSlice(m["created"])) != 0 || len(asSlice(m["errors"])) != len(bad) {
		t.Fatalf("all mode: rows %v, created %d, errors %d; want 10000, 0, %d", m["rows"], len(asSlice(m["created"])), len(asSlice(m["errors"])), len(bad))
	}
	for _, it := range asSlice(m["errors"]) {
		if row := int(it.(map[string]any)["row"].(float64)); !bad[row] {
			t.Errorf("all mode: row %d reported, but it is good", row)
		}
	}
	if r := e.do("GET", "/v1/tenants/acme/devices?limit=1", u.token, nil); len(asSlice(r.json()["items"])) != 0 {
		t.Fatal("all mode with bad rows created devices")
	}

	start = time.Now()
	r = e.importReq(u.token, "?mode=rows", "text/csv", "text/csv", body)
	want(t, r, 200, "per row")
	t.Logf("rows mode, 10,000 rows (9,989 created) in %v", time.Since(start))
	if r.header.Get("Cache-Control") != "no-store" || !strings.Contains(r.header.Get("Content-Disposition"), "attachment") ||
		!strings.HasPrefix(r.header.Get("Content-Type"), "text/csv") {
		t.Errorf("CSV answer headers: %v", r.header)
	}
	recs, err := csv.NewReader(strings.NewReader(string(r.body))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 10001 || strings.Join(recs[0], ",") != "row,name,username,secret,error" {
		t.Fatalf("CSV answer: %d records, header %v; want 10001 and row,name,username,secret,error", len(recs), recs[0])
	}
	secrets := map[string]string{}
	errs := 0
	for _, rec := range recs[1:] {
		if rec[4] != "" {
			errs++
			continue
		}
		secrets[rec[1]] = rec[3]
	}
	if errs != len(bad) || len(secrets) != 10000-len(bad) {
		t.Errorf("CSV answer: %d errors and %d secrets, want %d and %d", errs, len(secrets), len(bad), 10000-len(bad))
	}
	r = e.do("GET", "/v1/tenants/acme/groups", u.token, nil)
	if items := asSlice(r.json()["items"]); len(items) != 4 || items[3].(map[string]any)["name"] != "lab" || items[3].(map[string]any)["devices"] != float64(9989) {
		t.Errorf("groups after the import: %s", r.body)
	}
	r = e.do("GET", "/v1/tenants/acme/devices?metadata.room=r7&group=floor-1", u.token, nil)
	if items := asSlice(r.json()["items"]); len(items) == 0 || items[0].(map[string]any)["metadata"].(map[string]any)["room"] != "r7" {
		t.Errorf("an imported device by metadata and group: %s", r.body)
	}

	// An imported secret connects, though the name was refused before.
	c, err := e.dialMQTT(t, "acme/dev-00002", secrets["dev-00002"], "dev-00002", paho.ClientConfig{})
	if err != nil {
		t.Fatalf("connect with an imported secret: %v", err)
	}
	c.Disconnect(&paho.Disconnect{})

	// NDJSON, per row and all, JSON answers.
	nd := `{"name": "nd-1", "groups": ["ops"], "metadata": {"room": "x"}}

{"name": "nd-2", "pwned": true}
{"name": "dev-00003"}
not json
`
	r = e.importReq(u.token, "?mode=rows", "application/x-ndjson", "", nd)
	want(t, r, 200, "NDJSON per row")
	m = r.json()
	created, rowErrs := asSlice(m["created"]), asSlice(m["errors"])
	if len(created) != 1 || created[0].(map[string]any)["row"] != float64(1) || created[0].(map[string]any)["secret"] == "" {
		t.Errorf("NDJSON created: %s", r.body)
	}
	var rows []string
	for _, it := range rowErrs {
		rows = append(rows, fmt.Sprintf("%v:%v", it.(map[string]any)["row"], it.(map[string]any)["code"]))
	}
	if strings.Join(rows, " ") != "3:invalid 4:conflict 5:invalid" {
		t.Errorf("NDJSON errors: got %v, want 3:invalid 4:conflict 5:invalid", rows)
	}

	// Over max_devices (10200, 9990 exist): all mode refuses the whole.
	var more strings.Builder
	more.WriteString("name\n")
	for i := range 300 {
		fmt.Fprintf(&more, "more-%d\n", i)
	}
	wantProblem(t, e.importReq(u.token, "", "text/csv", "", more.String()), 403, "quota_exceeded", "", "all mode over max_devices")
	r = e.importReq(u.token, "?mode=rows", "text/csv", "", more.String())
	want(t, r, 200, "rows mode over max_devices")
	if m := r.json(); len(asSlice(m["created"])) != 210 || len(asSlice(m["errors"])) != 90 {
		t.Errorf("rows mode over max_devices: created %d, errors %d; want 210 and 90", len(asSlice(m["created"])), len(asSlice(m["errors"])))
	}

	// The request as a whole.
	_, viewer := e.mustKey(u.token, "acme", "viewer")
	wantProblem(t, e.importReq(viewer, "", "text/csv", "", "name\nv1\n"), 403, "forbidden", "", "a viewer imports")
	wantProblem(t, e.importReq(u.token, "", "application/json", "", `{"name": "j"}`), 415, "unsupported_media_type", "", "JSON")
	wantProblem(t, e.importReq(u.token, "?mode=some", "text/csv", "", "name\nx\n"), 400, "invalid", "mode", "an unknown mode")
	wantProblem(t, e.importReq(u.token, "", "text/csv", "", "room,name\nx,y\n"), 400, "invalid", "header", "name not first")
	wantProblem(t, e.importReq(u.token, "", "text/csv", "", "name,secret\nx,y\n"), 400, "invalid", "header", "an unknown column")
	wantProblem(t, e.importReq(u.token, "", "text/csv", "", ""), 400, "invalid", "header", "an empty file")
	wantProblem(t, e.importReq(u.token, "", "text/csv", "", "name\n\"x\n"), 400, "bad_csv", "", "malformed CSV")
	wantProblem(t, e.importReq(u.token, "", "text/csv", "", "name\n"+strings.Repeat("x\n", 10001)), 413, "too_many_rows", "", "10,001 rows")
	wantProblem(t, e.importReq(u.token, "", "text/csv", "", "name\n"+strings.Repeat("x", 17<<20)), 413, "body_too_large", "", "17 MiB")

	// devices:import is not a device, and a device is still one.
	want(t, e.do("GET", "/v1/tenants/acme/devices/dev-00002", u.token, nil), 200, "a device after the import route")
	if r := e.do("GET", "/v1/tenants/acme/devices:import", u.token, nil); r.status != http.StatusMethodNotAllowed {
		t.Errorf("GET devices:import: got %d, want 405", r.status)
	}
}
