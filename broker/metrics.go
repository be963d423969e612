package broker

import (
	"cmp"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// OtherTenants is the tenant label under which the tenants outside the
// busiest are summed.
const OtherTenants = "_other"

// DefaultTopTenants is how many of the busiest tenants get their own label.
const DefaultTopTenants = 20

// Collector returns the data plane's Prometheus metrics. Only the top
// busiest tenants (by messages in and out since the hub started) get their
// own tenant label; the rest are summed under tenant="_other", so that the
// number of series stays bounded however many tenants there are. A tenant
// moving in or out of the top moves its counts between series: rate()
// over "_other" can jump then.
func (h *Hub) Collector(top int) prometheus.Collector {
	return &collector{h: h, top: cmp.Or(top, DefaultTopTenants)}
}

type collector struct {
	h   *Hub
	top int
}

var (
	descConnections  = prometheus.NewDesc("roost_connections", "Live device connections.", []string{"tenant"}, nil)
	descMessages     = prometheus.NewDesc("roost_messages_total", "PUBLISH packets: in from devices and the API, out to devices.", []string{"tenant", "direction"}, nil)
	descBytes        = prometheus.NewDesc("roost_payload_bytes_total", "Payload bytes of those PUBLISH packets.", []string{"tenant", "direction"}, nil)
	descThrottled    = prometheus.NewDesc("roost_throttled_total", "Publishes refused for publish_rate or tenant_publish_rate.", []string{"tenant"}, nil)
	descDenied       = prometheus.NewDesc("roost_publishes_denied_total", "Device publishes (and Wills) the tenant's rules denied, or to a reserved topic.", []string{"tenant"}, nil)
	descAuthFailed   = prometheus.NewDesc("roost_auth_failures_total", "Refused connection attempts for existing tenants.", []string{"tenant"}, nil)
	descDropped      = prometheus.NewDesc("roost_messages_dropped_total", "Messages dropped for connected clients since the tenant's broker on this node started, by reason: max_queued (the client's unacknowledged messages at max_queued) or pending_writes (its write queue of 1,024 packets full: it reads more slowly than it is sent to).", []string{"tenant", "reason"}, nil)
	descQueued       = prometheus.NewDesc("roost_queued_messages", "Messages waiting in persistent sessions' queues.", []string{"tenant"}, nil)
	descClaims       = prometheus.NewDesc("roost_session_claims_total", "Persistent-session claims the tenant's broker on this node made since it started, each a new epoch that fences the session's previous owner.", []string{"tenant"}, nil)
	descQuotaHits    = prometheus.NewDesc("roost_quota_exceeded_total", "Limit hits by quota (only quotas hit at least once).", []string{"tenant", "quota"}, nil)
	descTenants      = prometheus.NewDesc("roost_tenants_metered", "Tenants with a meter since the hub started.", nil, nil)
	descBrokers      = prometheus.NewDesc("roost_tenant_brokers", "Running tenant brokers.", nil, nil)
	descForwarding   = prometheus.NewDesc("roost_forwarded_connections", "Device connections this node forwards to their tenant's home node.", nil, nil)
	descForwarded    = prometheus.NewDesc("roost_forwards_total", "Device connections forwarded to their tenant's home node since the hub started.", nil, nil)
	descHandshakes   = prometheus.NewDesc("roost_handshakes", "Device connections not yet past their CONNECT.", nil, nil)
	descRetries      = prometheus.NewDesc("roost_change_retries", "Directory changes waiting to be applied again to live connections (the directory did not answer).", nil, nil)
	descFenced       = prometheus.NewDesc("roost_session_writes_fenced_total", "Session-store writes refused because another broker had claimed the session since (fencing).", nil, nil)
	descLeaseRefused = prometheus.NewDesc("roost_publishes_refused_lease_total", "Publishes refused because this node's lease may have lapsed (another node may hold the tenant).", nil, nil)
	descHSDropped    = prometheus.NewDesc("roost_handshakes_dropped_total", "Connections in handshake refused at a bound, or closed to make room, by reason.", []string{"reason"}, nil)
	descRateKeys     = prometheus.NewDesc("roost_handshake_rate_keys", "Source addresses and tenant endpoints whose connection-attempt rate is remembered, by scope (at most 65,536 each; the least recently seen are forgotten).", []string{"scope"}, nil)

	// A spread fleet's fabric (spread.go), on this node.
	descFabricTenants = prometheus.NewDesc("roost_fabric_tenants", "Tenants this node serves as one of several nodes.", nil, nil)
	descFabricRoutes  = prometheus.NewDesc("roost_fabric_routes", "Routes of those tenants (owner and filter), as this node last read them.", nil, nil)
	descFabricLag     = prometheus.NewDesc("roost_fabric_inbox_lag", "Messages from other nodes waiting in this node's inboxes, as last seen.", nil, nil)
	descFabricMsgs    = prometheus.NewDesc("roost_fabric_messages_total", "Messages that crossed to (sent) or from (received) other nodes.", []string{"direction"}, nil)
	descFabricStale   = prometheus.NewDesc("roost_fabric_stale_routes_total", "Sends refused because this node's copy of the routes was out of date (read again and sent again).", nil, nil)
	descFabricLapses  = prometheus.NewDesc("roost_fabric_lapses_total", "Times this node found its membership of a tenant lapsed (swept by the others: its clean sessions were ended).", nil, nil)
	descTenantRoutes  = prometheus.NewDesc("roost_fabric_tenant_routes", "Routes this node holds for the tenant (filters its subscribers and live views hold here).", []string{"tenant"}, nil)
	descTenantLag     = prometheus.NewDesc("roost_fabric_tenant_inbox_lag", "Messages from other nodes waiting in this node's inbox for the tenant, as last seen.", []string{"tenant"}, nil)
	descTenantWidth   = prometheus.NewDesc("roost_fabric_tenant_width", "A wide tenant's width: how many nodes may serve it (its max_nodes as its home last set it; 1 once narrowed), as this node last read it.", []string{"tenant"}, nil)
	descWebhookMsgs   = prometheus.NewDesc("roost_webhook_messages_total", "Messages matching rules with a destination, by outcome: delivered (the receiver took them), failed (moved to the dead letters past the retry horizon) or dropped (a full outbox under drop_oldest, or the destination deleted); since the tenant's broker started on the node that delivers.", []string{"tenant", "outcome"}, nil)
	descWebhookWait   = prometheus.NewDesc("roost_webhook_backlog", "Messages waiting in the tenant's outboxes, as the node that delivers last counted them.", []string{"tenant"}, nil)
	descFabricFailed  = prometheus.NewDesc("roost_fabric_send_failures_total", "Sends the fabric (Redis or Kafka) did not take (a QoS 1 or 2 publish was refused for each).", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnections, descMessages, descBytes, descThrottled, descDenied, descAuthFailed, descDropped, descQueued, descClaims, descQuotaHits, descTenants, descBrokers, descForwarding, descForwarded, descHandshakes, descHSDropped, descRateKeys, descRetries, descFenced, descLeaseRefused,
		descFabricTenants, descFabricRoutes, descFabricLag, descFabricMsgs, descFabricStale, descFabricFailed, descFabricLapses, descTenantRoutes, descTenantLag, descTenantWidth, descWebhookMsgs, descWebhookWait} {
		ch <- d
	}
}

// tenantSample is one tenant's figures at a scrape.
type tenantSample struct {
	tenant                              string
	conns, in, out, bytesIn, bytesOut   int64
	throttled, authFailed, queued, busy int64
	denied                              int64
	// droppedQueued and droppedPending are mochi's drops for connected
	// clients (see descDropped).
	droppedQueued, droppedPending int64
	hits                          map[string]int64
	// routes and lag are the tenant's in the fabric, on this node; width
	// is how many nodes serve it, if it widened (see wide.go); claims are
	// the session claims (epochs) its broker here made.
	routes, lag, width, claims int64
	// The tenant's outboxes on this node (outbox.go).
	delivered, failed, dropped, backlog int64
}

func (s *tenantSample) add(o tenantSample) {
	s.conns += o.conns
	s.in += o.in
	s.out += o.out
	s.bytesIn += o.bytesIn
	s.bytesOut += o.bytesOut
	s.throttled += o.throttled
	s.denied += o.denied
	s.droppedQueued += o.droppedQueued
	s.droppedPending += o.droppedPending
	s.authFailed += o.authFailed
	s.queued += o.queued
	s.routes += o.routes
	s.lag += o.lag
	s.claims += o.claims
	s.delivered += o.delivered
	s.failed += o.failed
	s.dropped += o.dropped
	s.backlog += o.backlog
	for q, n := range o.hits {
		s.hits[q] += n
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var samples []tenantSample
	c.h.meters.Range(func(k, v any) bool {
		m := v.(*meter)
		s := tenantSample{
			tenant: k.(string), conns: m.live.Load(), in: m.totalIn.Load(), out: m.totalOut.Load(),
			bytesIn: m.totalBytesIn.Load(), bytesOut: m.totalBytesOut.Load(),
			throttled: m.throttled.Load(), authFailed: m.authFailures.Load(), denied: m.denied.Load(),
		}
		s.busy = s.in + s.out
		m.hitMu.Lock()
		s.hits = maps.Clone(m.hits)
		m.hitMu.Unlock()
		if inst := c.h.reg.running(s.tenant); inst != nil {
			if inst.persist != nil {
				s.queued = inst.persist.queued()
				s.claims = inst.persist.claims.Load()
			}
			s.routes, s.lag = inst.fabricFigures()
			s.delivered, s.failed, s.dropped, s.backlog = inst.out.figures()
			s.droppedQueued = atomic.LoadInt64(&inst.server.Info.InflightDropped)
			s.droppedPending = atomic.LoadInt64(&inst.server.Info.MessagesDropped)
			if inst.spread && c.h.cfg.Cluster != nil && !c.h.cfg.SpreadAll {
				s.width = int64(c.h.cfg.Cluster.Width(s.tenant))
			}
		}
		samples = append(samples, s)
		return true
	})
	slices.SortFunc(samples, func(a, b tenantSample) int {
		return cmp.Or(cmp.Compare(b.busy, a.busy), cmp.Compare(a.tenant, b.tenant))
	})
	other := tenantSample{tenant: OtherTenants, hits: map[string]int64{}}
	for i, s := range samples {
		if i < c.top {
			emit(ch, c.h.cfg.Fabric != nil, c.h.cfg.Delivery != nil, s)
		} else {
			other.add(s)
		}
	}
	if len(samples) > c.top {
		emit(ch, c.h.cfg.Fabric != nil, c.h.cfg.Delivery != nil, other)
	}
	ch <- prometheus.MustNewConstMetric(descTenants, prometheus.GaugeValue, float64(len(samples)))
	ch <- prometheus.MustNewConstMetric(descBrokers, prometheus.GaugeValue, float64(c.h.Instances()))
	ch <- prometheus.MustNewConstMetric(descForwarding, prometheus.GaugeValue, float64(c.h.Forwards()))
	ch <- prometheus.MustNewConstMetric(descForwarded, prometheus.CounterValue, float64(c.h.forwardedTotal()))
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.GaugeValue, float64(c.h.in.hs.count()))
	addresses, endpoints := c.h.in.hs.rateKeys()
	ch <- prometheus.MustNewConstMetric(descRateKeys, prometheus.GaugeValue, float64(addresses), "address")
	ch <- prometheus.MustNewConstMetric(descRateKeys, prometheus.GaugeValue, float64(endpoints), "endpoint")
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.GaugeValue, float64(c.h.changes.backlog()))
	ch <- prometheus.MustNewConstMetric(descFenced, prometheus.CounterValue, float64(c.h.fencedWrites.Load()))
	ch <- prometheus.MustNewConstMetric(descLeaseRefused, prometheus.CounterValue, float64(c.h.leaseRefused.Load()))
	if f := c.h.cfg.Fabric; f != nil {
		st := f.Stats()
		ch <- prometheus.MustNewConstMetric(descFabricTenants, prometheus.GaugeValue, float64(st.Tenants))
		ch <- prometheus.MustNewConstMetric(descFabricRoutes, prometheus.GaugeValue, float64(st.Routes))
		ch <- prometheus.MustNewConstMetric(descFabricLag, prometheus.GaugeValue, float64(st.Lag))
		ch <- prometheus.MustNewConstMetric(descFabricMsgs, prometheus.CounterValue, float64(st.Sent), "sent")
		ch <- prometheus.MustNewConstMetric(descFabricMsgs, prometheus.CounterValue, float64(st.Received), "received")
		ch <- prometheus.MustNewConstMetric(descFabricStale, prometheus.CounterValue, float64(st.Stale))
		ch <- prometheus.MustNewConstMetric(descFabricFailed, prometheus.CounterValue, float64(st.Failed))
		ch <- prometheus.MustNewConstMetric(descFabricLapses, prometheus.CounterValue, float64(st.Lapses))
	}
	for r, n := range c.h.in.hs.drops() {
		ch <- prometheus.MustNewConstMetric(descHSDropped, prometheus.CounterValue, float64(n), dropReason(r).String())
	}
}

