package dataout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrRefusedAddress: a webhook's host is, or resolves to, an address the
// hub does not send to (its own network: loopback, private, link-local
// with the cloud metadata service, and the like).
var ErrRefusedAddress = errors.New("refused address")

// blocked are the ranges no webhook may reach unless allowed: loopback,
// private, link-local (169.254.169.254, the metadata service, included),
// unspecified, multicast, CGNAT, the reserved ranges next to them, and
// Azure's platform address.
var blocked = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",      // this network, unspecified
		"10.0.0.0/8",     // private
		"100.64.0.0/10",  // CGNAT
		"127.0.0.0/8",    // loopback
		"169.254.0.0/16", // link-local, metadata
		"172.16.0.0/12",  // private
		"192.0.0.0/24",   // IETF protocol assignments
		"192.168.0.0/16", // private
		"198.18.0.0/15",  // benchmarking
		// Azure's platform address (the wireserver: the VM agent's
		// goal state and health reports), public but answering the VMs
		// of Azure only, as a metadata service does.
		"168.63.129.16/32",
		"224.0.0.0/4",    // multicast
		"240.0.0.0/4",    // reserved, broadcast
		"::/96",          // unspecified, loopback, IPv4-compatible
		"fc00::/7",       // unique local
		"fe80::/10",      // link-local
		"fec0::/10",      // site-local (deprecated)
		"ff00::/8",       // multicast
		"100::/64",       // discard
		"2001:db8::/32",  // documentation
		"64:ff9b:1::/48", // local-use NAT64
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Refused reports whether a is an address webhooks may not reach. IPv4
// mapped into IPv6, NAT64 and 6to4 addresses are judged by the IPv4
// address they carry.
func Refused(a netip.Addr) bool {
	// A zone (fe80::1%eth0) would make every prefix miss it.
	a = a.Unmap().WithZone("")
	if a.Is6() {
		b := a.As16()
		switch {
		case netip.MustParsePrefix("64:ff9b::/96").Contains(a):
			return Refused(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		case netip.MustParsePrefix("2002::/16").Contains(a):
			return Refused(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
		}
	}
	for _, p := range blocked {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Guard decides which hosts webhooks may reach: any public address, and
// the hosts the operator allows (ROOST_WEBHOOK_ALLOW_HOSTS) even when
// private. Development relaxes only the HTTPS requirement.
type Guard struct {
	allowNames map[string]bool
	allowAddrs map[netip.Addr]bool
	// AllowHTTP lets plain http:// URLs reach every host (development);
	// without it, only allowed hosts may use http://.
	AllowHTTP bool
	// operatorKafka: the hub's own Kafka brokers, host:port with the host
	// in lower case (DenyKafkaBrokers).
	operatorKafka []string
	// Log notes, for the operator, the address a dial was refused and why
	// (what the tenant is told names neither); nil: not logged.
	Log *slog.Logger
}

// NewGuard returns a guard allowing hosts: names or IP addresses,
// comma-separated; blanks ignored.
func NewGuard(hosts string, allowHTTP bool) (*Guard, error) {
	g := &Guard{allowNames: map[string]bool{}, allowAddrs: map[netip.Addr]bool{}, AllowHTTP: allowHTTP}
	for _, h := range strings.Split(hosts, ",") {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" {
			continue
		}
		if a, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
			g.allowAddrs[a.Unmap()] = true
			continue
		}
		if strings.ContainsAny(h, "/: ") {
			return nil, fmt.Errorf("%q is not a host name or IP address", h)
		}
		g.allowNames[strings.TrimSuffix(h, ".")] = true
	}
	return g, nil
}

// allowedName reports whether host (a name or a literal address) is on
// the operator's list.
func (g *Guard) allowedName(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return g.allowAddrs[a.Unmap()]
	}
	return g.allowNames[host]
}

// CheckURL checks a webhook URL as given, before anything is sent: an
// absolute http(s) URL with a host and no credentials, HTTPS unless the
// host is allowed or the hub is in development, and no refused literal
// address. Names are checked again at every connection (see Dial).
func (g *Guard) CheckURL(raw string) error {
	if len(raw) > 2048 {
		return errors.New("at most 2048 characters")
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return errors.New("must be an absolute http:// or https:// URL with a host")
	}
	if u.User != nil {
		return errors.New("must not carry credentials: put them in a header")
	}
	if u.Fragment != "" {
		return errors.New("must not have a fragment")
	}
	host := u.Hostname()
	switch u.Scheme {
	case "https":
	case "http":
		if !g.AllowHTTP && !g.allowedName(host) {
			return errors.New("must be https:// (plain http:// only to hosts in ROOST_WEBHOOK_ALLOW_HOSTS, or in development)")
		}
	default:
		return errors.New("must be an http:// or https:// URL")
	}
	if a, err := netip.ParseAddr(host); err == nil && Refused(a) && !g.allowedName(host) {
		return fmt.Errorf("%w: %s is not a public address", ErrRefusedAddress, host)
	}
	return nil
}

// DialContext connects to addr (host:port) for a webhook. An allowed host
// is dialled as is; any other is resolved and every address it is
// connected to is checked in the dialer's Control function, just before
// connect(2): a name that resolves to a public address when the URL is
// saved and to 127.0.0.1 later (DNS rebinding) is still refused.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{}
	if g.allowedName(host) {
		return d.DialContext(ctx, network, addr)
	}
	d.Control = g.control
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, g.hideWhere(host, err)
	}
	return c, nil
}

