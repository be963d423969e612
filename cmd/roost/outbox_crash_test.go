package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/dataout"
)

// TestWebhookCrashLosesNoAcknowledgedMessage kills `roost serve` with
// SIGKILL ten times (on the embedded store and on Redis) while a publisher sends numbered QoS 1 messages that a
// rule sends to a webhook (a real receiver here, checking each request's
// signature). Every number the publisher got a PUBACK for must reach the
// receiver at least once; duplicates (a batch sent, the process killed
// before its outbox entry was deleted) are counted, and the first arrival
// of each number must come in publishing order (one device: order per
// device).
func TestWebhookCrashLosesNoAcknowledgedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts a server ten times")
	}
	for name, env := range crashStores(t) {
		t.Run(name, func(t *testing.T) { webhookCrashTest(t, env) })
	}
}

func webhookCrashTest(t *testing.T, storeEnv []string) {
	const token = "rop_crash-test-token-0123456789"
	var (
		mu       sync.Mutex
		secret   string
		received = map[int]int{}
		order    []int // first arrivals
		requests int
		unsigned int
	)
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		requests++
		if dataout.Verify(secret, r.Header.Get(dataout.SignatureHeader), body, time.Now(), 5*time.Minute) != nil {
			unsigned++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var b struct {
			Messages []struct {
				Payload json.RawMessage `json:"payload"`
				Device  string          `json:"device"`
			} `json:"messages"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, m := range b.Messages {
			n, err := strconv.Atoi(string(m.Payload))
			if err != nil || m.Device != "pub" {
				continue
			}
			if received[n] == 0 {
				order = append(order, n)
			}
			received[n]++
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rc.Close()

	b := make([]byte, 4)
	rand.Read(b)
	tenant := "hook-" + hex.EncodeToString(b)
	p := &process{t: t, httpAddr: freeAddr(t), mqttAddr: freeAddr(t)}
	p.env = append([]string{
		"ROOST_DATA_DIR=" + t.TempDir(), "ROOST_HTTP_ADDR=" + p.httpAddr, "ROOST_MQTT_ADDR=" + p.mqttAddr,
		"ROOST_ADMIN_TOKEN=" + token, "ROOST_WEBHOOK_ALLOW_HOSTS=127.0.0.1", "ROOST_WEBHOOK_BATCH=20",
	}, storeEnv...)
	p.start()
	var session struct{ Token string }
	p.api("POST", "/v1/signup", "", map[string]string{"email": tenant + "@example.com", "password": "correct horse battery"}, &session)
	p.api("POST", "/v1/tenants", session.Token, map[string]string{"slug": tenant}, nil)
	p.api("PATCH", "/v1/admin/tenants/"+tenant, token,
		map[string]any{"quotas": map[string]int64{"publish_rate": 1_000_000, "tenant_publish_rate": 1_000_000}}, nil)
	var pub struct{ Secret string }
	p.api("POST", "/v1/tenants/"+tenant+"/devices", session.Token, map[string]string{"name": "pub"}, &pub)
	var dest struct{ Secret string }
	p.api("POST", "/v1/tenants/"+tenant+"/destinations", session.Token, map[string]string{"name": "hook", "type": "webhook", "url": rc.URL + "/hook"}, &dest)
	mu.Lock()
	secret = dest.Secret
	mu.Unlock()
	p.api("POST", "/v1/tenants/"+tenant+"/rules", session.Token, map[string]string{"filter": "seq", "destination": "hook"}, nil)

	acked := map[int]bool{}
	const kills = 10
	next := 0
	for round := range kills {
		if round > 0 {
			p.start()
		}
		pc, err := mqttClient(p.mqttAddr, tenant+"/pub", pub.Secret, "pub", false, nil, nil)
		if err != nil {
			t.Fatalf("publisher: %v\n%s", err, p.log)
		}
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := next
				next++
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				r, err := pc.Publish(ctx, &paho.Publish{Topic: "seq", QoS: 1, Payload: []byte(strconv.Itoa(n))})
				cancel()
				if err != nil {
					return // the server died under us: not acknowledged
				}
				if r != nil && r.ReasonCode < 0x80 {
					acked[n] = true
				}
			}
		}()
		wait := make([]byte, 1)
		rand.Read(wait)
		time.Sleep(time.Duration(100+int(wait[0])) * time.Millisecond)
		p.kill()
		close(stop)
		<-done
	}

	// A last start: the publisher connects, which starts the tenant's
	// broker, whose worker delivers what the outbox kept.
	p.start()
	defer p.kill()
	pc, err := mqttClient(p.mqttAddr, tenant+"/pub", pub.Secret, "pub", false, nil, nil)
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	defer pc.Disconnect(&paho.Disconnect{})
	missing := func() []int {
		mu.Lock()
		defer mu.Unlock()
		var lost []int
		for n := range acked {
			if received[n] == 0 {
				lost = append(lost, n)
			}
		}
		return lost
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	lost := missing()
	mu.Lock()
	defer mu.Unlock()
	dups := 0
	for _, c := range received {
		dups += c - 1
	}
	t.Logf("%d kills; %d messages acknowledged, %d delivered, %d duplicates, %d requests", kills, len(acked), len(received), dups, requests)
	if len(acked) < kills*10 {
		t.Errorf("only %d messages were acknowledged: the test did not exercise the outbox", len(acked))
	}
	if len(lost) > 0 {
		t.Errorf("%d acknowledged messages never reached the webhook, e.g. %v\n%s", len(lost), lost[:min(len(lost), 10)], p.log)
	}
	if unsigned > 0 {
		t.Errorf("%d requests failed the receiver's signature check", unsigned)
	}
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			t.Errorf("message %d first arrived after %d: out of publishing order", order[i], order[i-1])
			break
		}
	}
}
