package main

import (
	netmail "net/mail"

	"errors"
	"flag"
	"fmt"
	"github.com/roosthub/roost/mail"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/roosthub/roost"
	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/web"
)

// config is every setting of `roost serve`. Each has a flag and a ROOST_*
// environment twin; a flag wins over its variable, and defaults serve a
// laptop.
type config struct {
	DataDir     string
	DatabaseURL string
	HTTPAddr    string
	MQTTAddr    string
	AdminToken  string
	PublicURL   string
	LogFormat   string
	TokenTTL    time.Duration
	// ConnectTimeout bounds the wait for a device's CONNECT.
	ConnectTimeout time.Duration
	// MaxHandshakes bounds the device connections not yet past their
	// CONNECT; HandshakesPerAddress and HandshakesPerEndpoint bound those
	// from one source address and to one tenant's endpoint.
	MaxHandshakes         int
	HandshakesPerAddress  int
	HandshakesPerEndpoint int
	// MaxNodeConnections bounds the device connections this node holds
	// (0: its open-file limit less a reserve; -1: no bound).
	MaxNodeConnections int
	// HandshakeRatePerAddress and HandshakeBurstPerAddress bound the
	// connection attempts a second from one source address, before
	// anything is read; HandshakeRatePerEndpoint and
	// HandshakeBurstPerEndpoint those to one tenant's endpoint, at the TLS
	// ClientHello. A rate of 0 is no bound.
	HandshakeRatePerAddress   int
	HandshakeBurstPerAddress  int
	HandshakeRatePerEndpoint  int
	HandshakeBurstPerEndpoint int
	// InstanceIdle is how long a tenant broker with nothing in it stays up.
	InstanceIdle time.Duration
	// SessionStore keeps persistent sessions: embedded, memory, redis or hbase.
	SessionStore string
	// StoreSync says when the embedded session store fsyncs: always
	// (each write before it is acknowledged) or interval (every
	// StoreSyncInterval).
	StoreSync         string
	StoreSyncInterval time.Duration
	RedisURL          string
	HBaseURL          string
	// KafkaBrokers, comma-separated, sends lifecycle events to Kafka.
	KafkaBrokers string
	// DebugAddr serves Go's profiler (net/http/pprof); empty: off.
	DebugAddr string
	// Device transports besides plain TCP; empty addresses are off.
	MQTTTLSAddr string
	WSAddr      string
	WSSAddr     string
	TLSCert     string
	TLSKey      string
	DevTLS      bool // makes a local CA and certificate in the data dir
	// MQTTDomain gives each tenant an endpoint of its own over TLS:
	// <tenant>.<MQTTDomain>.
	MQTTDomain string
	// ProxyProtocol names the listeners that expect a PROXY protocol
	// header: mqtt, mqtts, ws, wss, comma-separated.
	ProxyProtocol string
	// Billing: off without StripeKey.
	StripeKey           string
	StripeWebhookSecret string
	StripeAPIURL        string
	StripeMeterEvent    string
	PlansFile           string
	BillingGrace        time.Duration
	// DrainTimeout bounds the drain after SIGTERM; ShutdownWills sends the
	// Wills of the clients the drain disconnects.
	DrainTimeout  time.Duration
	ShutdownWills bool
	// FleetSpread serves every tenant on every data-plane node (the
	// fabric, on the Redis of ROOST_REDIS_URL).
	FleetSpread bool
	// FleetFabric carries a spread fleet's cross-node traffic: redis or
	// kafka.
	FleetFabric string
	// FleetWidenAt: a tenant whose connections at its home pass it is
	// served by up to max_nodes nodes (0: never).
	FleetWidenAt int
	// UsageRetention is how long usage records (also of deleted tenants)
	// are kept.
	UsageRetention time.Duration
	// NodeURL is where a control plane reaches this data-plane node's
	// internal API; empty: this host's name and the HTTP port.
	NodeURL string
	// ForwardAddr is where a data-plane node takes the device connections
	// other nodes forward to it (their tenant's home is here).
	ForwardAddr string
	// DeviceEndpoints are the URLs devices connect to, for the console;
	// empty: this process's own listeners.
	DeviceEndpoints string
	// MaxFreeTenants is how many free-plan tenants one account may own
	// (0: no limit).
	MaxFreeTenants int
	// TenantsPerDay is how many tenants one account may create in 24
	// hours, deleted ones included (0: no limit).
	TenantsPerDay int
	// SignupsPerHour bounds the sign-ups a control-plane process takes an
	// hour from everyone together (0: no limit).
	SignupsPerHour int
	// PasswordHashes bounds the Argon2id password hashes computed at once
	// (0: sized to the CPUs and memory).
	PasswordHashes int
	// SMTPURL is the SMTP server the account mails go through; empty:
	// each mail is a file in <data dir>/mail.
	SMTPURL string
	// MailFrom is the sender of the account mails.
	MailFrom string
	// WebhookAllowHosts are hosts (names or IP addresses, comma-separated)
	// webhooks may reach although they are private or loopback, over plain
	// http too.
	WebhookAllowHosts string
	// WebhookTimeout bounds one webhook request.
	WebhookTimeout time.Duration
	// OIDCIssuers are the OpenID Connect issuers people may sign in with:
	// a JSON list (auth.ParseOIDCIssuers).
	OIDCIssuers string
	// SecretKeysOld are earlier operator tokens (comma-separated) whose
	// sealed destination secrets still open (a key ring).
	SecretKeysOld string
	// WebhookBatch is the most messages one delivery request carries.
	WebhookBatch int
	// WebhookRetryHorizon is how long a batch is retried before it goes
	// to the destination's dead letters.
	WebhookRetryHorizon time.Duration
}

