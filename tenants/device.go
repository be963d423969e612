package tenants

import (
	"regexp"
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

// Valid reports whether p is a known policy.
func (p ClientIDPolicy) Valid() bool { return p == ClientIDsExact || p == ClientIDsAny }

// Username is the MQTT username of device name in tenant.
func Username(tenant, device string) string { return tenant + "/" + device }

var deviceNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidDeviceName reports whether s is a well-formed device name. Device names
// never contain / + # $ : or spaces, so they are safe inside topic filters.
func ValidDeviceName(s string) bool { return deviceNameRE.MatchString(s) }

// Metadata limits keep a device row small.
const (
	maxMetadataKeys     = 32
	maxMetadataKeyLen   = 64
	maxMetadataValueLen = 512
)

// DeviceInput registers a device.
type DeviceInput struct {
	Name      string            `json:"name"`
	Enabled   *bool             `json:"enabled,omitempty"`
	ClientIDs ClientIDPolicy    `json:"client_ids,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
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
	return validateMetadata(in.Metadata)
}

// DeviceUpdate changes a device. Nil fields are left as they are; Metadata,
// when given, replaces the whole map.
type DeviceUpdate struct {
	Enabled   *bool              `json:"enabled,omitempty"`
	ClientIDs *ClientIDPolicy    `json:"client_ids,omitempty"`
	Metadata  *map[string]string `json:"metadata,omitempty"`
}

// Validate checks the update.
func (u *DeviceUpdate) Validate() error {
	if u.ClientIDs != nil && !u.ClientIDs.Valid() {
		return invalid("client_ids", "must be exact or any")
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
