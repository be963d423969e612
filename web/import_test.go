package web_test

import (
	"bytes"
	"encoding/csv"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// upload posts the import form with a file, as a browser does.
func (b *browser) upload(path, mode, file string) answer {
	b.s.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("csrf", b.csrf)
	mw.WriteField("mode", mode)
	fw, _ := mw.CreateFormFile("file", "devices.csv")
	io.WriteString(fw, file)
	mw.Close()
	req, _ := http.NewRequest("POST", b.s.url+path, &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := b.http.Do(req)
	if err != nil {
		b.s.t.Fatal(err)
	}
	return b.read(resp)
}

// TestConsoleDeviceImport: the upload page imports a CSV file larger than
// the console's other forms; all or nothing lists the rows in error and
// creates nothing; row by row answers a CSV download with the secrets.
func TestConsoleDeviceImport(t *testing.T) {
	s := newStack(t)
	b := s.browser()
	b.signup("importer")
	b.tenant("importer")
	if a := b.get("/tenants/importer/devices"); !strings.Contains(a.body, `href="/tenants/importer/device-import"`) {
		t.Fatal("the devices page does not link the import page")
	}
	if a := b.get("/tenants/importer/device-import"); a.status != http.StatusOK || !strings.Contains(a.body, `enctype="multipart/form-data"`) {
		t.Fatalf("import page: %d", a.status)
	}
	var f strings.Builder
	f.WriteString("name,groups,metadata.room\n")
	for i := range 3000 { // about 100 KiB: over the 64 KiB of other forms
		f.WriteString("device-" + strings.Repeat("x", 2) + "-" + strconv.Itoa(i) + ",lab;floor-1,room-with-a-long-name-" + strconv.Itoa(i) + "\n")
	}
	f.WriteString("bad name,lab,r\n")
	file := f.String()

	a := b.upload("/tenants/importer/device-import", "all", file)
	if a.status != http.StatusUnprocessableEntity || !strings.Contains(a.body, "<td>3002</td><td>name</td>") {
		t.Fatalf("all or nothing with a bad row: got %d, want 422 naming row 3002\n%s", a.status, a.body)
	}
	if a := b.get("/tenants/importer/devices"); strings.Contains(a.body, "device-xx-0") {
		t.Fatal("all or nothing with a bad row created devices")
	}
	a = b.upload("/tenants/importer/device-import", "rows", file)
	if a.status != http.StatusOK || !strings.HasPrefix(a.header.Get("Content-Type"), "text/csv") ||
		!strings.Contains(a.header.Get("Content-Disposition"), "attachment") || a.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("row by row: got %d %v", a.status, a.header)
	}
	recs, err := csv.NewReader(strings.NewReader(a.body)).ReadAll()
	if err != nil || len(recs) != 3002 || recs[1][1] != "device-xx-0" || len(recs[1][3]) < 20 || recs[3001][4] == "" {
		t.Fatalf("the download: %d records (%v), first %v, last %v", len(recs), err, recs[1], recs[len(recs)-1])
	}
	if a := b.get("/tenants/importer/devices?group=lab"); !strings.Contains(a.body, "device-xx-0") {
		t.Error("the imported devices are not listed in their group")
	}
	if a := b.upload("/tenants/importer/device-import", "rows", "room\nx\n"); a.status != http.StatusBadRequest || !strings.Contains(a.body, "must start with name") {
		t.Errorf("a header without name: got %d", a.status)
	}
}