// proxied reports whether the named listener expects a PROXY header.
func (c *config) proxied(listener string) bool {
	for _, l := range strings.Split(c.ProxyProtocol, ",") {
		if strings.TrimSpace(l) == listener {
			return true
		}
	}
	return false
}

// tlsListeners reports whether any listener needs a certificate.
func (c *config) tlsListeners() bool { return c.mqttTLSAddr() != "" || c.WSSAddr != "" }

// mqttTLSAddr is the MQTT over TLS listener's address: the one set, or
// :8883 with the development certificate. It is worked out on each use
// rather than written back, so that checking a config never changes it.
func (c *config) mqttTLSAddr() string {
	if c.MQTTTLSAddr == "" && c.DevTLS {
		return ":8883"
	}
	return c.MQTTTLSAddr
}

// setting describes one configuration value.
type setting struct {
	name  string // flag name; the variable is ROOST_ + upper-case name with _
	usage string
	def   string
	dest  any // *string, *time.Duration, *bool or *int
}

func (c *config) settings() []setting {
	return []setting{
		{"data-dir", "directory for the embedded database and generated secrets", "./roost-data", &c.DataDir},
		{"database-url", "empty for embedded SQLite in the data dir, or a postgres:// URL", "", &c.DatabaseURL},
		{"http-addr", "address of the REST API", ":8080", &c.HTTPAddr},
		{"mqtt-addr", "address of the MQTT listener (TCP)", ":1883", &c.MQTTAddr},
		{"admin-token", "operator token for /v1/admin; empty: generated on first start and kept in the data dir", "", &c.AdminToken},
		{"public-url", "URL users reach the API at, for links and messages", "", &c.PublicURL},
		{"oidc-issuers", `OpenID Connect issuers people may sign in with (single sign-on): a JSON list of {"name","label","issuer","client_id","client_secret"}; the callback to register is <public URL>/login/sso/<name>/callback`, "", &c.OIDCIssuers},
		{"log-format", "text or json", "text", &c.LogFormat},
		{"token-ttl", "lifetime of a console session token", "12h", &c.TokenTTL},
		{"connect-timeout", "how long a new MQTT connection may take to send CONNECT", "10s", &c.ConnectTimeout},
		{"max-handshakes", "device connections not yet past their CONNECT, in all; when all are taken the oldest of the address holding the most is closed for a newcomer", "10000", &c.MaxHandshakes},
		{"max-node-connections", "device connections this node holds at once, in handshake, served or forwarded; past it one is closed as it is accepted, so that descriptors stay for health checks, Redis, Postgres and the session store; 0: the open-file limit less a tenth of it (64 to 2048); -1: no bound", "0", &c.MaxNodeConnections},
		{"max-handshakes-per-address", "device connections not yet past their CONNECT from one source address (IPv6: one /64); raise it for large fleets behind one NAT or a balancer without PROXY protocol", "256", &c.HandshakesPerAddress},
		{"max-handshakes-per-endpoint", "device connections not yet past their CONNECT to one tenant's own endpoint (SNI <tenant>.<mqtt-domain>)", "2500", &c.HandshakesPerEndpoint},
		{"handshake-rate-per-address", "device connection attempts a second from one source address (IPv6: one /64), checked as each is accepted, before anything is read; over it they are closed at once; an attempt that becomes a connection does not count; 0: no bound", "100", &c.HandshakeRatePerAddress},
		{"handshake-burst-per-address", "the burst of --handshake-rate-per-address: attempts one address may make at once", "500", &c.HandshakeBurstPerAddress},
		{"handshake-rate-per-endpoint", "device connection attempts a second to one tenant's own endpoint (SNI <tenant>.<mqtt-domain>), checked at the TLS ClientHello, before the key exchange; an attempt that becomes a connection does not count; 0: no bound", "500", &c.HandshakeRatePerEndpoint},
		{"handshake-burst-per-endpoint", "the burst of --handshake-rate-per-endpoint", "2500", &c.HandshakeBurstPerEndpoint},
		{"instance-idle", "how long a tenant's broker with no connections, sessions or retained messages stays up", "5m", &c.InstanceIdle},
		{"session-store", "where persistent sessions live: embedded (Pebble in the data dir), memory, redis or hbase", "embedded", &c.SessionStore},
		{"store-sync", "when the embedded session store fsyncs: always (each write before the publisher is acknowledged: a crash of the machine loses nothing acknowledged) or interval (each write is written to the file before it is acknowledged, surviving the death of the process, and fsynced every --store-sync-interval: a crash of the machine or a power cut loses up to that interval; several times the throughput of one publisher waiting for each acknowledgement)", "always", &c.StoreSync},
		{"store-sync-interval", "with --store-sync=interval, the most time between a write and its fsync (1ms to 1m)", "10ms", &c.StoreSyncInterval},
		{"redis-url", "redis://host:port/db for the redis session store", "", &c.RedisURL},
		{"hbase-url", "http://host:port of HBase's REST gateway for the hbase session store", "", &c.HBaseURL},
		{"kafka-brokers", "host:port[,host:port] of Kafka for lifecycle events (topic roost.events), as well as the directory, which stores them either way", "", &c.KafkaBrokers},
		{"mqtt-tls-addr", "address of the MQTT over TLS listener (ALPN mqtt; with --wss-addr the same, one port serves both); empty: off, or :8883 with --dev-tls", "", &c.MQTTTLSAddr},
		{"ws-addr", "address of the MQTT over WebSocket listener (path /mqtt, subprotocol mqtt); empty: off", "", &c.WSAddr},
		{"wss-addr", "address of the MQTT over WebSocket over TLS listener; empty: off", "", &c.WSSAddr},
		{"tls-cert", "PEM certificate (chain) file of the TLS listeners; reloaded when it changes", "", &c.TLSCert},
		{"tls-key", "PEM private key file of --tls-cert", "", &c.TLSKey},
		{"dev-tls", "make a local CA and a certificate for localhost in <data dir>/tls (clients trust ca.pem) for the TLS listeners", "false", &c.DevTLS},
		{"mqtt-domain", "with it, a TLS connection to <tenant>.<domain> (SNI) belongs to that tenant and may use just the device name as username; the certificate must cover *.<domain>", "", &c.MQTTDomain},
		{"proxy-protocol", "listeners behind a load balancer that sends a PROXY protocol header (v1 or v2), comma-separated: mqtt, mqtts, ws, wss; the others refuse one", "", &c.ProxyProtocol},
		{"stripe-key", "Stripe secret key (sk_… or rk_…); empty: billing off, every tenant on free or the plan the operator sets", "", &c.StripeKey},
		{"stripe-webhook-secret", "signing secret (whsec_…) of the Stripe webhook endpoint pointed at /v1/billing/webhook; required with --stripe-key", "", &c.StripeWebhookSecret},
		{"stripe-api-url", "Stripe's API base URL; empty: Stripe itself (tests point it at stripe-mock)", "", &c.StripeAPIURL},
		{"stripe-meter-event", "event_name of the Stripe billing meter the plans' metered prices use", "roost_messages", &c.StripeMeterEvent},
		{"plans-file", "YAML file of plan prices and quotas over the built-in plans (see docs/billing.md); empty: the built-in plans", "", &c.PlansFile},
		{"billing-grace", "how long a tenant whose payment failed keeps running before it is suspended", "168h", &c.BillingGrace},
		{"drain-timeout", "how long the drain after SIGTERM or Ctrl-C may take (stop accepting, DISCONNECT 0x8B, flush meters and stores) before the process exits anyway", "30s", &c.DrainTimeout},
		{"shutdown-wills", "send the Wills of the devices a shutdown disconnects (off: a server going away is not the device going away)", "false", &c.ShutdownWills},
		{"usage-retention", "how long hourly usage records are kept, deleted tenants' too (whose slugs stay reserved as long)", "9600h", &c.UsageRetention},
		{"node-url", "where control planes reach this data-plane node's internal API (http://host:port of ROOST_HTTP_ADDR); empty: this host's name and port", "", &c.NodeURL},
		{"fleet-spread", "data-plane nodes serve every tenant together, each device on the node it connects to, messages crossing between nodes through the fleet fabric (needs ROOST_SESSION_STORE=redis)", "false", &c.FleetSpread},
		{"fleet-fabric", "what carries a spread fleet's messages between nodes: redis (ROOST_REDIS_URL; persistent sessions live on any node) or kafka (ROOST_KAFKA_BROKERS, topic roost.fabric; persistent sessions live at the tenant's home)", "redis", &c.FleetFabric},
		{"fleet-widen-at", "in a fleet with ROOST_SESSION_STORE=redis, a tenant whose connections at its home pass this many is served by up to its max_nodes quota nodes at once, devices connecting to any of them (0: every tenant stays on one node)", "5000", &c.FleetWidenAt},
		{"forward-addr", "where a data-plane node takes the device connections other nodes forward to it (reachable by the other nodes only; announced with ROOST_NODE_URL's host)", ":1884", &c.ForwardAddr},
		{"device-endpoints", "URLs devices connect to, comma-separated (mqtt://, mqtts://, ws://, wss://), shown in the console's snippets; empty: this process's own listeners (set it for a control plane, or behind a load balancer)", "", &c.DeviceEndpoints},
		{"max-free-tenants", "how many tenants on the free plan one account may own (0: no limit)", "3", &c.MaxFreeTenants},
		{"tenants-per-day", "how many tenants one account may create in 24 hours, deleted ones included (their slugs stay reserved); 0: no limit", "10", &c.TenantsPerDay},
		{"signups-per-hour", "sign-ups a control-plane process takes an hour from all addresses together (each address: 30); 0: no limit", "600", &c.SignupsPerHour},
		{"smtp-url", "SMTP server for account mails (verify, password reset, invitations): smtp://user:password@host:587 (STARTTLS, required off loopback) or smtps://user:password@host:465 (implicit TLS); empty: each mail is written to a file in <data dir>/mail and its path logged", "", &c.SMTPURL},
		{"mail-from", "sender of account mails", "Roost <roost@localhost>", &c.MailFrom},
		{"password-hashes", "password hashes (Argon2id, 19 MiB each) computed at once; 0: two per CPU, at most one per 64 MiB of available memory, at least two", "0", &c.PasswordHashes},
		{"webhook-allow-hosts", "hosts (names or IP addresses, comma-separated, e.g. 127.0.0.1) that webhook destinations may reach although they are loopback, private or link-local, and over plain http; every other private address is refused when the hub connects", "", &c.WebhookAllowHosts},
		{"secret-keys-old", "earlier operator tokens (comma-separated) after ROOST_ADMIN_TOKEN changed: destination secrets and passwords sealed under them still open, and are sealed again under the current token when next read (a delivery or send test)", "", &c.SecretKeysOld},
		{"webhook-timeout", "how long one webhook request (a delivery or a destination's send test) may take, connecting to the receiver's answer", "10s", &c.WebhookTimeout},
		{"webhook-batch", "the most messages one webhook delivery request carries (1 to 1000)", "100", &c.WebhookBatch},
		{"webhook-retry-horizon", "how long a webhook delivery is retried (exponential backoff with jitter) before its messages go to the destination's dead letters", "24h", &c.WebhookRetryHorizon},
		{"debug-addr", "address for Go's profiler at /debug/pprof/ (keep it on loopback: it has no authentication); empty: off", "", &c.DebugAddr},
	}
}

