package tenants

import (
	"regexp"
	"slices"
	"time"
	"unicode/utf8"
)

// Device is a thing that connects over MQTT as <tenant>/<name>.
type Device struct {
	Tenant     string            `json:"tenant"`
	Name       string            `json:"name"`
	Username   string            `json:"username"`
	Enabled    bool              `json:"enabled"`
	ClientIDs  ClientIDPolicy    `json:"client_ids"`
	Metadata   map[string]string `json:"metadata"`
	Groups     []string          `json:"groups"`
	CreatedAt  time.Time         `json:"created_at"`
	UpdatedAt  time.Time         `json:"updated_at"`
	LastSeenAt *time.Time        `json:"last_seen_at"`

	// SecretHash is the SHA-256 of the device's secret; it never leaves the
	// server.
	SecretHash string `json:"-"`
}

// ClientIDPolicy says which MQTT client ids a device may use.
type ClientIDPolicy string

// ClientIDsExact binds the client id to the device name (an empty id is given
// the device name); ClientIDsAny lets a gateway use any id, which still lives
// only inside its tenant.
const (
	ClientIDsExact ClientIDPolicy = "exact"
	ClientIDsAny   ClientIDPolicy = "any"
)

// MaxClientIDBytes bounds a client id a gateway (ClientIDsAny) picks, in
// bytes: MQTT allows 65,535, and each connection, session, event and log
// line carries its id. A device's own ids are its name, shorter still.
const MaxClientIDBytes = 256

// Valid reports whether p is a known policy.
func (p ClientIDPolicy) Valid() bool { return p == ClientIDsExact || p == ClientIDsAny }

// Username is the MQTT username of device name in tenant.
func Username(tenant, device string) string { return tenant + "/" + device }

// ValidDeviceName reports whether s is a well-formed device name: 1 to 128
// ASCII letters, digits, '.', '_' or '-', starting with a letter or digit
// (as `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` would match it). Device names
// never contain / + # $ : or spaces, so they are safe inside topic filters.
//
// It is a loop over the bytes rather than a regular expression because
// every MQTT connect asks it.
func ValidDeviceName(s string) bool {
	if len(s) == 0 || len(s) > 128 || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// alnum reports whether c is an ASCII letter or digit.
func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// Metadata and group limits keep a device row small.
const (
	maxMetadataKeys     = 32
	maxMetadataKeyLen   = 64
	maxMetadataValueLen = 512
	// MaxDeviceGroups is how many groups one device may be in.
	MaxDeviceGroups = 32
)

var groupNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$`)

// ValidGroupName reports whether s is a well-formed group name: like a
// tenant slug, 1 to 64 lowercase letters, digits or '-', starting and
// ending with a letter or digit. Group names never contain / + # or $, so
// they are safe inside topic filters (${group}).
func ValidGroupName(s string) bool { return groupNameRE.MatchString(s) }

// normalizeGroups checks a device's groups and returns them sorted and
// without repeats.
func normalizeGroups(gs []string) ([]string, error) {
	out := make([]string, 0, len(gs))
	for _, g := range gs {
		if !ValidGroupName(g) {
			return nil, invalid("groups", "%q is not a group name: 1 to 64 lowercase letters, digits or '-', starting and ending with a letter or digit", g)
		}
		out = append(out, g)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > MaxDeviceGroups {
		return nil, invalid("groups", "must have at most %d groups", MaxDeviceGroups)
	}
	return out, nil
}

// DeviceInput registers a device.
type DeviceInput struct {
	Name      string            `json:"name"`
	Enabled   *bool             `json:"enabled,omitempty"`
	ClientIDs ClientIDPolicy    `json:"client_ids,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	Groups    []string          `json:"groups,omitempty"`
}

// Validate checks the input and fills in defaults.
func (in *DeviceInput) Validate() error {
	if in.Name == "" {
		return invalid("name", "is required")
	}
	if !ValidDeviceName(in.Name) {
		return invalid("name", "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if in.Enabled == nil {
		t := true
		in.Enabled = &t
	}
	if in.ClientIDs == "" {
		in.ClientIDs = ClientIDsExact
	}
	if !in.ClientIDs.Valid() {
		return invalid("client_ids", "must be exact or any")
	}
	if in.Metadata == nil {
		in.Metadata = map[string]string{}
	}
	gs, err := normalizeGroups(in.Groups)
	if err != nil {
		return err
	}
	in.Groups = gs
	return validateMetadata(in.Metadata)
}

// DeviceUpdate changes a device. Nil fields are left as they are; Metadata
// and Groups, when given, replace the whole map or list.
type DeviceUpdate struct {
	Enabled   *bool              `json:"enabled,omitempty"`
	ClientIDs *ClientIDPolicy    `json:"client_ids,omitempty"`
	Metadata  *map[string]string `json:"metadata,omitempty"`
	Groups    *[]string          `json:"groups,omitempty"`
}

// Validate checks the update.
func (u *DeviceUpdate) Validate() error {
	if u.ClientIDs != nil && !u.ClientIDs.Valid() {
		return invalid("client_ids", "must be exact or any")
	}
	if u.Groups != nil {
		gs, err := normalizeGroups(*u.Groups)
		if err != nil {
			return err
		}
		*u.Groups = gs
	}
	if u.Metadata != nil {
		if *u.Metadata == nil {
			*u.Metadata = map[string]string{}
		}
		return validateMetadata(*u.Metadata)
	}
	return nil
}

func validateMetadata(m map[string]string) error {
	if len(m) > maxMetadataKeys {
		return invalid("metadata", "must have at most %d keys", maxMetadataKeys)
	}
	for k, v := range m {
		if k == "" || len(k) > maxMetadataKeyLen || !utf8.ValidString(k) {
			return invalid("metadata", "keys must be 1 to %d bytes of UTF-8", maxMetadataKeyLen)
		}
		if len(v) > maxMetadataValueLen || !utf8.ValidString(v) {
			return invalid("metadata."+k, "must be at most %d bytes of UTF-8", maxMetadataValueLen)
		}
	}
	return nil
}

// DeviceFilter narrows a device list: names containing Search, devices in
// Group, and devices whose metadata holds every key of Metadata with that
// value. The zero filter lists every device.
type DeviceFilter struct {
	Search   string
	Group    string
	Metadata map[string]string
}

// Validate checks the filter.
func (f DeviceFilter) Validate() error {
	if f.Group != "" && !ValidGroupName(f.Group) {
		return invalid("group", "must be a group name")
	}
	if len(f.Metadata) > maxMetadataKeys {
		return invalid("metadata", "at most %d metadata filters", maxMetadataKeys)
	}
	return nil
}

// Group is a group with the number of its devices.
type Group struct {
	Name    string `json:"name"`
	Devices int64  `json:"devices"`
}
