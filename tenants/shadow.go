package tenants

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ShadowChanged: a device's shadow was written. Whoever serves the
// device's connections tells it the delta, if there is one.
const ShadowChanged ChangeKind = "shadow"

// Shadow is a device's state document: what the tenant's applications
// want (desired), what the device last said (reported), and the desired
// keys whose value the device has not reported yet (delta), computed
// recursively as AWS IoT does. Metadata mirrors desired and reported with
// {"timestamp": unix seconds} at each value, the time it was last set.
// Version counts the writes; it is 0 for a shadow never written.
type Shadow struct {
	Device    string         `json:"device"`
	State     ShadowState    `json:"state"`
	Metadata  ShadowMetadata `json:"metadata"`
	Version   int64          `json:"version"`
	Timestamp time.Time      `json:"timestamp,omitzero"`
}

// ShadowState is a shadow's state.
type ShadowState struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
	Delta    map[string]any `json:"delta"`
}

// ShadowMetadata holds the per-field timestamps.
type ShadowMetadata struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

// ShadowUpdate changes a shadow: each of desired and reported is merged
// into the shadow's, recursively; a null value deletes its key, and a
// null desired or reported clears it all. Version, when given, must be
// the shadow's current version (optimistic concurrency: ErrConflict).
type ShadowUpdate struct {
	State struct {
		Desired  json.RawMessage `json:"desired,omitempty"`
		Reported json.RawMessage `json:"reported,omitempty"`
	} `json:"state"`
	Version *int64 `json:"version,omitempty"`
	// Source says where the update came from, for its event: "api" or
	// "mqtt".
	Source string `json:"-"`
}

// maxShadowDepth bounds how deep a shadow's objects nest (AWS: 8 for
// desired and reported each, under state).
const maxShadowDepth = 8

// ParseShadowUpdate reads an update from JSON, as a device publishes it:
// an object with "state" and optionally "version"; other fields are
// refused.
func ParseShadowUpdate(b []byte) (ShadowUpdate, error) {
	var u ShadowUpdate
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		return ShadowUpdate{}, invalid("state", "the update is not a JSON object of the form {\"state\": {\"reported\": {...}}}: %v", err)
	}
	if dec.More() {
		return ShadowUpdate{}, invalid("state", "the update has data after its JSON object")
	}
	return u, u.validate()
}

// validate checks what an update holds: desired or reported, each an
// object (or null), not too deep.
func (u ShadowUpdate) validate() error {
	if len(u.State.Desired) == 0 && len(u.State.Reported) == 0 {
		return invalid("state", "state must hold desired or reported")
	}
	if u.Version != nil && *u.Version < 0 {
		return invalid("version", "version must not be negative")
	}
	for _, part := range []struct {
		name string
		raw  json.RawMessage
	}{{"state.desired", u.State.Desired}, {"state.reported", u.State.Reported}} {
		if len(part.raw) == 0 {
			continue
		}
		if _, err := decodeShadowPart(part.name, part.raw); err != nil {
			return err
		}
	}
	return nil
}

// decodeShadowPart decodes desired or reported: nil for null.
func decodeShadowPart(name string, raw json.RawMessage) (map[string]any, error) {
	if string(bytes.TrimSpace(raw)) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, invalid(name, "%s is not valid JSON: %v", name, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, invalid(name, "%s must be an object or null", name)
	}
	if d := depth(m); d > maxShadowDepth {
		return nil, invalid(name, "%s nests %d levels deep; at most %d", name, d, maxShadowDepth)
	}
	if k, ok := emptyKey(m); ok {
		return nil, invalid(name, "%s has an empty key%s", name, k)
	}
	return m, nil
}

func depth(v any) int {
	switch v := v.(type) {
	case map[string]any:
		d := 0
		for _, e := range v {
			d = max(d, depth(e))
		}
		return d + 1
	case []any:
		d := 0
		for _, e := range v {
			d = max(d, depth(e))
		}
		return d + 1
	}
	return 0
}

// emptyKey finds an empty key ("" is no field name); the string says under
// which key it is.
func emptyKey(m map[string]any) (string, bool) {
	for k, v := range m {
		if k == "" {
			return "", true
		}
		if sub, ok := v.(map[string]any); ok {
			if under, found := emptyKey(sub); found {
				return " under " + k + under, true
			}
		}
	}
	return "", false
}

// shadowDoc is what is stored of a shadow: the state and its metadata.
type shadowDoc struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
	Metadata ShadowMetadata `json:"metadata"`
}

