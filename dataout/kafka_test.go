package dataout_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/roosthub/roost/dataout"
	"github.com/roosthub/roost/tenants"
)

// newKafka starts an in-process Kafka cluster with a topic of 4
// partitions and a SASL user "roost" / "s3cret" for mechanism (none if
// ""), and returns it with its addresses.
func newKafka(t *testing.T, mechanism string, opts ...kfake.Opt) (*kfake.Cluster, []string) {
	t.Helper()
	opts = append(opts, kfake.NumBrokers(2), kfake.SeedTopics(4, "telemetry"))
	if mechanism != "" {
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser(mechanism, "roost", "s3cret"))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()
}

// consume reads n records of the cluster's telemetry topic (as the
// superuser where SASL is on), failing after 10 s.
func consume(t *testing.T, addrs []string, mechanism string, n int) []*kgo.Record {
	t.Helper()
	opts := []kgo.Opt{kgo.SeedBrokers(addrs...), kgo.ConsumeTopics("telemetry"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}
	if mechanism != "" {
		k := &dataout.Kafka{Kafka: tenants.Kafka{SASL: &tenants.KafkaSASL{Mechanism: mechanism, Username: "roost"}}, Password: "s3cret"}
		opts = append(opts, kgo.SASL(dataout.Mechanism(k)))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d records in 10 s, want %d", len(out), n)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

func kafkaWebhook(addrs []string, mechanism, password string) dataout.Webhook {
	k := &dataout.Kafka{Kafka: tenants.Kafka{Brokers: addrs, Topic: "telemetry"}, Password: password}
	if mechanism != "" {
		k.SASL = &tenants.KafkaSASL{Mechanism: mechanism, Username: "roost"}
	}
	return dataout.Webhook{Kafka: k}
}

// batchOf is n messages from each of three devices, interleaved.
func batchOf(n int) dataout.Batch { return batchFrom(0, n) }

// batchFrom is batchOf numbering from from.
func batchFrom(from, n int) dataout.Batch {
	b := dataout.Batch{Tenant: "acme", Destination: "dst_k"}
	for i := from; i < from+n; i++ {
		for _, d := range []string{"d1", "d2", "d3"} {
			b.Messages = append(b.Messages, dataout.Message{ID: fmt.Sprintf("%s-%d", d, i), Topic: "sensors/" + d, Device: d, ClientID: d,
				Payload: fmt.Appendf(nil, `{"n":%d}`, i), QoS: 1, Time: time.Now().Add(-time.Hour)}) // an hour old: retried messages are
		}
	}
	return b
}

// checkOrder checks that each device's records hold n = 0, 1, 2… in
// order, each on one partition, and returns how many each had.
func checkOrder(t *testing.T, recs []*kgo.Record) map[string]int {
	t.Helper()
	next, part := map[string]int{}, map[string]int32{}
	for _, r := range recs {
		var v struct {
			Tenant, Destination, ID, Device string
			Payload                         struct{ N int }
			PayloadEncoding                 string `json:"payload_encoding"`
		}
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("record value %q: %v", r.Value, err)
		}
		d := string(r.Key)
		if v.Device != d || v.Tenant != "acme" || v.Destination != "dst_k" || v.PayloadEncoding != "json" {
			t.Errorf("record %s: key %q, value %s", v.ID, d, r.Value)
		}
		if p, ok := part[d]; ok && p != r.Partition {
			t.Errorf("device %s on partitions %d and %d", d, p, r.Partition)
		}
		part[d] = r.Partition
		if v.Payload.N != next[d] {
			t.Errorf("device %s: record %d after %d, want in order", d, v.Payload.N, next[d]-1)
		}
		next[d] = v.Payload.N + 1
	}
	return next
}

func TestKafkaProduces(t *testing.T) {
	for _, mech := range []string{"", tenants.SASLPlain, tenants.SASLScramSHA256, tenants.SASLScramSHA512} {
		t.Run("sasl="+mech, func(t *testing.T) {
			_, addrs := newKafka(t, mech)
			s := newSender(t, "127.0.0.1", 5*time.Second, nil)
			defer s.Close()
			for i := range 2 { // the second batch reuses the client
				if a := s.Send(context.Background(), kafkaWebhook(addrs, mech, "s3cret"), batchFrom(10*i, 10)); !a.OK() {
					t.Fatalf("send: %s %v", a.Kind, a.Err)
				}
			}
			got := checkOrder(t, consume(t, addrs, mech, 60))
			if got["d1"] != 20 || got["d2"] != 20 || got["d3"] != 20 {
				t.Errorf("records per device %v, want 20 each", got)
			}
		})
	}
}

func TestKafkaWrongPassword(t *testing.T) {
	_, addrs := newKafka(t, tenants.SASLScramSHA256)
	s := newSender(t, "127.0.0.1", 2*time.Second, nil)
	defer s.Close()
	a := s.Send(context.Background(), kafkaWebhook(addrs, tenants.SASLScramSHA256, "wrong"), batchOf(1))
	if a.OK() || a.Kind != dataout.ErrorAuth {
		t.Fatalf("wrong password: ok %v, kind %q, err %v; want an auth failure", a.OK(), a.Kind, a.Err)
	}
	if a.Latency > 4*time.Second {
		t.Errorf("the attempt took %v, want bounded by the 2 s timeout", a.Latency)
	}
	// The right one, next time: the failed client is not reused.
	if a := s.Send(context.Background(), kafkaWebhook(addrs, tenants.SASLScramSHA256, "s3cret"), batchOf(1)); !a.OK() {
		t.Fatalf("right password after a wrong one: %s %v", a.Kind, a.Err)
	}
}

func TestKafkaRefusesOwnNetwork(t *testing.T) {
	_, addrs := newKafka(t, "")
	_, port, _ := net.SplitHostPort(addrs[0])
	for name, tc := range map[string]struct {
		allow   string
		brokers []string
	}{
		// 127.0.0.1 itself, not allowed.
		"loopback": {"", addrs},
		// A name resolving to loopback, not allowed: refused when connecting.
		"name": {"", []string{"localhost:" + port}},
		// The bootstrap name allowed, but the cluster advertises
		// 127.0.0.1, which is not: the client's connections to the
		// advertised brokers are refused too.
		"advertised": {"localhost", []string{"localhost:" + port}},
	} {
		t.Run(name, func(t *testing.T) {
			g, err := dataout.NewGuard(tc.allow, true) // development: plain connections allowed
			if err != nil {
				t.Fatal(err)
			}
			s, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			w := kafkaWebhook(tc.brokers, "", "")
			a := s.Send(context.Background(), w, batchOf(1))
			if a.OK() || a.Kind != dataout.ErrorRefused || !errors.Is(a.Err, dataout.ErrRefusedAddress) {
				t.Fatalf("ok %v, kind %q, err %v; want refused_address", a.OK(), a.Kind, a.Err)
			}
			// A name is not answered with the address it resolved to.
			if name == "name" && strings.Contains(a.Err.Error(), "127.0.0.1") {
				t.Errorf("err %q names the address localhost resolved to", a.Err)
			}
		})
	}
}

func TestCheckBrokers(t *testing.T) {
	g, _ := dataout.NewGuard("kafka.internal,10.0.0.5", false)
	for _, tc := range []struct {
		brokers []string
		tls     bool
		ok      bool
	}{
		{[]string{"kafka.example.com:9093"}, true, true},
		{[]string{"kafka.example.com:9092"}, false, false}, // plain to a public host: no
		{[]string{"kafka.internal:9092", "10.0.0.5:9092"}, false, true},
		{[]string{"kafka.internal:9092", "kafka.example.com:9092"}, false, false},
		{[]string{"127.0.0.1:9093"}, true, false},
		{[]string{"169.254.169.254:9093"}, true, false},
		{[]string{"[::1]:9093"}, true, false},
		{[]string{"10.0.0.6:9093"}, true, false},
	} {
		if err := g.CheckBrokers(tc.brokers, tc.tls); (err == nil) != tc.ok {
			t.Errorf("CheckBrokers(%v, tls %v) = %v, want ok %v", tc.brokers, tc.tls, err, tc.ok)
		}
	}
}

func TestKafkaTLS(t *testing.T) {
	// A certificate for 127.0.0.1 and example.com, from httptest.
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.StartTLS()
	srv.Close()
	ca := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	_, addrs := newKafka(t, tenants.SASLPlain, kfake.TLS(srv.TLS.Clone()))
	s := newSender(t, "127.0.0.1", 3*time.Second, nil)
	defer s.Close()

	w := kafkaWebhook(addrs, tenants.SASLPlain, "s3cret")
	w.Kafka.TLS = true
	if a := s.Send(context.Background(), w, batchOf(1)); a.OK() || a.Kind != dataout.ErrorTLS {
		t.Errorf("a certificate from an unknown CA: ok %v, kind %q, err %v; want tls", a.OK(), a.Kind, a.Err)
	}
	w.Kafka.CA = ca
	if a := s.Send(context.Background(), w, batchOf(3)); !a.OK() {
		t.Fatalf("with the CA: %s %v", a.Kind, a.Err)
	}
	w.Kafka.ServerName = "kafka.example.org"
	if a := s.Send(context.Background(), w, batchOf(1)); a.OK() || a.Kind != dataout.ErrorTLS || !strings.Contains(a.Err.Error(), "kafka.example.org") {
		t.Errorf("another server name: ok %v, kind %q, err %v; want tls", a.OK(), a.Kind, a.Err)
	}
}

func TestKafkaDestinationSealed(t *testing.T) {
	s, _ := dataout.NewSealer(dataout.KeyFromToken("operator"))
	d := tenants.Destination{ID: "dst_k", Type: tenants.DestinationKafka,
		Kafka:  &tenants.Kafka{Brokers: []string{"k:9093"}, Topic: "t", TLS: true, SASL: &tenants.KafkaSASL{Mechanism: tenants.SASLPlain, Username: "u"}},
		Sealed: tenants.Sealed{Password: s.SealPassword("acme", "dst_k", "pw")}}
	w, err := s.Webhook("acme", d)
	if err != nil || w.Kafka == nil || w.Kafka.Password != "pw" || w.Kafka.Topic != "t" {
		t.Fatalf("opened %+v, %v; want the password pw", w.Kafka, err)
	}
	if _, err := s.Webhook("other", d); err == nil {
		t.Error("a password sealed for acme opened for another tenant")
	}
	if strings.Contains(d.Sealed.Password, "pw") && len(d.Sealed.Password) < 10 {
		t.Errorf("sealed password %q", d.Sealed.Password)
	}
}