func envName(flagName string) string {
	return "ROOST_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads flags over environment over defaults. A bad value is an
// error that names the setting and what was wrong with it.
func parseConfig(name string, args []string, getenv func(string) string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	for _, s := range c.settings() {
		v := s.def
		if e := getenv(envName(s.name)); e != "" {
			v = e
		}
		usage := fmt.Sprintf("%s (env %s)", s.usage, envName(s.name))
		switch d := s.dest.(type) {
		case *string:
			fs.StringVar(d, s.name, v, usage)
		case *time.Duration:
			dur, err := time.ParseDuration(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not a duration like 12h or 30m", envName(s.name), v)
			}
			fs.DurationVar(d, s.name, dur, usage)
		case *bool:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not true or false", envName(s.name), v)
			}
			fs.BoolVar(d, s.name, b, usage)
		case *int:
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is not a whole number", envName(s.name), v)
			}
			fs.IntVar(d, s.name, n, usage)
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, usageError(fs, c.settings())
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.Validate()
}

// settingGroups are the concerns -h sorts the settings into, in order; a
// setting in none of them is listed under the last, Other.
var settingGroups = []struct {
	title string
	names []string
}{
	{"Storage", []string{"data-dir", "database-url", "session-store", "store-sync", "store-sync-interval", "redis-url", "hbase-url", "usage-retention"}},
	{"HTTP, API and console", []string{"http-addr", "public-url", "admin-token", "secret-keys-old", "token-ttl", "device-endpoints", "debug-addr"}},
	{"Device listeners and TLS", []string{"mqtt-addr", "mqtt-tls-addr", "ws-addr", "wss-addr", "tls-cert", "tls-key", "dev-tls", "mqtt-domain", "proxy-protocol"}},
	{"Device connection limits", []string{"connect-timeout", "max-handshakes", "max-handshakes-per-address", "max-handshakes-per-endpoint",
		"handshake-rate-per-address", "handshake-burst-per-address", "handshake-rate-per-endpoint", "handshake-burst-per-endpoint", "max-node-connections", "instance-idle"}},
	{"Accounts and sign-up limits", []string{"max-free-tenants", "tenants-per-day", "signups-per-hour", "password-hashes", "oidc-issuers", "smtp-url", "mail-from"}},
	{"Billing (Stripe)", []string{"stripe-key", "stripe-webhook-secret", "stripe-api-url", "stripe-meter-event", "plans-file", "billing-grace"}},
	{"Events, Kafka and webhooks", []string{"kafka-brokers", "webhook-allow-hosts", "webhook-timeout", "webhook-batch", "webhook-retry-horizon"}},
	{"Fleet (control and data planes apart)", []string{"node-url", "forward-addr", "fleet-spread", "fleet-fabric", "fleet-widen-at"}},
	{"Shutdown and logs", []string{"drain-timeout", "shutdown-wills", "log-format"}},
}

// commandSummary is what each serving command is, for its -h.
var commandSummary = map[string]string{
	roleAll:     "Runs the whole hub in one process: the API and console, and the MQTT listeners with a broker per tenant.",
	roleControl: "Runs the API, console and billing; data-plane nodes (roost dataplane) run apart on the same Postgres.",
	roleData:    "Runs the MQTT listeners and the tenants' brokers; the control plane (roost controlplane) runs apart on the same Postgres.",
	"migrate":   "Applies the database migrations (ROOST_DATABASE_URL, or the embedded database in ROOST_DATA_DIR) and exits; it takes serve's flags and reads those two.",
}

// usageError is a command's -h: a usage line, what it runs, and its
// settings grouped by concern, each with its variable and default.
func usageError(fs *flag.FlagSet, settings []setting) error {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: roost %s [flags]\n\n", fs.Name())
	if s := commandSummary[fs.Name()]; s != "" {
		b.WriteString(s + "\n")
	}
	b.WriteString("Every flag has an environment twin (ROOST_ and its name in capitals, - as _); a flag wins over its variable.\n")
	byName := map[string]setting{}
	for _, s := range settings {
		byName[s.name] = s
	}
	write := func(s setting) {
		kind := ""
		switch s.dest.(type) {
		case *string:
			kind = " string"
		case *time.Duration:
			kind = " duration"
		case *int:
			kind = " number"
		}
		fmt.Fprintf(&b, "  --%s%s\n        %s\n        %s", s.name, kind, s.usage, envName(s.name))
		if s.def != "" {
			fmt.Fprintf(&b, ", default %s", s.def)
		}
		b.WriteString("\n")
		delete(byName, s.name)
	}
	for _, g := range settingGroups {
		fmt.Fprintf(&b, "\n%s:\n", g.title)
		for _, n := range g.names {
			if s, ok := byName[n]; ok {
				write(s)
			}
		}
	}
	if len(byName) > 0 {
		b.WriteString("\nOther:\n")
		for _, s := range settings {
			if _, ok := byName[s.name]; ok {
				write(s)
			}
		}
	}
	return &helpError{text: b.String()}
}

type helpError struct{ text string }

func (e *helpError) Error() string { return e.text }

// Validate checks every setting, and changes none: defaults that depend
// on other settings are worked out where they are used (mqttTLSAddr).
func (c *config) Validate() error {
	if c.DataDir == "" {
		return errors.New("ROOST_DATA_DIR: must not be empty")
	}
	if c.DatabaseURL != "" {
		u, err := url.Parse(c.DatabaseURL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
			return errors.New("ROOST_DATABASE_URL: must be empty (embedded SQLite) or postgres://user:password@host:port/db")
		}
	}
	if err := validAddr(c.HTTPAddr); err != nil {
		return fmt.Errorf("ROOST_HTTP_ADDR: %w", err)
	}
	if _, err := auth.ParseOIDCIssuers(c.OIDCIssuers); err != nil {
		return fmt.Errorf("ROOST_OIDC_ISSUERS: %w", err)
	}
	if err := validAddr(c.MQTTAddr); err != nil {
		return fmt.Errorf("ROOST_MQTT_ADDR: %w", err)
	}
	for name, addr := range map[string]string{"ROOST_DEBUG_ADDR": c.DebugAddr, "ROOST_MQTT_TLS_ADDR": c.mqttTLSAddr(), "ROOST_WS_ADDR": c.WSAddr, "ROOST_WSS_ADDR": c.WSSAddr} {
		if addr != "" {
			if err := validAddr(addr); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	if c.MQTTDomain != "" && !validDomain(c.MQTTDomain) {
		return fmt.Errorf("ROOST_MQTT_DOMAIN: %q is not a domain name like mqtt.example.com", c.MQTTDomain)
	}
	for _, l := range strings.Split(c.ProxyProtocol, ",") {
		switch l = strings.TrimSpace(l); l {
		case "", "mqtt", "mqtts", "ws", "wss":
		default:
			return fmt.Errorf("ROOST_PROXY_PROTOCOL: %q is not a listener (mqtt, mqtts, ws or wss)", l)
		}
	}
	if tlsAddr := c.mqttTLSAddr(); tlsAddr != "" && tlsAddr == c.WSSAddr && c.proxied("mqtts") != c.proxied("wss") {
		return errors.New("ROOST_PROXY_PROTOCOL: mqtts and wss share a port, so both or neither expect the header")
	}
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("ROOST_TLS_CERT and ROOST_TLS_KEY: set both or neither")
	case c.TLSCert != "" && c.DevTLS:
		return errors.New("ROOST_DEV_TLS: the development certificate and ROOST_TLS_CERT exclude each other")
	case c.tlsListeners() && c.TLSCert == "" && !c.DevTLS:
		return errors.New("ROOST_TLS_CERT: the TLS listeners need a certificate and key (or ROOST_DEV_TLS=true on a laptop)")
	}
	if c.HTTPAddr == c.MQTTAddr && !strings.HasSuffix(c.HTTPAddr, ":0") {
		return errors.New("ROOST_MQTT_ADDR: must differ from ROOST_HTTP_ADDR")
	}
	if c.ConnectTimeout < 100*time.Millisecond || c.ConnectTimeout > 5*time.Minute {
		return errors.New("ROOST_CONNECT_TIMEOUT: must be between 100ms and 5m")
	}
	for _, b := range []struct {
		name string
		n    int
	}{{"ROOST_MAX_HANDSHAKES", c.MaxHandshakes}, {"ROOST_MAX_HANDSHAKES_PER_ADDRESS", c.HandshakesPerAddress}, {"ROOST_MAX_HANDSHAKES_PER_ENDPOINT", c.HandshakesPerEndpoint}} {
		if b.n < 1 || b.n > 1_000_000 {
			return fmt.Errorf("%s: must be between 1 and 1000000", b.name)
		}
	}
	if c.MaxNodeConnections < -1 || c.MaxNodeConnections > 100_000_000 {
		return errors.New("ROOST_MAX_NODE_CONNECTIONS: must be -1 (no bound), 0 (the open-file limit less a reserve) or a bound up to 100000000")
	}
	for _, b := range []struct {
		name string
		n    int
		min  int
	}{{"ROOST_HANDSHAKE_RATE_PER_ADDRESS", c.HandshakeRatePerAddress, 0}, {"ROOST_HANDSHAKE_BURST_PER_ADDRESS", c.HandshakeBurstPerAddress, 1},
		{"ROOST_HANDSHAKE_RATE_PER_ENDPOINT", c.HandshakeRatePerEndpoint, 0}, {"ROOST_HANDSHAKE_BURST_PER_ENDPOINT", c.HandshakeBurstPerEndpoint, 1}} {
		if b.n < b.min || b.n > 1_000_000 {
			return fmt.Errorf("%s: must be between %d and 1000000", b.name, b.min)
		}
	}
	if c.InstanceIdle < time.Second {
		return errors.New("ROOST_INSTANCE_IDLE: must be at least 1s")
	}
	if c.FleetWidenAt < 0 {
		return errors.New("ROOST_FLEET_WIDEN_AT: must not be negative")
	}
	if c.FleetSpread && c.SessionStore != "redis" {
		return errors.New("ROOST_FLEET_SPREAD: a spread fleet needs ROOST_SESSION_STORE=redis (its nodes share sessions and routes there)")
	}
	switch c.FleetFabric {
	case "redis":
	case "kafka":
		if c.FleetSpread && len(c.kafkaBrokers()) == 0 {
			return errors.New("ROOST_FLEET_FABRIC: the kafka fabric needs ROOST_KAFKA_BROKERS")
		}
	default:
		return fmt.Errorf("ROOST_FLEET_FABRIC: %q is not redis or kafka", c.FleetFabric)
	}
	switch c.SessionStore {
	case "embedded", "memory":
	case "redis":
		if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			return errors.New("ROOST_REDIS_URL: the redis session store needs redis://host:port[/db]")
		}
	case "hbase":
		if u, err := url.Parse(c.HBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("ROOST_HBASE_URL: the hbase session store needs http://host:port of the REST gateway")
		}
	default:
		return fmt.Errorf("ROOST_SESSION_STORE: %q is not embedded, memory, redis or hbase", c.SessionStore)
	}
	if err := c.validateStoreSync(); err != nil {
		return err
	}
	for _, b := range c.kafkaBrokers() {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return fmt.Errorf("ROOST_KAFKA_BROKERS: %q is not host:port", b)
		}
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		return errors.New("ROOST_ADMIN_TOKEN: must be at least 16 characters, or empty to generate one")
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("ROOST_PUBLIC_URL: must be an http:// or https:// URL")
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return errors.New("ROOST_LOG_FORMAT: must be text or json")
	}
	if c.NodeURL != "" {
		u, err := url.Parse(c.NodeURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("ROOST_NODE_URL: must be an http:// or https:// URL")
		}
	}
	if err := validAddr(c.ForwardAddr); err != nil {
		return fmt.Errorf("ROOST_FORWARD_ADDR: %w", err)
	}
	if _, err := c.deviceEndpoints(); err != nil {
		return err
	}
	if c.UsageRetention < 31*24*time.Hour {
		return errors.New("ROOST_USAGE_RETENTION: must be at least 744h (a month, for the monthly allowance and invoices)")
	}
	if c.DrainTimeout < time.Second || c.DrainTimeout > time.Hour {
		return errors.New("ROOST_DRAIN_TIMEOUT: must be between 1s and 1h")
	}
	if err := c.validateBilling(); err != nil {
		return err
	}
	if c.TokenTTL < time.Minute || c.TokenTTL > 30*24*time.Hour {
		return errors.New("ROOST_TOKEN_TTL: must be between 1m and 720h")
	}
	if err := c.validateWebhooks(); err != nil {
		return err
	}
	return c.validateAccountLimits()
}