func emit(ch chan<- prometheus.Metric, spread, webhooks bool, s tenantSample) {
	ch <- prometheus.MustNewConstMetric(descConnections, prometheus.GaugeValue, float64(s.conns), s.tenant)
	ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(s.in), s.tenant, "in")
	ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(s.out), s.tenant, "out")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.bytesIn), s.tenant, "in")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.bytesOut), s.tenant, "out")
	ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.CounterValue, float64(s.throttled), s.tenant)
	ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(s.denied), s.tenant)
	ch <- prometheus.MustNewConstMetric(descAuthFailed, prometheus.CounterValue, float64(s.authFailed), s.tenant)
	ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(s.queued), s.tenant)
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.droppedQueued), s.tenant, "max_queued")
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.droppedPending), s.tenant, "pending_writes")
	ch <- prometheus.MustNewConstMetric(descClaims, prometheus.CounterValue, float64(s.claims), s.tenant)
	if webhooks {
		ch <- prometheus.MustNewConstMetric(descWebhookMsgs, prometheus.CounterValue, float64(s.delivered), s.tenant, "delivered")
		ch <- prometheus.MustNewConstMetric(descWebhookMsgs, prometheus.CounterValue, float64(s.failed), s.tenant, "failed")
		ch <- prometheus.MustNewConstMetric(descWebhookMsgs, prometheus.CounterValue, float64(s.dropped), s.tenant, "dropped")
		ch <- prometheus.MustNewConstMetric(descWebhookWait, prometheus.GaugeValue, float64(s.backlog), s.tenant)
	}
	if spread {
		ch <- prometheus.MustNewConstMetric(descTenantRoutes, prometheus.GaugeValue, float64(s.routes), s.tenant)
		ch <- prometheus.MustNewConstMetric(descTenantLag, prometheus.GaugeValue, float64(s.lag), s.tenant)
	}
	if s.width > 0 && s.tenant != OtherTenants {
		ch <- prometheus.MustNewConstMetric(descTenantWidth, prometheus.GaugeValue, float64(s.width), s.tenant)
	}
	for q, n := range s.hits {
		ch <- prometheus.MustNewConstMetric(descQuotaHits, prometheus.CounterValue, float64(n), s.tenant, q)
	}
}
