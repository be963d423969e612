package broker_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/broker"
	"github.com/roosthub/roost/broker/store/redis"
	"github.com/roosthub/roost/internal/testenv"
)

// TestRedisOutage: while Redis is paused (SIGSTOP) or stopped, publishers
// to persistent sessions get no acknowledgement; once it is back, every
// message that was acknowledged reaches the subscriber.
func TestRedisOutage(t *testing.T) {
	rd := testenv.StartRedis(t)
	st, err := redis.New(context.Background(), redis.Config{URL: "redis://" + rd.Addr + "/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := newStack(t, func(c *broker.Config) { c.Sessions = st })
	s.tenant("acme")
	subSecret := s.device("acme", "sub")
	sub := mustV5(t, s.addr, "acme/sub", subSecret, "sub", keepSession)
	sub.sub(t, "q", 1)
	sub.Disconnect(&paho.Disconnect{})
	pub := mustV5(t, s.addr, "acme/pub", s.device("acme", "pub"), "pub")

	acked := map[int]bool{}
	n := 0
	publish := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		r, err := pub.Publish(ctx, &paho.Publish{Topic: "q", QoS: 1, Payload: []byte(strconv.Itoa(n))})
		ok := err == nil && r != nil && r.ReasonCode < 0x80
		if ok {
			acked[n] = true
		}
		n++
		return ok
	}
	for range 5 {
		if !publish() {
			t.Fatal("a publish failed with Redis up")
		}
	}
	rd.Pause()
	if publish() {
		t.Error("a publish was acknowledged while Redis was paused")
	}
	rd.Resume()
	for range 5 {
		if !publish() {
			t.Fatal("a publish failed after Redis resumed")
		}
	}
	rd.Stop()
	if publish() {
		t.Error("a publish was acknowledged while Redis was stopped")
	}
	rd.Start()
	eventually(t, 10*time.Second, "publishing works again", publish)

	back := mustV5(t, s.addr, "acme/sub", subSecret, "sub", keepSession)
	got := map[int]bool{}
	deadline := time.After(10 * time.Second)
	for len(got) < len(acked) {
		select {
		case m := <-back.msgs:
			i, _ := strconv.Atoi(string(m.Payload))
			got[i] = true
		case <-deadline:
			var lost []int
			for i := range acked {
				if !got[i] {
					lost = append(lost, i)
				}
			}
			t.Fatalf("%d acknowledged messages never arrived: %v", len(lost), lost)
		}
	}
	t.Logf("%d published, %d acknowledged, all received", n, len(acked))
}