// validateStoreSync checks the embedded store's sync policy.
func (c *config) validateStoreSync() error {
	switch c.StoreSync {
	case "always":
	case "interval":
		if c.SessionStore != "embedded" {
			return fmt.Errorf("ROOST_STORE_SYNC: interval applies to the embedded session store only, not %s", c.SessionStore)
		}
	default:
		return fmt.Errorf("ROOST_STORE_SYNC: %q is not always or interval", c.StoreSync)
	}
	if c.StoreSyncInterval < time.Millisecond || c.StoreSyncInterval > time.Minute {
		return errors.New("ROOST_STORE_SYNC_INTERVAL: must be between 1ms and 1m")
	}
	return nil
}

// storeSyncInterval is the embedded store's sync interval: 0 to fsync
// each write.
func (c *config) storeSyncInterval() time.Duration {
	if c.StoreSync == "interval" {
		return c.StoreSyncInterval
	}
	return 0
}

// validateWebhooks checks the webhook settings.
func (c *config) validateWebhooks() error {
	if _, err := dataout.NewGuard(c.WebhookAllowHosts, false); err != nil {
		return fmt.Errorf("ROOST_WEBHOOK_ALLOW_HOSTS: %w", err)
	}
	if c.WebhookTimeout < 100*time.Millisecond || c.WebhookTimeout > 5*time.Minute {
		return errors.New("ROOST_WEBHOOK_TIMEOUT: must be between 100ms and 5m")
	}
	if c.WebhookBatch < 1 || c.WebhookBatch > 1000 {
		return errors.New("ROOST_WEBHOOK_BATCH: must be between 1 and 1000")
	}
	if c.WebhookRetryHorizon < time.Second || c.WebhookRetryHorizon > 30*24*time.Hour {
		return errors.New("ROOST_WEBHOOK_RETRY_HORIZON: must be between 1s and 720h")
	}
	for _, t := range strings.Split(c.SecretKeysOld, ",") {
		if t = strings.TrimSpace(t); t != "" && len(t) < 16 {
			return errors.New("ROOST_SECRET_KEYS_OLD: each token must be at least 16 characters")
		}
	}
	return nil
}

