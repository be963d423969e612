package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/roosthub/roost/tenants"
)

// maxBodyBytes bounds every request body the API reads.
const maxBodyBytes = 64 << 10

// decode reads one JSON object from the request into v. Unknown fields,
// trailing data, a wrong content type and an oversized body are all errors
// that say what was wrong, so a typo in a field name never silently does
// nothing.
func decode(r *http.Request, v any) error { return decodeLimit(r, v, maxBodyBytes) }

// decodeLimit is decode with another body limit.
func decodeLimit(r *http.Request, v any, limit int64) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return errorf(http.StatusUnsupportedMediaType, "unsupported_media_type", "the request body must be application/json")
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return errorf(http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the request body exceeds %d bytes", limit))
	}
	if err != nil {
		return errorf(http.StatusBadRequest, "bad_body", "could not read the request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return errorf(http.StatusBadRequest, "bad_json", "a JSON request body is required")
	}
	// encoding/json would turn each invalid byte into U+FFFD and carry on:
	// text that is not what was sent must not be stored as if it were.
	if !utf8.Valid(body) {
		return invalidUTF8(body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, "bad_json", "the request body must hold one JSON object")
	}
	return nil
}

// jsonError turns a decoding error into a problem that names the field.
func jsonError(err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return errorf(http.StatusBadRequest, "bad_json", fmt.Sprintf("malformed JSON at byte %d", syntax.Offset))
	case errors.As(err, &typ):
		e := &httpError{status: http.StatusBadRequest, code: "invalid", field: typ.Field,
			msg: fmt.Sprintf("%s: expected %s, got %s", fieldName(typ.Field), jsonType(typ.Type.Kind().String()), typ.Value)}
		return e
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		return &httpError{status: http.StatusBadRequest, code: "unknown_field", field: field, msg: fmt.Sprintf("unknown field %q", field)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "bad_json", "the JSON body ends too early")
	}
	return errorf(http.StatusBadRequest, "bad_json", "the body is not valid JSON")
}

// invalidUTF8 is the problem for a body that is not UTF-8: bad_json, with
// the field whose text holds the first invalid byte when it is in a string
// value.
func invalidUTF8(body []byte) error {
	off := firstInvalidUTF8(body)
	e := &httpError{status: http.StatusBadRequest, code: "bad_json", field: fieldAt(body, off),
		msg: fmt.Sprintf("the body is not valid UTF-8 (byte %d)", off)}
	if e.field != "" {
		e.msg = fmt.Sprintf("%s: the text is not valid UTF-8 (byte %d of the body)", e.field, off)
	}
	return e
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// fieldAt names the field (dotted, as encoding/json names fields) whose
// string value holds the byte at off, or "" if none does: a key, or
// something outside any string. Invalid bytes are read as '?' meanwhile,
// which keeps every offset where it was.
func fieldAt(body []byte, off int) string {
	clean := make([]byte, 0, len(body))
	for i := 0; i < len(body); {
		r, n := utf8.DecodeRune(body[i:])
		if r == utf8.RuneError && n <= 1 {
			clean = append(clean, '?')
			i++
			continue
		}
		clean = append(clean, body[i:i+n]...)
		i += n
	}
	type frame struct {
		object  bool
		key     string
		wantKey bool
	}
	var stack []frame
	path := func() string {
		var parts []string
		for _, f := range stack {
			if f.object && f.key != "" {
				parts = append(parts, f.key)
			}
		}
		return strings.Join(parts, ".")
	}
	dec := json.NewDecoder(bytes.NewReader(clean))
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		end := int(dec.InputOffset())
		top := len(stack) - 1
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				stack = append(stack, frame{object: true, wantKey: true})
				continue
			case '[':
				stack = append(stack, frame{})
				continue
			default:
				stack = stack[:top]
			}
		case string:
			if top >= 0 && stack[top].object && stack[top].wantKey {
				if end > off {
					return "" // the key itself
				}
				stack[top].key, stack[top].wantKey = v, false
				continue
			}
			if end > off {
				return path()
			}
		}
		if end > off {
			return ""
		}
		// A value ended: its object wants the next key.
		if top = len(stack) - 1; top >= 0 && stack[top].object {
			stack[top].wantKey = true
		}
	}
}

func fieldName(f string) string {
	if f == "" {
		return "the body"
	}
	return f
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "int", "int64", "int32", "uint32", "float64":
		return "a number"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	}
	return "of another type"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	writeJSONType(w, "application/json", status, v)
}

func writeJSONType(w http.ResponseWriter, contentType string, status int, v any) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v) // the status is sent; a failed write is the client's loss
}

// list is the shape of every paginated response.
type list[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

func newList[T any](items []T, next string) list[T] {
	if items == nil {
		items = []T{}
	}
	return list[T]{Items: items, NextCursor: encodeCursor(next)}
}

// handleList serves one page of a list that fetch reads.
func handleList[T any](fetch func(r *http.Request, p tenants.Page) ([]T, string, error)) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		p, err := page(r)
		if err != nil {
			return err
		}
		items, next, err := fetch(r, p)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, newList(items, next))
		return nil
	}
}

// Cursors are opaque to clients: the key of the last item, base64url.
func encodeCursor(key string) string {
	if key == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(key))
}

// page reads the limit and cursor query parameters.
func page(r *http.Request) (tenants.Page, error) {
	var p tenants.Page
	q := r.URL.Query()
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > tenants.MaxPageSize {
			return p, &httpError{status: http.StatusBadRequest, code: "invalid", field: "limit",
				msg: fmt.Sprintf("limit must be a whole number from 1 to %d", tenants.MaxPageSize)}
		}
		p.Limit = n
	}
	if s := q.Get("cursor"); s != "" {
		key, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(key) > 200 {
			return p, &httpError{status: http.StatusBadRequest, code: "invalid", field: "cursor", msg: "cursor is not one this API returned"}
		}
		p.Cursor = string(key)
	}
	return p, nil
}
