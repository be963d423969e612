package tenants

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Destination is where a tenant's rules send messages: for now an HTTPS
// webhook. Its signing secret is shown once, when it is made or rotated;
// its header values (often credentials) are never shown again either,
// only their names.
type Destination struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Type      string    `json:"type"`
	URL       string    `json:"url"`
	Headers   []string  `json:"headers"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`

	// Sealed holds the secret and header values as the caller sealed
	// them; it never leaves the server.
	Sealed Sealed `json:"-"`
}

// Sealed is what a destination keeps encrypted. The directory stores it
// as given: sealing is the caller's, under a key the directory does not
// hold, so a copy of the database alone reveals no secret.
type Sealed struct {
	Secret  string
	Headers string // sealed JSON object of header values; "" if none
}

// DestinationWebhook is the one destination type so far.
const DestinationWebhook = "webhook"

// MaxDestinations caps a tenant's destinations; MaxDestinationHeaders a
// destination's headers.
const (
	MaxDestinations       = 50
	MaxDestinationHeaders = 20
)

var destinationNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// reservedHeaders are set by the hub on every request and may not be
// given.
var reservedHeaders = map[string]bool{
	"Host": true, "Content-Type": true, "Content-Length": true, "Content-Encoding": true, "Transfer-Encoding": true,
	"Connection": true, "Keep-Alive": true, "Upgrade": true, "Te": true, "Trailer": true, "Expect": true,
	"User-Agent": true, "Roost-Signature": true, "Proxy-Authorization": true, "Proxy-Connection": true,
}

var headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")

// DestinationInput makes a destination. URL is checked by the caller as
// well, against the hub's address policy (dataout.Guard).
type DestinationInput struct {
	Name    string            `json:"name"`
	Type    string            `json:"type"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
}

// Validate checks the input.
func (in *DestinationInput) Validate() error {
	if err := validDestinationName(in.Name); err != nil {
		return err
	}
	if in.Type != DestinationWebhook {
		return invalid("type", "must be webhook")
	}
	if strings.TrimSpace(in.URL) == "" {
		return invalid("url", "is required")
	}
	return validHeaders(in.Headers)
}

func validDestinationName(name string) error {
	if !destinationNameRE.MatchString(name) {
		return invalid("name", "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if strings.HasPrefix(name, "dst_") {
		return invalid("name", "must not start with dst_ (destination ids do)")
	}
	return nil
}

func validHeaders(h map[string]string) error {
	if len(h) > MaxDestinationHeaders {
		return invalid("headers", "at most %d headers", MaxDestinationHeaders)
	}
	seen := map[string]bool{}
	for k, v := range h {
		if !headerNameRE.MatchString(k) {
			return invalid("headers", "%q is not a header name", k)
		}
		c := http.CanonicalHeaderKey(k)
		if reservedHeaders[c] {
			return invalid("headers", "%s is set by the hub", c)
		}
		if seen[c] {
			return invalid("headers", "%s is given twice", c)
		}
		seen[c] = true
		if len(v) > 1024 || strings.ContainsAny(v, "\r\n\x00") {
			return invalid("headers", "the value of %s must be at most 1024 characters on one line", c)
		}
	}
	return nil
}

// HeaderNames returns the canonical, sorted names of h.
func HeaderNames(h map[string]string) []string {
	out := make([]string, 0, len(h))
	for k := range h {
		out = append(out, http.CanonicalHeaderKey(k))
	}
	slices.Sort(out)
	return out
}

// DestinationUpdate changes a destination; nil fields stay as they are.
// Headers, when given, replace all of them.
type DestinationUpdate struct {
	Name    *string            `json:"name"`
	URL     *string            `json:"url"`
	Headers *map[string]string `json:"headers"`
}

// Validate checks the update.
func (up *DestinationUpdate) Validate() error {
	if up.Name != nil {
		if err := validDestinationName(*up.Name); err != nil {
			return err
		}
	}
	if up.URL != nil && strings.TrimSpace(*up.URL) == "" {
		return invalid("url", "must not be empty")
	}
	if up.Headers != nil {
		return validHeaders(*up.Headers)
	}
	return nil
}