// sealer builds the sealer of destination secrets: keyed by the operator
// token, opening what earlier tokens (ROOST_SECRET_KEYS_OLD) sealed.
func (c *config) sealer(adminToken string) (*dataout.Sealer, error) {
	return dataout.NewSealer(dataout.KeyFromToken(adminToken), dataout.KeysFromTokens(c.SecretKeysOld)...)
}

// development reports whether the hub runs as on a laptop: on its
// embedded database and not published over https. Webhooks may then use
// plain http:// to public hosts; the address rules still apply.
func (c *config) development() bool {
	return c.DatabaseURL == "" && !strings.HasPrefix(c.PublicURL, "https://")
}

// webhookSender builds the sender destinations' requests go through; log
// gets the addresses the guard refused, which tenants are not told.
func (c *config) webhookSender(log *slog.Logger) (*dataout.Sender, error) {
	g, err := dataout.NewGuard(c.WebhookAllowHosts, c.development())
	if err != nil {
		return nil, fmt.Errorf("ROOST_WEBHOOK_ALLOW_HOSTS: %w", err)
	}
	g.Log = log
	// No tenant's Kafka destination may reach the hub's own brokers.
	g.DenyKafkaBrokers(c.kafkaBrokers())
	return dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: c.WebhookTimeout, UserAgent: "Roost-Webhook/" + roost.Version})
}

