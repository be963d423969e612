package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/roosthub/roost/tenants"
)

type deviceImporter interface {
	ImportDevices(ctx context.Context, tenant string, rows []tenants.ImportRow, mode tenants.ImportMode) (tenants.ImportResult, error)
}

// maxImportBody bounds a bulk import's body: 10,000 rows of a name, a few
// groups and metadata take a few MiB.
const maxImportBody = 16 << 20

// handleDeviceImport registers devices from a CSV or NDJSON body (see
// parseImport), all or nothing (?mode=all, the default) or per row
// (?mode=rows). The answer holds each created device's secret, once: JSON,
// or a CSV file to download when the request accepts text/csv. An
// all-or-nothing import with rows in error creates nothing and answers 422
// with the errors.
func handleDeviceImport(di deviceImporter) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		mode := tenants.ImportMode(r.URL.Query().Get("mode"))
		if mode == "" {
			mode = tenants.ImportAll
		}
		if mode != tenants.ImportAll && mode != tenants.ImportRows {
			return &httpError{status: http.StatusBadRequest, code: "invalid", field: "mode", msg: "mode must be all or rows"}
		}
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || (mt != "text/csv" && mt != "application/x-ndjson") {
			return errorf(http.StatusUnsupportedMediaType, "unsupported_media_type", "the request body must be text/csv or application/x-ndjson")
		}
		body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxImportBody))
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errorf(http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the request body exceeds %d bytes", maxImportBody))
		}
		if err != nil {
			return errorf(http.StatusBadRequest, "bad_body", "could not read the request body")
		}
		var rows []tenants.ImportRow
		if mt == "text/csv" {
			rows, err = tenants.ParseImportCSV(body)
		} else {
			rows, err = tenants.ParseImportNDJSON(body)
		}
		if err != nil {
			return importFileError(err)
		}
		tenant := chi.URLParam(r, "tenant")
		res, err := di.ImportDevices(r.Context(), tenant, rows, mode)
		if err != nil {
			return err
		}
		status := http.StatusOK
		if mode == tenants.ImportAll && len(res.Errors) > 0 {
			status = http.StatusUnprocessableEntity
		}
		// The secrets are shown once: nothing keeps a copy.
		w.Header().Set("Cache-Control", "no-store")
		if acceptsCSV(r) {
			return writeImportCSV(w, status, tenant, res)
		}
		writeJSON(w, status, res)
		return nil
	}
}

// acceptsCSV reports whether the request asks for text/csv (before JSON).
func acceptsCSV(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case "text/csv":
			return true
		case "application/json", "*/*":
			return false
		}
	}
	return false
}

// writeImportCSV answers the import as a file: a row per row of the
// request, created (with its username and secret) or not (with its error).
func writeImportCSV(w http.ResponseWriter, status int, tenant string, res tenants.ImportResult) error {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+tenant+`-devices.csv"`)
	w.WriteHeader(status)
	return res.WriteCSV(w)
}

// importFileError answers a file that cannot be imported at all.
func importFileError(err error) error {
	var fe *tenants.ImportFileError
	switch {
	case !errors.As(err, &fe):
		return err
	case fe.TooManyRows:
		return &httpError{status: http.StatusRequestEntityTooLarge, code: "too_many_rows", msg: fe.Error()}
	}
	return &httpError{status: http.StatusBadRequest, code: "bad_csv", line: fe.Line, col: fe.Column, msg: fe.Error()}
}