// hideWhere turns a failed dial of host into what its tenant may read. A
// refused address, and a name that does not resolve, both become "host
// does not resolve to a public address", naming no address: the error
// reaches the tenant (a send test's answer, the destination's last error),
// and "10.1.2.3 is not a public address" beside "no such host" would let
// any tenant map which of the hub's internal names exist and where they
// point. The operator's log keeps the real error. Other failures (a
// public address that does not answer) are returned as they are.
func (g *Guard) hideWhere(host string, err error) error {
	var dns *net.DNSError
	if !errors.Is(err, ErrRefusedAddress) && !errors.As(err, &dns) {
		return err
	}
	if g.Log != nil {
		g.Log.Info("a destination's host is refused: it has no public address", "host", host, "err", err)
	}
	if errors.Is(err, ErrOperatorKafka) {
		return fmt.Errorf("%w (%s)", ErrOperatorKafka, host)
	}
	return fmt.Errorf("%w: %s does not resolve to a public address", ErrRefusedAddress, host)
}

func (g *Guard) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrRefusedAddress, address)
	}
	if a := ap.Addr().Unmap().WithZone(""); Refused(a) && !g.allowAddrs[a] {
		return fmt.Errorf("%w: %s is not a public address", ErrRefusedAddress, a)
	}
	return nil
}

// ErrOperatorKafka: a tenant's Kafka destination names, or resolves to,
// one of the hub's own Kafka brokers (ROOST_KAFKA_BROKERS), which carry
// every tenant's events and messages.
var ErrOperatorKafka = fmt.Errorf("%w: the hub's own Kafka broker", ErrRefusedAddress)

// DenyKafkaBrokers names the hub's own Kafka brokers (host:port), which
// no tenant's Kafka destination may reach, whether by the same name, by
// another name resolving to the same address and port, or by an address
// the cluster advertises. Call it once, before the guard is used.
func (g *Guard) DenyKafkaBrokers(brokers []string) {
	for _, b := range brokers {
		host, port, err := net.SplitHostPort(strings.TrimSpace(b))
		if err != nil {
			continue // the configuration's own validation reports it
		}
		g.operatorKafka = append(g.operatorKafka, net.JoinHostPort(strings.ToLower(strings.TrimSuffix(host, ".")), port))
	}
}

// operatorKafkaAddrs resolves the hub's own Kafka brokers to addresses
// and ports, at the time of asking: a name of theirs may move.
func (g *Guard) operatorKafkaAddrs(ctx context.Context) (map[netip.AddrPort]bool, error) {
	if len(g.operatorKafka) == 0 {
		return nil, nil
	}
	return resolveBrokers(ctx, g.operatorKafka)
}