// validateAccountLimits checks the limits on accounts and sign-ups.
func (c *config) validateAccountLimits() error {
	if c.MaxFreeTenants < 0 || c.MaxFreeTenants > 10_000 {
		return errors.New("ROOST_MAX_FREE_TENANTS: must be between 0 (no limit) and 10000")
	}
	if c.TenantsPerDay < 0 || c.TenantsPerDay > 100_000 {
		return errors.New("ROOST_TENANTS_PER_DAY: must be between 0 (no limit) and 100000")
	}
	if c.SignupsPerHour < 0 || c.SignupsPerHour > 1_000_000 {
		return errors.New("ROOST_SIGNUPS_PER_HOUR: must be between 0 (no limit) and 1000000")
	}
	if c.PasswordHashes < 0 || c.PasswordHashes > 1024 {
		return errors.New("ROOST_PASSWORD_HASHES: must be between 0 (sized to the machine) and 1024")
	}
	if _, err := netmail.ParseAddress(c.MailFrom); err != nil {
		return fmt.Errorf("ROOST_MAIL_FROM: %q is not an address like Roost <roost@example.com>", c.MailFrom)
	}
	if c.SMTPURL != "" {
		if _, err := mail.NewSMTP(mail.SMTPConfig{URL: c.SMTPURL, From: c.MailFrom}); err != nil {
			return err
		}
	}
	return nil
}

