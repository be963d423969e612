package main

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// TestServeRefusesOperatorKafkaAsDestination: roost serve with
// ROOST_KAFKA_BROKERS refuses a tenant's Kafka destination at those
// brokers (by address, or by a name resolving to it), though loopback is
// allowed (ROOST_WEBHOOK_ALLOW_HOSTS), and a roost.* topic; another
// cluster's address is taken.
func TestServeRefusesOperatorKafkaAsDestination(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "roost.events"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	own := cluster.ListenAddrs()[0]
	_, port, _ := net.SplitHostPort(own)
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_KAFKA_BROKERS": own, "ROOST_WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost"})
	_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "k@example.com", "password": "correct horse battery"})
	token := m["token"].(string)
	post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"})
	for _, tc := range []struct {
		name, field string
		brokers     []string
		topic       string
	}{
		{"the hub's own broker", "kafka.brokers", []string{own}, "t"},
		{"a name resolving to it", "kafka.brokers", []string{"localhost:" + port}, "t"},
		{"a roost. topic", "kafka.topic", []string{"127.0.0.1:1"}, "roost.events"},
	} {
		status, p := post(t, h.url+"/v1/tenants/acme/destinations", token, map[string]any{"name": "k", "type": "kafka",
			"kafka": map[string]any{"brokers": tc.brokers, "topic": tc.topic}})
		if status != 400 || p["field"] != tc.field {
			t.Errorf("%s: %d %v, want 400 on %s", tc.name, status, p, tc.field)
		}
		if tc.field == "kafka.brokers" && !strings.Contains(fmt.Sprint(p["detail"]), "the hub's own Kafka broker") {
			t.Errorf("%s: detail %q, want it to name the hub's own Kafka broker", tc.name, p["detail"])
		}
	}
	if status, p := post(t, h.url+"/v1/tenants/acme/destinations", token, map[string]any{"name": "k", "type": "kafka",
		"kafka": map[string]any{"brokers": []string{"127.0.0.1:1"}, "topic": "t"}}); status != 201 {
		t.Errorf("another address: %d %v, want 201", status, p)
	}
}
