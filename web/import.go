package web

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/roosthub/roost/tenants"
)

// maxImportForm bounds the upload page's form: the API's 16 MiB for the
// file, and room for the other fields.
const maxImportForm = 16<<20 + 64<<10

// importPath is the upload page under a tenant. It is not under
// /devices/, where a device named "import" would lose its page.
const importPath = "device-import"

type importData struct {
	Mode   string
	Errors []tenants.ImportError
	More   int // errors not shown
}

func (c *Console) importPage(w http.ResponseWriter, r *http.Request) {
	c.renderImport(w, r, http.StatusOK, page{}, importData{Mode: string(tenants.ImportAll)})
}

func (c *Console) renderImport(w http.ResponseWriter, r *http.Request, status int, p page, d importData) {
	p.Title, p.Nav, p.Data = "Import devices", "devices", d
	c.render(w, r, status, "device_import.html", p)
}

// importUpload imports the uploaded CSV file and answers the secrets as a
// CSV file to download, once; a file or rows in error are shown on the
// page, and (in all-or-nothing mode) nothing is created.
func (c *Console) importUpload(w http.ResponseWriter, r *http.Request) {
	t := tenantOf(r)
	mode := tenants.ImportMode(r.PostFormValue("mode"))
	d := importData{Mode: string(mode)}
	fail := func(field, msg string) {
		c.renderImport(w, r, http.StatusBadRequest, page{Errors: map[string]string{field: msg}}, d)
	}
	if mode != tenants.ImportAll && mode != tenants.ImportRows {
		fail("mode", "choose all or nothing, or row by row")
		return
	}
	f, _, err := r.FormFile("file")
	if err != nil {
		fail("file", "choose a CSV file")
		return
	}
	defer f.Close()
	body, err := io.ReadAll(f)
	if err != nil {
		fail("file", "the file could not be read")
		return
	}
	rows, err := tenants.ParseImportCSV(body)
	if err == nil {
		var res tenants.ImportResult
		res, err = c.store.ImportDevices(r.Context(), t.Slug, rows, mode)
		if err == nil && (mode == tenants.ImportRows || len(res.Errors) == 0) {
			c.sendSecrets(w, t.Slug, res)
			return
		}
		if err == nil {
			d.Errors = res.Errors
			if len(d.Errors) > 100 {
				d.Errors, d.More = d.Errors[:100], len(d.Errors)-100
			}
			c.renderImport(w, r, http.StatusUnprocessableEntity, page{}, d)
			return
		}
	}
	var fe *tenants.ImportFileError
	var qe *tenants.QuotaError
	switch {
	case errors.As(err, &fe):
		fail("file", fe.Error())
	case errors.As(err, &qe):
		fail("file", "these devices would take the tenant over its "+strconv.FormatInt(qe.Limit, 10)+" devices (max_devices); nothing was created")
	case errors.Is(err, tenants.ErrInvalid):
		msgs := formErrors(err)
		for _, m := range msgs {
			fail("file", m)
			return
		}
		fail("file", err.Error())
	default:
		c.fail(w, r, err)
	}
}

// sendSecrets answers the import as a CSV file, one line per row, with the
// created devices' secrets: shown this once.
func (c *Console) sendSecrets(w http.ResponseWriter, tenant string, res tenants.ImportResult) {
	var b bytes.Buffer
	res.WriteCSV(&b)
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+tenant+`-devices.csv"`)
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}