// authConfig is the auth front's share of the settings.
func (c *config) authConfig() auth.Config {
	cfg := auth.Config{TokenTTL: c.TokenTTL, MaxFreeTenants: c.MaxFreeTenants, TenantsPerDay: c.TenantsPerDay, SignupsPerHour: c.SignupsPerHour}
	cfg.OIDC, _ = auth.ParseOIDCIssuers(c.OIDCIssuers) // checked by Validate
	if c.MaxFreeTenants == 0 {
		cfg.MaxFreeTenants = -1 // no limit
	}
	if c.TenantsPerDay == 0 {
		cfg.TenantsPerDay = -1
	}
	if c.SignupsPerHour == 0 {
		cfg.SignupsPerHour = -1
	}
	return cfg
}

func (c *config) validateBilling() error {
	switch {
	case c.StripeKey == "" && (c.StripeWebhookSecret != "" || c.StripeAPIURL != ""):
		return errors.New("ROOST_STRIPE_KEY: billing is off without it, so the other ROOST_STRIPE_* settings mean nothing; set it or unset them")
	case c.StripeKey == "":
	case !strings.HasPrefix(c.StripeKey, "sk_") && !strings.HasPrefix(c.StripeKey, "rk_"):
		return errors.New("ROOST_STRIPE_KEY: must be a Stripe secret or restricted key (sk_… or rk_…), never a publishable one")
	case c.StripeWebhookSecret == "":
		return errors.New("ROOST_STRIPE_WEBHOOK_SECRET: billing needs the webhook endpoint's signing secret (whsec_…) to learn of payments")
	case !strings.HasPrefix(c.StripeWebhookSecret, "whsec_"):
		return errors.New("ROOST_STRIPE_WEBHOOK_SECRET: must be a webhook signing secret (whsec_…)")
	}
	if c.StripeAPIURL != "" {
		u, err := url.Parse(c.StripeAPIURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("ROOST_STRIPE_API_URL: must be an http:// or https:// URL")
		}
	}
	if c.StripeMeterEvent == "" {
		return errors.New("ROOST_STRIPE_METER_EVENT: must not be empty")
	}
	if c.BillingGrace < time.Minute || c.BillingGrace > 90*24*time.Hour {
		return errors.New("ROOST_BILLING_GRACE: must be between 1m and 2160h (90 days)")
	}
	return nil
}

