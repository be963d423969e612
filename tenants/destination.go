package tenants

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Destination is where a tenant's rules send messages: an HTTPS webhook
// or the tenant's own Kafka cluster. A webhook's signing secret is shown
// once, when it is made or rotated; its header values (often credentials)
// are never shown again either, only their names. A Kafka destination's
// SASL password is never shown again.
type Destination struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Type string `json:"type"`
	// URL and Headers are a webhook's; "" and [] for Kafka.
	URL     string   `json:"url"`
	Headers []string `json:"headers"`
	// Kafka is a Kafka destination's cluster and topic, without the
	// password; nil for a webhook.
	Kafka *Kafka `json:"kafka,omitempty"`
	// OutboxPolicy is what its full outbox does with a new message;
	// "" follows the tenant's outbox_policy.
	OutboxPolicy OutboxPolicy `json:"outbox_policy,omitempty"`
	// MaxOutbox bounds its outbox below the tenant's max_outbox quota;
	// 0 is the quota.
	MaxOutbox int64     `json:"max_outbox,omitempty"`
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
	Secret   string // a webhook's signing secret; "" for Kafka
	Headers  string // sealed JSON object of header values; "" if none
	Password string // a Kafka destination's SASL password; "" without SASL
}

// The destination types.
const (
	DestinationWebhook = "webhook"
	DestinationKafka   = "kafka"
	// DestinationOperatorKafka is the operator's Kafka export, built in
	// (OperatorKafkaDestination); a tenant cannot make one.
	DestinationOperatorKafka = "operator_kafka"
)

// Kafka is a tenant's own Kafka cluster as a destination: where the hub
// produces each message as one record keyed by its device.
type Kafka struct {
	// Brokers are the bootstrap servers, host:port.
	Brokers []string `json:"brokers"`
	Topic   string   `json:"topic"`
	// TLS connects over TLS; CA (PEM), if given, is what the brokers'
	// certificates must chain to instead of the system's roots;
	// ServerName, if given, is the name they must carry instead of the
	// host dialled.
	TLS        bool   `json:"tls"`
	CA         string `json:"ca,omitempty"`
	ServerName string `json:"server_name,omitempty"`
	// SASL authenticates the hub; nil: none.
	SASL *KafkaSASL `json:"sasl,omitempty"`
}

// KafkaSASL is how the hub authenticates to a tenant's Kafka. Password is
// given on input only: it is sealed and never returned.
type KafkaSASL struct {
	Mechanism string `json:"mechanism"`
	Username  string `json:"username"`
	Password  string `json:"password,omitempty"`
}

// The SASL mechanisms a Kafka destination may use.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// MaxKafkaBrokers caps a Kafka destination's bootstrap servers.
const MaxKafkaBrokers = 10

// ReservedKafkaTopicPrefix starts the hub's own Kafka topics (roost.events,
// roost.fabric, the operator's export roost.<tenant>.…): no tenant's Kafka
// destination may name one, in any case.
const ReservedKafkaTopicPrefix = "roost."

