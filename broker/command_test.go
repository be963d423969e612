package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/tenants"
)

// command sends a command in the background; its result comes on the
// channel.
type commandRun struct {
	res dataplane.CommandResult
	err error
}

func (s *stack) command(tenant, device string, c dataplane.Command) <-chan commandRun {
	out := make(chan commandRun, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.Timeout+20*time.Second)
		defer cancel()
		res, err := s.hub.Command(ctx, tenant, device, c)
		out <- commandRun{res, err}
	}()
	return out
}

func waitCommand(t *testing.T, ch <-chan commandRun) commandRun {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(80 * time.Second):
		t.Fatal("the command did not end")
	}
	return commandRun{}
}

// nextCommand waits for the next message on a command topic.
func (c *v5) nextCommand(t *testing.T) *paho.Publish {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m := <-c.msgs:
			if strings.HasPrefix(m.Topic, dataplane.CommandPrefix) {
				return m
			}
		case <-deadline:
			t.Fatal("no command within 20s")
		}
	}
}

// TestCommandMQTT: a command reaches the device (MQTT 5 with its response
// topic and correlation data, 3.1.1 with the id in the topic) and its
// reply comes back; a reply with the wrong correlation data, another
// device's reply and another tenant's device's are ignored; the reply is
// delivered to nobody; a device that does not answer times out, one not
// connected is offline unless the command is queued; a tenant's pending
// commands are bounded.
func TestCommandMQTT(t *testing.T) {
	s := newStack(t)
	s.tenant("acme")
	s.tenant("other")
	s.setQuota("acme", "tenant_publish_rate", 100_000)
	const pending = 5
	s.setQuota("acme", "max_pending_commands", pending)
	p1, p2, p3 := s.device("acme", "d1"), s.device("acme", "d2"), s.device("acme", "d3")
	s.device("acme", "d4")
	po := s.device("other", "d1")

	d1 := mustV5(t, s.addr, user("acme", "d1"), p1, "d1")
	d2 := mustV5(t, s.addr, user("acme", "d2"), p2, "d2")
	o1 := mustV5(t, s.addr, user("other", "d1"), po, "d1")
	if code := d1.sub(t, "$roost/commands/d1/#", 1); code >= 0x80 {
		t.Fatalf("d1 subscribes to its commands: 0x%x, want granted", code)
	}
	if code := d2.sub(t, "$roost/commands/d1/#", 1); code < 0x80 {
		t.Errorf("d2 subscribes to d1's commands: 0x%x, want refused", code)
	}
	if code := d1.sub(t, "$roost/commands/d1/reply/+", 1); code < 0x80 {
		t.Errorf("d1 subscribes to its reply topics: 0x%x, want refused", code)
	}
	if code := o1.sub(t, "$roost/commands/d1/#", 1); code >= 0x80 {
		t.Fatalf("other/d1 subscribes to its own commands: 0x%x, want granted", code)
	}

	run := s.command("acme", "d1", dataplane.Command{Name: "reboot", Payload: []byte("now"), Timeout: 20 * time.Second})
	m := d1.nextCommand(t)
	id := m.Topic[strings.LastIndex(m.Topic, "/")+1:]
	if want := "$roost/commands/d1/reboot/" + id; m.Topic != want || string(m.Payload) != "now" {
		t.Fatalf("d1 got %s %q, want %s %q", m.Topic, m.Payload, want, "now")
	}
	reply := "$roost/commands/d1/reply/" + id
	if m.Properties == nil || m.Properties.ResponseTopic != reply || string(m.Properties.CorrelationData) != id {
		t.Fatalf("command properties %+v, want response topic %s and correlation data %s", m.Properties, reply, id)
	}
	// Wrong correlation data: ignored.
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := d1.Publish(pctx, &paho.Publish{Topic: reply, QoS: 1, Payload: []byte("forged"),
		Properties: &paho.PublishProperties{CorrelationData: []byte("not-the-id")}}); err != nil {
		t.Fatalf("d1 reply with wrong correlation data: %v", err)
	}
	cancel()
	// Another device may not reply for d1.
	if r := d2.pub(t, reply, "d2 says", 1, false); r.ReasonCode < 0x80 {
		t.Errorf("d2 replies for d1: PUBACK 0x%x, want refused", r.ReasonCode)
	}
	// Another tenant's d1 did not get the command, and its reply to the
	// same topic goes to its own tenant, where nothing waits.
	o1.pub(t, reply, "other says", 1, false)
	d1.barrier(t)
	select {
	case r := <-run:
		t.Fatalf("the command ended before d1's reply: %+v %v", r.res, r.err)
	default:
	}
	pctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := d1.Publish(pctx, &paho.Publish{Topic: reply, QoS: 1, Payload: []byte("done"),
		Properties: &paho.PublishProperties{CorrelationData: []byte(id), ContentType: "text/plain"}}); err != nil {
		t.Fatalf("d1 replies: %v", err)
	}
	cancel()
	r := waitCommand(t, run)
	if r.err != nil || r.res.Outcome != dataplane.CommandReplied || string(r.res.Reply) != "done" || r.res.ReplyContentType != "text/plain" || r.res.ID != id {
		t.Fatalf("command: %+v %v, want replied %q with id %s", r.res, r.err, "done", id)
	}
	d1.barrier(t)
	select {
	case m := <-d1.msgs:
		if m.Topic != "barrier" {
			t.Errorf("d1 got %s %q: its reply came back to it", m.Topic, m.Payload)
		}
	default:
	}
	select {
	case m := <-o1.msgs:
		t.Errorf("other/d1 got %s %q", m.Topic, m.Payload)
	default:
	}

	// 3.1.1: the id from the topic, the reply to the reply topic.
	d3 := mustV3(t, s.addr, user("acme", "d3"), p3, "d3", true)
	d3.sub(t, "$roost/commands/d3/#", 1)
	run = s.command("acme", "d3", dataplane.Command{Name: "ping", Payload: []byte{0xff, 0}, Timeout: 20 * time.Second})
	var m3 string
	select {
	case msg := <-d3.msgs:
		m3 = msg.Topic()
		if string(msg.Payload()) != "\xff\x00" {
			t.Errorf("d3 got payload %q", msg.Payload())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("d3 got no command")
	}
	if !strings.HasPrefix(m3, "$roost/commands/d3/ping/") {
		t.Fatalf("d3 got %s", m3)
	}
	d3.pub(t, "$roost/commands/d3/reply/"+m3[len("$roost/commands/d3/ping/"):], "pong", 1, false)
	if r := waitCommand(t, run); r.err != nil || r.res.Outcome != dataplane.CommandReplied || string(r.res.Reply) != "pong" {
		t.Fatalf("3.1.1 command: %+v %v, want replied pong", r.res, r.err)
	}

	// No reply: timeout; a late reply is ignored.
	run = s.command("acme", "d1", dataplane.Command{Name: "slow", Timeout: 300 * time.Millisecond})
	late := d1.nextCommand(t)
	if r := waitCommand(t, run); r.err != nil || r.res.Outcome != dataplane.CommandTimeout {
		t.Fatalf("unanswered command: %+v %v, want timeout", r.res, r.err)
	}
	d1.pub(t, late.Properties.ResponseTopic, "too late", 1, false)

	// Not connected: offline, or queued when asked.
	if r := waitCommand(t, s.command("acme", "d4", dataplane.Command{Name: "x", Timeout: time.Second})); r.err != nil || r.res.Outcome != dataplane.CommandOffline {
		t.Errorf("command to an offline device: %+v %v, want offline", r.res, r.err)
	}
	if r := waitCommand(t, s.command("acme", "d4", dataplane.Command{Name: "x", Queue: true})); r.err != nil || r.res.Outcome != dataplane.CommandQueued || r.res.ID == "" {
		t.Errorf("queued command to an offline device: %+v %v, want queued", r.res, r.err)
	}

	// Bad names and timeouts.
	for _, c := range []dataplane.Command{{Name: ""}, {Name: "a/b"}, {Name: "+"}, {Name: "reply"}, {Name: strings.Repeat("n", 65)}, {Name: "ok", Timeout: 61 * time.Second}} {
		if _, err := s.hub.Command(context.Background(), "acme", "d1", c); !errors.Is(err, tenants.ErrInvalid) {
			t.Errorf("command %q timeout %s: %v, want invalid", c.Name, c.Timeout, err)
		}
	}

	// At most max_pending_commands wait at once in a tenant.
	// d2 sees each held command, published once it is waiting.
	if code := d2.sub(t, "$roost/commands/d2/#", 1); code >= 0x80 {
		t.Fatalf("d2 subscribes to its commands: 0x%x", code)
	}
	hold, release := context.WithCancel(context.Background())
	defer release()
	ended := make(chan error, pending)
	for range pending {
		go func() {
			res, err := s.hub.Command(hold, "acme", "d2", dataplane.Command{Name: "hold", Timeout: 60 * time.Second})
			if err == nil {
				err = fmt.Errorf("ended with %q", res.Outcome)
			}
			ended <- err
		}()
	}
	for i := range pending {
		select {
		case err := <-ended:
			t.Fatalf("a held command ended before its context: %v", err)
		case <-d2.msgs:
		case <-time.After(20 * time.Second):
			t.Fatalf("d2 got %d held commands, want %d", i, pending)
		}
	}
	_, over := s.hub.Command(context.Background(), "acme", "d1", dataplane.Command{Name: "one-more", Timeout: 50 * time.Millisecond})
	var qe *tenants.QuotaError
	if !errors.As(over, &qe) || qe.Quota != "max_pending_commands" || qe.Limit != pending {
		t.Errorf("command past the bound: %v, want max_pending_commands %d", over, pending)
	}
	var re *tenants.RetryError
	if !errors.As(over, &re) || re.After < 50*time.Second || re.After > 60*time.Second {
		t.Errorf("command past the bound: %v, want to wait until the first held command times out (about 60s)", over)
	}
	// Another tenant is not held up by it.
	if r := waitCommand(t, s.command("other", "d1", dataplane.Command{Name: "x", Timeout: 50 * time.Millisecond})); r.err != nil || r.res.Outcome != dataplane.CommandTimeout {
		t.Errorf("other tenant's command while acme is full: %+v %v, want timeout", r.res, r.err)
	}
	release()
	for range pending {
		select {
		case err := <-ended:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("a held command ended with %v, want its context's end", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("held commands did not end with their context")
		}
	}
}