// endpointNames names device endpoints by scheme.
var endpointNames = map[string]string{"mqtt": "MQTT", "mqtts": "MQTT over TLS", "ws": "WebSocket", "wss": "WebSocket over TLS"}

// deviceEndpoints parses ROOST_DEVICE_ENDPOINTS.
func (c *config) deviceEndpoints() ([]web.Endpoint, error) {
	var out []web.Endpoint
	for _, s := range strings.Split(c.DeviceEndpoints, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || endpointNames[u.Scheme] == "" || u.Host == "" {
			return nil, fmt.Errorf("ROOST_DEVICE_ENDPOINTS: %q is not an mqtt://, mqtts://, ws:// or wss:// URL with a host", s)
		}
		out = append(out, web.Endpoint{Name: endpointNames[u.Scheme], URL: s})
	}
	return out, nil
}

// validateRole checks what running apart needs: a shared Postgres, and an
// operator token that every process is given rather than one generated
// into a data dir only one of them reads.
func (c *config) validateRole(role string) error {
	if role == roleAll {
		return nil
	}
	// Every missing setting at once: one start to learn them all.
	var missing []string
	if c.DatabaseURL == "" {
		missing = append(missing, fmt.Sprintf("ROOST_DATABASE_URL: roost %s shares Postgres with the other plane; set a postgres:// URL", role))
	}
	if c.AdminToken == "" {
		missing = append(missing, fmt.Sprintf("ROOST_ADMIN_TOKEN: roost %s needs the operator token given, the same to every process", role))
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return errors.New(missing[0])
	}
	return fmt.Errorf("roost %s needs %d more settings:\n  %s", role, len(missing), strings.Join(missing, "\n  "))
}

func (c *config) kafkaBrokers() []string {
	var out []string
	for _, b := range strings.Split(c.KafkaBrokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

var domainRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validDomain(d string) bool { return len(d) <= 200 && domainRE.MatchString(d) }

func validAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if host != "" && net.ParseIP(host) == nil && strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q has a bad host", addr)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("%q has a bad port", addr)
	}
	return nil
}
