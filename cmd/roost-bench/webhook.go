package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/roosthub/roost/bench"
)

// The webhook figure: p2p QoS 1 throughput, as p2p_qos1_throughput
// measures it, with one rule sending every message to a webhook (issue 21
// asks for at least 0.8 of the figure without). Each matching publish is
// written to the tenant's outbox in the session store before its PUBACK,
// and delivered from there, in batches, to a receiver in this process (on
// the generator's side of the machine, as a customer's receiver is not on
// the hub's cores).
const webhookFigure = "p2p_qos1_throughput_webhook"

// webhookIntervalFigure is the webhook figure on a Roost whose embedded
// store syncs on an interval (ROOST_STORE_SYNC=interval): each write
// reaches the log file before its PUBACK, and the fsync, which the
// default makes before it, comes within 10 ms.
const webhookIntervalFigure = "p2p_qos1_throughput_webhook_interval"

// webhookPipelinedFigure is the webhook figure of
// p2p_qos1_pipelined_throughput: each publisher keeps p2pWindow messages
// in flight, as a gateway or a client library with an inflight window
// does, so that a sync of the outbox is shared by the publishes that
// came while the one before ran rather than by one message a publisher.
const webhookPipelinedFigure = "p2p_qos1_pipelined_throughput_webhook"

// isWebhookFigure reports whether figure is one of the webhook figures.
func isWebhookFigure(figure string) bool {
	return figure == webhookFigure || figure == webhookIntervalFigure || figure == webhookPipelinedFigure
}

// webhookUnsupported is why a peer has no webhook figure.
const webhookUnsupported = "no rules that send a broker's messages to a webhook"

// receiver is the webhook receiver: it counts the messages of the
// requests it is sent and answers 204.
type receiver struct {
	srv  *http.Server
	url  string
	msgs atomic.Int64
}

// messageField is what each message of a webhook request carries once.
var messageField = []byte(`"payload_encoding":`)

func startReceiver() (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{url: "http://" + ln.Addr().String() + "/hook"}
	r.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.msgs.Add(int64(bytes.Count(body, messageField)))
		w.WriteHeader(http.StatusNoContent)
	}), ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

func (r *receiver) close() { r.srv.Close() }

// webhookRun is one run of the webhook figure: the p2p run's result, what
// the receiver had when it ended, and how long after it the receiver had
// every message the subscribers got (the outbox drained).
type webhookRun struct {
	bench.P2PResult
	WebhookAtEnd int64   `json:"webhook_at_end"`
	Webhook      int64   `json:"webhook"`
	DrainMs      float64 `json:"drain_ms"`
}

// webhookP2P makes a webhook destination and a rule sending the p2p
// topics to it, runs p2p, waits for the receiver to have at least as many
// messages as the subscribers got (at least once: a duplicate counts), and
// removes both, so that the figures after it run without a rule.
func webhookP2P(ctx context.Context, p *process, r *receiver, run func() (bench.P2PResult, error)) (webhookRun, error) {
	var dest, rule struct {
		ID string `json:"id"`
	}
	name := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	if err := p.call("POST", "/v1/tenants/bench/destinations", map[string]string{"name": name, "type": "webhook", "url": r.url}, &dest); err != nil {
		return webhookRun{}, err
	}
	defer p.call("DELETE", "/v1/tenants/bench/destinations/"+dest.ID, nil, nil)
	if err := p.call("POST", "/v1/tenants/bench/rules", map[string]string{"filter": "p2p/#", "destination": dest.ID}, &rule); err != nil {
		return webhookRun{}, err
	}
	defer p.call("DELETE", "/v1/tenants/bench/rules/"+rule.ID, nil, nil)
	before := r.msgs.Load()
	res, err := run()
	if err != nil {
		return webhookRun{}, err
	}
	end := time.Now()
	w := webhookRun{P2PResult: res, WebhookAtEnd: r.msgs.Load() - before}
	deadline := end.Add(2 * time.Minute)
	for w.Webhook = r.msgs.Load() - before; w.Webhook < int64(res.Tally.Received); w.Webhook = r.msgs.Load() - before {
		if time.Now().After(deadline) {
			return w, fmt.Errorf("the webhook had %d of the %d messages delivered 2 min after the run", w.Webhook, res.Tally.Received)
		}
		if err := ctx.Err(); err != nil {
			return w, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.DrainMs = float64(time.Since(end).Microseconds()) / 1000
	return w, nil
}