func newShadowDoc() shadowDoc {
	return shadowDoc{Desired: map[string]any{}, Reported: map[string]any{},
		Metadata: ShadowMetadata{Desired: map[string]any{}, Reported: map[string]any{}}}
}

// apply merges an update into the document, stamping what it sets with ts.
func (d *shadowDoc) apply(u ShadowUpdate, ts int64) error {
	parts := []struct {
		name        string
		raw         json.RawMessage
		state, meta *map[string]any
	}{
		{"state.desired", u.State.Desired, &d.Desired, &d.Metadata.Desired},
		{"state.reported", u.State.Reported, &d.Reported, &d.Metadata.Reported},
	}
	for _, p := range parts {
		if len(p.raw) == 0 {
			continue
		}
		patch, err := decodeShadowPart(p.name, p.raw)
		if err != nil {
			return err
		}
		if patch == nil {
			*p.state, *p.meta = map[string]any{}, map[string]any{}
			continue
		}
		mergeShadow(*p.state, *p.meta, patch, ts)
	}
	return nil
}

// size is the state's size as JSON, which max_shadow_bytes bounds.
func (d shadowDoc) size() int64 {
	b, _ := json.Marshal(struct {
		Desired  map[string]any `json:"desired"`
		Reported map[string]any `json:"reported"`
	}{d.Desired, d.Reported})
	return int64(len(b))
}

// mergeShadow merges patch into dst, and timestamps into meta: a null
// deletes a key, an object is merged into an object (replacing a value of
// another kind), anything else replaces the value. An object left empty by
// the deletions in it goes.
func mergeShadow(dst, meta, patch map[string]any, ts int64) {
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			delete(meta, k)
			continue
		}
		pv, ok := v.(map[string]any)
		if !ok {
			dst[k] = v
			meta[k] = map[string]any{"timestamp": ts}
			continue
		}
		dv, wasObject := dst[k].(map[string]any)
		mv, _ := meta[k].(map[string]any)
		if !wasObject || mv == nil {
			dv, mv = map[string]any{}, map[string]any{}
		}
		mergeShadow(dv, mv, pv, ts)
		if len(dv) == 0 && len(pv) > 0 {
			delete(dst, k)
			delete(meta, k)
			continue
		}
		dst[k], meta[k] = dv, mv
	}
}

// shadowDelta is the desired keys whose value differs from the reported
// one, recursively: an object in both compares key by key.
func shadowDelta(desired, reported map[string]any) map[string]any {
	d := map[string]any{}
	for k, dv := range desired {
		rv, ok := reported[k]
		dm, dIsObject := dv.(map[string]any)
		rm, rIsObject := rv.(map[string]any)
		if ok && dIsObject && rIsObject {
			if sub := shadowDelta(dm, rm); len(sub) > 0 {
				d[k] = sub
			}
			continue
		}
		if !ok || !jsonEqual(dv, rv) {
			d[k] = dv
		}
	}
	return d
}

// jsonEqual compares decoded JSON values; numbers by value (1 = 1.0).
func jsonEqual(a, b any) bool {
	switch a := a.(type) {
	case json.Number:
		b, ok := b.(json.Number)
		if !ok {
			return false
		}
		if a == b {
			return true
		}
		// As float64: exact for the numbers devices report, and cheap for
		// any literal (a big.Rat of 1e999999 takes milliseconds to build,
		// hundreds of them in one document seconds; such literals are
		// out of float64's range and compare as the infinity they parse to).
		x, errx := strconv.ParseFloat(a.String(), 64)
		y, erry := strconv.ParseFloat(b.String(), 64)
		if (errx != nil && !errors.Is(errx, strconv.ErrRange)) || (erry != nil && !errors.Is(erry, strconv.ErrRange)) {
			return false
		}
		return x == y
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok || !jsonEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !jsonEqual(a[i], b[i]) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}

// shadowOf builds the answer from a stored document.
func shadowOf(device string, d shadowDoc, version int64, at time.Time) Shadow {
	return Shadow{
		Device:   device,
		State:    ShadowState{Desired: d.Desired, Reported: d.Reported, Delta: shadowDelta(d.Desired, d.Reported)},
		Metadata: d.Metadata, Version: version, Timestamp: at,
	}
}

func decodeShadowDoc(s string) (shadowDoc, error) {
	d := newShadowDoc()
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.UseNumber()
	if err := dec.Decode(&d); err != nil {
		return shadowDoc{}, fmt.Errorf("decode stored shadow: %w", err)
	}
	for _, m := range []*map[string]any{&d.Desired, &d.Reported, &d.Metadata.Desired, &d.Metadata.Reported} {
		if *m == nil {
			*m = map[string]any{}
		}
	}
	return d, nil
}