// kafkaTopicRE is what Kafka accepts as a topic name.
var kafkaTopicRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,249}$`)

// Validate checks a Kafka destination's settings. needPassword: SASL
// must come with a password (a new destination; an update may keep the
// one sealed before).
func (k *Kafka) Validate(needPassword bool) error {
	if len(k.Brokers) == 0 {
		return invalid("kafka.brokers", "at least one bootstrap server is required")
	}
	if len(k.Brokers) > MaxKafkaBrokers {
		return invalid("kafka.brokers", "at most %d bootstrap servers", MaxKafkaBrokers)
	}
	for _, b := range k.Brokers {
		host, port, err := net.SplitHostPort(b)
		n, perr := strconv.Atoi(port)
		if err != nil || host == "" || len(host) > 253 || perr != nil || n < 1 || n > 65535 || strings.ContainsAny(host, "/@ ") {
			return invalid("kafka.brokers", "%q is not host:port", b)
		}
	}
	if !kafkaTopicRE.MatchString(k.Topic) || k.Topic == "." || k.Topic == ".." {
		return invalid("kafka.topic", "must be 1 to 249 letters, digits, '.', '_' or '-'")
	}
	if strings.HasPrefix(strings.ToLower(k.Topic), ReservedKafkaTopicPrefix) {
		return invalid("kafka.topic", "topics starting with %q are the hub's own (events, the fleet's fabric, the operator's export)", ReservedKafkaTopicPrefix)
	}
	if !k.TLS && (k.CA != "" || k.ServerName != "") {
		return invalid("kafka.tls", "ca and server_name need tls: true")
	}
	if len(k.CA) > 64<<10 {
		return invalid("kafka.ca", "at most 64 KiB of PEM")
	}
	if k.CA != "" {
		if err := validPEM(k.CA); err != nil {
			return invalid("kafka.ca", "%s", err)
		}
	}
	if len(k.ServerName) > 253 || strings.ContainsAny(k.ServerName, "/:@ ") {
		return invalid("kafka.server_name", "must be a host name")
	}
	if s := k.SASL; s != nil {
		switch s.Mechanism {
		case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		default:
			return invalid("kafka.sasl.mechanism", "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
		}
		if s.Username == "" || len(s.Username) > 255 || strings.ContainsAny(s.Username, "\x00\r\n") {
			return invalid("kafka.sasl.username", "must be 1 to 255 characters on one line")
		}
		if needPassword && s.Password == "" {
			return invalid("kafka.sasl.password", "is required")
		}
		if len(s.Password) > 1024 || strings.ContainsRune(s.Password, 0) {
			return invalid("kafka.sasl.password", "at most 1024 characters")
		}
	}
	return nil
}

// validPEM checks that s is one or more PEM certificates.
func validPEM(s string) error {
	rest, n := []byte(s), 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return errorString("holds a " + b.Type + " block; only certificates belong here")
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return errorString("a certificate does not parse: " + err.Error())
		}
		n++
	}
	if n == 0 || strings.TrimSpace(string(rest)) != "" {
		return errorString("must be PEM certificates")
	}
	return nil
}

type errorString string

func (e errorString) Error() string { return string(e) }

// Public returns k without its password: what is stored in the clear and
// shown.
func (k *Kafka) Public() *Kafka {
	if k == nil {
		return nil
	}
	c := *k
	c.Brokers = slices.Clone(k.Brokers)
	if k.SASL != nil {
		s := *k.SASL
		s.Password = ""
		c.SASL = &s
	}
	return &c
}

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

// DestinationInput makes a destination. URL and Kafka's brokers are
// checked by the caller as well, against the hub's address policy
// (dataout.Guard).
type DestinationInput struct {
	Name         string            `json:"name"`
	Type         string            `json:"type"`
	URL          string            `json:"url"`
	Headers      map[string]string `json:"headers"`
	Kafka        *Kafka            `json:"kafka"`
	OutboxPolicy OutboxPolicy      `json:"outbox_policy"`
	MaxOutbox    int64             `json:"max_outbox"`
}

// Validate checks the input.
func (in *DestinationInput) Validate() error {
	if err := validDestinationName(in.Name); err != nil {
		return err
	}
	if err := validDestinationPolicy(in.OutboxPolicy); err != nil {
		return err
	}
	if err := validDestinationMax(in.MaxOutbox); err != nil {
		return err
	}
	switch in.Type {
	case DestinationWebhook:
		if strings.TrimSpace(in.URL) == "" {
			return invalid("url", "is required")
		}
		if in.Kafka != nil {
			return invalid("kafka", "is for type kafka")
		}
		return validHeaders(in.Headers)
	case DestinationKafka:
		if in.URL != "" || len(in.Headers) > 0 {
			return invalid("url", "url and headers are for type webhook")
		}
		if in.Kafka == nil {
			return invalid("kafka", "is required")
		}
		return in.Kafka.Validate(true)
	}
	if in.Type == DestinationOperatorKafka {
		return invalid("type", "the operator's Kafka export is built in ("+OperatorKafka+"); a tenant makes webhook or kafka destinations")
	}
	return invalid("type", "must be webhook or kafka")
}

// validDestinationPolicy checks a destination's outbox_policy: "" (the
// tenant's), drop_oldest or refuse.
func validDestinationPolicy(p OutboxPolicy) error {
	switch p {
	case "", OutboxDropOldest, OutboxRefuse:
		return nil
	}
	return invalid("outbox_policy", "must be drop_oldest, refuse, or empty for the tenant's")
}

// MaxDestinationOutbox is the highest max_outbox a destination may set
// (the largest plan's quota); what applies is never above the tenant's.
const MaxDestinationOutbox = 10_000_000

// validDestinationMax checks a destination's max_outbox: 0 (the tenant's
// quota) to MaxDestinationOutbox.
func validDestinationMax(n int64) error {
	if n < 0 || n > MaxDestinationOutbox {
		return invalid("max_outbox", "must be 0 (the tenant's max_outbox) to %d", MaxDestinationOutbox)
	}
	return nil
}

func validDestinationName(name string) error {
	if !destinationNameRE.MatchString(name) {
		return invalid("name", "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if strings.HasPrefix(name, "dst_") {
		return invalid("name", "must not start with dst_ (destination ids do)")
	}
	if name == OperatorKafka {
		return invalid("name", OperatorKafka+" is the built-in destination for the operator's Kafka export")
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
//
// Kafka, when given, replaces a Kafka destination's settings; a SASL
// without a password keeps the password sealed before, if any.
// SealedPassword is the new password as the caller sealed it.
type DestinationUpdate struct {
	Name    *string            `json:"name"`
	URL     *string            `json:"url"`
	Headers *map[string]string `json:"headers"`
	Kafka   *Kafka             `json:"kafka"`
	// OutboxPolicy, when given, replaces its own; "" follows the
	// tenant's again. MaxOutbox likewise; 0 is the tenant's quota again.
	OutboxPolicy *OutboxPolicy `json:"outbox_policy"`
	MaxOutbox    *int64        `json:"max_outbox"`

	SealedPassword string `json:"-"`
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
	if up.OutboxPolicy != nil {
		if err := validDestinationPolicy(*up.OutboxPolicy); err != nil {
			return err
		}
	}
	if up.MaxOutbox != nil {
		if err := validDestinationMax(*up.MaxOutbox); err != nil {
			return err
		}
	}
	if up.Headers != nil {
		if err := validHeaders(*up.Headers); err != nil {
			return err
		}
	}
	if up.Kafka != nil {
		return up.Kafka.Validate(false)
	}
	return nil
}
