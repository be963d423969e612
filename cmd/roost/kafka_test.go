package main

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/roosthub/roost/events"
)

// TestServeSendsEventsToKafka: with ROOST_KAFKA_BROKERS set, a device's
// connect reaches the roost.events topic (on kfake, an in-process cluster
// speaking the real protocol).
func TestServeSendsEventsToKafka(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "roost.events"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	h := startServe(t, map[string]string{"ROOST_DATA_DIR": t.TempDir(), "ROOST_KAFKA_BROKERS": cluster.ListenAddrs()[0]})
	_, m := post(t, h.url+"/v1/signup", "", map[string]string{"email": "k@example.com", "password": "correct horse battery"})
	token := m["token"].(string)
	post(t, h.url+"/v1/tenants", token, map[string]string{"slug": "acme"})
	_, d := post(t, h.url+"/v1/tenants/acme/devices", token, map[string]string{"name": "d1"})

	conn, err := net.Dial("tcp", h.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "d1", KeepAlive: 30, CleanStart: true, Username: "acme/d1", UsernameFlag: true,
		Password: []byte(d["secret"].(string)), PasswordFlag: true}); err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(&paho.Disconnect{})

	r := kafka.NewReader(kafka.ReaderConfig{Brokers: cluster.ListenAddrs(), Topic: "roost.events", Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	for {
		msg, err := r.ReadMessage(rctx)
		if err != nil {
			t.Fatalf("no connected event on roost.events: %v", err)
		}
		var e events.Event
		if err := json.Unmarshal(msg.Value, &e); err != nil {
			t.Fatal(err)
		}
		if e.Type == events.Connected && e.Tenant == "acme" && e.Device == "d1" && string(msg.Key) == "acme" {
			return
		}
	}
}
