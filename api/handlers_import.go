package api

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
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
			rows, err = parseImportCSV(body)
		} else {
			rows, err = parseImportNDJSON(body)
		}
		if err != nil {
			return err
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
	cw := csv.NewWriter(w)
	cw.Write([]string{"row", "name", "username", "secret", "error"})
	created, errs := res.Created, res.Errors
	for len(created) > 0 || len(errs) > 0 {
		if len(errs) == 0 || (len(created) > 0 && created[0].Row < errs[0].Row) {
			d := created[0]
			cw.Write([]string{strconv.Itoa(d.Row), d.Device.Name, d.Device.Username, d.Secret, ""})
			created = created[1:]
			continue
		}
		e := errs[0]
		msg := e.Message
		if e.Field != "" {
			msg = e.Field + ": " + msg
		}
		cw.Write([]string{strconv.Itoa(e.Row), "", "", "", msg})
		errs = errs[1:]
	}
	cw.Flush()
	return nil
}

// parseImportCSV reads a CSV file whose header row names its columns:
// name first, then any of groups (names separated by ';'), enabled,
// client_ids and metadata.<key> (an empty cell sets no key). Rows are
// numbered as in the file, the header being row 1. A malformed file or
// header is an error for the whole request; a malformed row is that row's.
func parseImportCSV(body []byte) ([]tenants.ImportRow, error) {
	cr := csv.NewReader(bytes.NewReader(body))
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err == io.EOF {
		return nil, &httpError{status: http.StatusBadRequest, code: "invalid", field: "header", msg: "the file is empty: a header row is required, name first"}
	}
	if err != nil {
		return nil, csvError(err)
	}
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\ufeff") // a spreadsheet's byte order mark
	}
	if len(header) == 0 || strings.TrimSpace(header[0]) != "name" {
		return nil, &httpError{status: http.StatusBadRequest, code: "invalid", field: "header", msg: "the header row must start with name"}
	}
	seen := map[string]bool{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		header[i] = h
		switch {
		case h == "name" && i == 0, h == "groups", h == "enabled", h == "client_ids":
		case strings.HasPrefix(h, "metadata.") && len(h) > len("metadata."):
		default:
			return nil, &httpError{status: http.StatusBadRequest, code: "invalid", field: "header",
				msg: fmt.Sprintf("column %d, %q, is not one of name, groups, enabled, client_ids or metadata.<key>", i+1, h)}
		}
		if seen[h] {
			return nil, &httpError{status: http.StatusBadRequest, code: "invalid", field: "header", msg: fmt.Sprintf("column %q repeats", h)}
		}
		seen[h] = true
	}
	var rows []tenants.ImportRow
	for n := 2; ; n++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return nil, csvError(err)
		}
		if len(rows) == tenants.MaxImportRows {
			return nil, tooManyRows()
		}
		row := tenants.ImportRow{Row: n}
		if len(rec) != len(header) {
			row.Err = &tenants.FieldError{Field: "row", Message: fmt.Sprintf("has %d fields, the header %d", len(rec), len(header))}
			rows = append(rows, row)
			continue
		}
		in := &row.Input
		for i, v := range rec {
			v = strings.TrimSpace(v)
			switch h := header[i]; {
			case h == "name":
				in.Name = v
			case h == "groups":
				for _, g := range strings.Split(v, ";") {
					if g = strings.TrimSpace(g); g != "" {
						in.Groups = append(in.Groups, g)
					}
				}
			case h == "enabled":
				if v != "" {
					b, err := strconv.ParseBool(v)
					if err != nil {
						row.Err = &tenants.FieldError{Field: "enabled", Message: "must be true or false"}
					}
					in.Enabled = &b
				}
			case h == "client_ids":
				in.ClientIDs = tenants.ClientIDPolicy(v)
			default:
				if v != "" {
					if in.Metadata == nil {
						in.Metadata = map[string]string{}
					}
					in.Metadata[strings.TrimPrefix(h, "metadata.")] = v
				}
			}
		}
		rows = append(rows, row)
	}
}

// parseImportNDJSON reads one device per line, as POST …/devices takes it;
// blank lines are skipped and rows are numbered by line.
func parseImportNDJSON(body []byte) ([]tenants.ImportRow, error) {
	var rows []tenants.ImportRow
	for n, line := range bytes.Split(body, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if len(rows) == tenants.MaxImportRows {
			return nil, tooManyRows()
		}
		row := tenants.ImportRow{Row: n + 1}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&row.Input); err != nil || dec.More() {
			row.Err = &tenants.FieldError{Field: "row", Message: "is not one JSON object of name, groups, metadata, enabled and client_ids"}
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, &httpError{status: http.StatusBadRequest, code: "invalid", field: "rows", msg: "no devices to import"}
	}
	return rows, nil
}

func tooManyRows() error {
	return &httpError{status: http.StatusRequestEntityTooLarge, code: "too_many_rows",
		msg: fmt.Sprintf("at most %d devices in one import", tenants.MaxImportRows)}
}

func csvError(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return &httpError{status: http.StatusBadRequest, code: "bad_csv", line: pe.Line, col: pe.Column,
			msg: fmt.Sprintf("malformed CSV at line %d: %v", pe.Line, pe.Err)}
	}
	return errorf(http.StatusBadRequest, "bad_csv", "malformed CSV")
}
