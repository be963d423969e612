package tenants

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ParseImportCSV reads a CSV file whose header row names its columns:
// name first, then any of groups (names separated by ';'), enabled,
// client_ids, certificate and public_key (PEM, in a quoted cell; empty for
// none) and metadata.<key> (an empty cell sets no key). Rows are
// numbered as in the file, the header being row 1. A malformed file or
// header is an error for the whole request; a malformed row is that row's.
func ParseImportCSV(body []byte) ([]ImportRow, error) {
	cr := csv.NewReader(bytes.NewReader(body))
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err == io.EOF {
		return nil, invalid("header", "the file is empty: a header row is required, name first")
	}
	if err != nil {
		return nil, csvError(err)
	}
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\ufeff") // a spreadsheet's byte order mark
	}
	if len(header) == 0 || strings.TrimSpace(header[0]) != "name" {
		return nil, invalid("header", "the header row must start with name")
	}
	seen := map[string]bool{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		header[i] = h
		switch {
		case h == "name" && i == 0, h == "groups", h == "enabled", h == "client_ids", h == "certificate", h == "public_key":
		case strings.HasPrefix(h, "metadata.") && len(h) > len("metadata."):
		default:
			return nil, invalid("header", "column %d, %q, is not one of name, groups, enabled, client_ids, certificate, public_key or metadata.<key>", i+1, h)
		}
		if seen[h] {
			return nil, invalid("header", "column %q repeats", h)
		}
		seen[h] = true
	}
	var rows []ImportRow
	for n := 2; ; n++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return nil, csvError(err)
		}
		if len(rows) == MaxImportRows {
			return nil, tooManyRows()
		}
		row := ImportRow{Row: n}
		if len(rec) != len(header) {
			row.Err = &FieldError{Field: "row", Message: fmt.Sprintf("has %d fields, the header %d", len(rec), len(header))}
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
						row.Err = &FieldError{Field: "enabled", Message: "must be true or false"}
					}
					in.Enabled = &b
				}
			case h == "client_ids":
				in.ClientIDs = ClientIDPolicy(v)
			case h == "certificate":
				row.Certificate = v
			case h == "public_key":
				row.PublicKey = v
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

// importLine is one NDJSON row: a device as POST …/devices takes it, and
// optionally a certificate and a public key (PEM).
type importLine struct {
	DeviceInput
	Certificate string `json:"certificate"`
	PublicKey   string `json:"public_key"`
}

// ParseImportNDJSON reads one device per line, as POST …/devices takes it
// with optional certificate and public_key (PEM); blank lines are skipped
// and rows are numbered by line.
func ParseImportNDJSON(body []byte) ([]ImportRow, error) {
	var rows []ImportRow
	for n, line := range bytes.Split(body, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if len(rows) == MaxImportRows {
			return nil, tooManyRows()
		}
		row := ImportRow{Row: n + 1}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var l importLine
		if err := dec.Decode(&l); err != nil || dec.More() {
			row.Err = &FieldError{Field: "row", Message: "is not one JSON object of name, groups, metadata, enabled, client_ids, certificate and public_key"}
		}
		row.Input, row.Certificate, row.PublicKey = l.DeviceInput, l.Certificate, l.PublicKey
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, invalid("rows", "no devices to import")
	}
	return rows, nil
}

// ImportFileError is a file that cannot be imported at all: malformed
// CSV (at Line and Column) or more than MaxImportRows rows.
type ImportFileError struct {
	Line, Column int
	TooManyRows  bool
	Msg          string
}

func (e *ImportFileError) Error() string { return e.Msg }

func tooManyRows() error {
	return &ImportFileError{TooManyRows: true, Msg: fmt.Sprintf("at most %d devices in one import", MaxImportRows)}
}

func csvError(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return &ImportFileError{Line: pe.Line, Column: pe.Column, Msg: fmt.Sprintf("malformed CSV at line %d: %v", pe.Line, pe.Err)}
	}
	return &ImportFileError{Msg: "malformed CSV"}
}