// resolveBrokers resolves host:port pairs (names or literal addresses).
func resolveBrokers(ctx context.Context, brokers []string) (map[netip.AddrPort]bool, error) {
	out := map[netip.AddrPort]bool{}
	for _, b := range brokers {
		host, ps, err := net.SplitHostPort(b)
		if err != nil {
			return nil, err
		}
		port, err := net.DefaultResolver.LookupPort(ctx, "tcp", ps)
		if err != nil {
			return nil, err
		}
		if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
			out[netip.AddrPortFrom(a.Unmap().WithZone(""), uint16(port))] = true
			continue
		}
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			out[netip.AddrPortFrom(a.Unmap().WithZone(""), uint16(port))] = true
		}
	}
	return out, nil
}

// isOperatorKafkaName reports whether a broker (host:port) is one of the
// hub's own by its name or literal address as written.
func (g *Guard) isOperatorKafkaName(broker string) bool {
	host, port, err := net.SplitHostPort(broker)
	if err != nil {
		return false
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	a, aerr := netip.ParseAddr(strings.Trim(host, "[]"))
	for _, o := range g.operatorKafka {
		oh, op, _ := net.SplitHostPort(o)
		if op != port {
			continue
		}
		if oh == host {
			return true
		}
		if oa, err := netip.ParseAddr(strings.Trim(oh, "[]")); err == nil && aerr == nil && oa.Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}

// CheckKafka applies the hub's address policy to a Kafka destination's
// bootstrap servers (CheckBrokers), then refuses the hub's own
// (CheckNotOperatorKafka): what the API and the console check before
// storing them.
func (g *Guard) CheckKafka(ctx context.Context, brokers []string, tls bool) error {
	if err := g.CheckBrokers(brokers, tls); err != nil {
		return err
	}
	return g.CheckNotOperatorKafka(ctx, brokers)
}

// CheckNotOperatorKafka refuses a Kafka destination's bootstrap servers
// that are the hub's own brokers, by name or resolved now: a name that
// does not resolve is left to the check at each connection (DialKafka).
func (g *Guard) CheckNotOperatorKafka(ctx context.Context, brokers []string) error {
	for _, b := range brokers {
		if g.isOperatorKafkaName(b) {
			return fmt.Errorf("%w: %s", ErrOperatorKafka, b)
		}
	}
	if len(g.operatorKafka) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	own, err := g.operatorKafkaAddrs(ctx)
	if err != nil {
		return nil // checked again at each connection
	}
	for _, b := range brokers {
		theirs, err := resolveBrokers(ctx, []string{b})
		if err != nil {
			continue // checked again at each connection
		}
		for ap := range theirs {
			if own[ap] {
				// Not the address: it is the hub's, not the tenant's.
				return fmt.Errorf("%w: %s", ErrOperatorKafka, b)
			}
		}
	}
	return nil
}

// DialKafka connects to a tenant's Kafka broker (a bootstrap server or
// one the cluster advertises) as DialContext does, and also refuses,
// just before connect(2), an address and port of the hub's own Kafka
// brokers, resolved at every connection.
func (g *Guard) DialKafka(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if g.isOperatorKafkaName(addr) {
		return nil, fmt.Errorf("%w: %s", ErrOperatorKafka, addr)
	}
	own, err := g.operatorKafkaAddrs(ctx)
	if err != nil {
		// Fail closed: without knowing where the hub's brokers are, no
		// tenant's broker can be told apart from them. The tenant is not
		// told the hub's broker names or its resolver's address.
		if g.Log != nil {
			g.Log.Warn("resolve the hub's own Kafka brokers to check a tenant's broker", "host", host, "err", err)
		}
		return nil, errors.New("the hub could not resolve its own Kafka brokers to check this one against; tried again later")
	}
	allowed := g.allowedName(host)
	d := &net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		if ap, err := netip.ParseAddrPort(address); err == nil && own[netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())] {
			return fmt.Errorf("%w: %s", ErrOperatorKafka, address)
		}
		if allowed {
			return nil
		}
		return g.control(network, address, c)
	}}
	conn, err := d.DialContext(ctx, network, addr)
	// An allowed host's failures are the operator's to show; the address
	// of the hub's own broker is not, even there.
	if err != nil && (!allowed || errors.Is(err, ErrOperatorKafka)) {
		return nil, g.hideWhere(host, err)
	}
	return conn, err
}
