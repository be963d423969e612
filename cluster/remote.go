package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

var _ dataplane.DataPlane = (*Remote)(nil)

// ErrNoNodes is what a control plane answers while no data-plane node is up.
var ErrNoNodes = errors.New("no data-plane node is up")

// Remote is the data plane as a control plane running apart sees it: every
// question goes to the nodes announced in the last few seconds, in
// parallel, and their answers are added up. It satisfies the API's and the
// console's DataPlane.
type Remote struct {
	store  *tenants.Store
	token  string
	client *http.Client
	log    *slog.Logger
	now    func() time.Time
	// watchIdle, watchRetry, watchRetryMax and watchRehome time a watch's
	// stream (see Watch): the package's values, the tests' own.
	watchIdle, watchRetry, watchRetryMax, watchRehome time.Duration
}

// NewRemote returns a Remote that finds nodes in store and calls them with
// the operator token.
func NewRemote(store *tenants.Store, token string, log *slog.Logger) *Remote {
	return &Remote{store: store, token: token, log: log, now: time.Now, watchIdle: watchIdle, watchRetry: watchRetry, watchRetryMax: watchRetryMax, watchRehome: watchRehome,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: time.Minute}}}
}

// callTimeout bounds one call to one node.
const callTimeout = 3 * time.Second

func (r *Remote) nodes(ctx context.Context) []tenants.Node {
	ns, err := r.store.Nodes(ctx, r.now().Add(-liveFor))
	if err != nil {
		r.log.Warn("list data-plane nodes", "err", err)
	}
	return ns
}

// failed is a call to node n that failed on its way (no answer, or one
// cut short): an error of kind ErrUnavailable naming the node, whose
// message leaves out err, which carries the node's internal address and
// path (the API shows the message to its caller). err is logged here, and
// still found by errors.Is and errors.As.
func (r *Remote) failed(n tenants.Node, err error) error {
	r.log.Warn("data-plane node call failed", "node", n.ID, "url", n.URL, "err", err)
	return &nodeError{node: n.ID, url: n.URL, err: err}
}

// nodeError is a failed call to a node (see failed).
type nodeError struct {
	node, url string
	err       error
}

func (e *nodeError) Error() string   { return "data-plane node " + e.node + " did not answer" }
func (e *nodeError) Unwrap() []error { return []error{e.err, tenants.ErrUnavailable} }

func (r *Remote) request(ctx context.Context, method string, n tenants.Node, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, n.URL+Prefix+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+r.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return r.client.Do(req)
}

// each asks every live node and hands each answer that decoded to add.
func each[T any](r *Remote, method, path string, add func(T)) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range r.nodes(ctx) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := r.request(ctx, method, n, path, nil)
			if err != nil {
				r.log.Warn("data-plane node did not answer", "node", n.ID, "err", err)
				return
			}
			defer resp.Body.Close()
			var v T
			if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil {
				r.log.Warn("data-plane node answered badly", "node", n.ID, "status", resp.Status)
				return
			}
			mu.Lock()
			add(v)
			mu.Unlock()
		}()
	}
	wg.Wait()
}

func tenantPath(tenant string) string { return "/tenants/" + url.PathEscape(tenant) }

func devicePath(tenant, device string) string {
	return tenantPath(tenant) + "/devices/" + url.PathEscape(device)
}

// Connections lists the device's connections on every node.
func (r *Remote) Connections(tenant, device string) []dataplane.Connection {
	var out []dataplane.Connection
	each(r, http.MethodGet, devicePath(tenant, device), func(v deviceView) { out = append(out, v.Connections...) })
	return out
}

// Queue adds up the device's queues as the nodes see them.
func (r *Remote) Queue(tenant, device string) dataplane.QueueStats {
	var q dataplane.QueueStats
	each(r, http.MethodGet, devicePath(tenant, device), func(v deviceView) {
		q.Queued = max(q.Queued, v.Queue.Queued) // one stored queue, seen from each node
		q.Dropped += v.Queue.Dropped
		if v.Queue.Oldest != nil && (q.Oldest == nil || v.Queue.Oldest.Before(*q.Oldest)) {
			q.Oldest = v.Queue.Oldest
		}
	})
	return q
}

// ConnectionCount adds up the tenant's connections on every node.
func (r *Remote) ConnectionCount(tenant string) int {
	n := 0
	each(r, http.MethodGet, tenantPath(tenant), func(v tenantView) { n += v.Connections })
	return n
}

// ExportErrors adds up each export rule's errors on every node.
func (r *Remote) ExportErrors(tenant string) map[string]int64 {
	out := map[string]int64{}
	each(r, http.MethodGet, tenantPath(tenant), func(v tenantView) {
		for k, n := range v.ExportErrors {
			out[k] += n
		}
	})
	return out
}

// Stats adds up the totals of every node.
func (r *Remote) Stats() dataplane.Stats {
	var st dataplane.Stats
	each(r, http.MethodGet, "/stats", func(v dataplane.Stats) { st.Connections += v.Connections })
	return st
}

// Disconnect ends the device's connections on every node.
func (r *Remote) Disconnect(tenant, device string) int {
	n := 0
	each(r, http.MethodPost, devicePath(tenant, device)+"/disconnect", func(v map[string]int) { n += v["closed"] })
	return n
}

// Events is a tenant's recent events: the nodes' (connects, quota hits…)
// and local's (billing), oldest first, as one log.
type Events struct {
	Remote *Remote
	Local  EventLog
}

// Recent merges the nodes' recent events of a tenant with the local ones.
func (e Events) Recent(tenant string) []events.Event {
	var out []events.Event
	if e.Local != nil {
		out = append(out, e.Local.Recent(tenant)...)
	}
	each(e.Remote, http.MethodGet, tenantPath(tenant)+"/events", func(v []events.Event) { out = append(out, v...) })
	slices.SortStableFunc(out, func(a, b events.Event) int { return a.Time.Compare(b.Time) })
	return out
}

// home is the node a tenant's publishes and watches go to: the node
// holding it, or the one that will take it (Pick).
func (r *Remote) home(ctx context.Context, tenant string) (tenants.Node, error) {
	nodes := r.nodes(ctx)
	if len(nodes) == 0 {
		return tenants.Node{}, fmt.Errorf("%w: %w", ErrNoNodes, tenants.ErrUnavailable)
	}
	id, err := r.store.TenantHome(ctx, tenant)
	if err != nil {
		return tenants.Node{}, err
	}
	if n, ok := find(nodes, id); ok && !n.Draining {
		return n, nil
	}
	if n, ok := Pick(tenant, forwarders(nodes)); ok {
		return n, nil
	}
	return tenants.Node{}, fmt.Errorf("%w: %w", ErrNoNodes, tenants.ErrUnavailable)
}

// Publish publishes on the tenant's home node.
func (r *Remote) Publish(ctx context.Context, tenant string, m dataplane.Message) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	n, err := r.home(ctx, tenant)
	if err != nil {
		return err
	}
	resp, err := r.request(ctx, http.MethodPost, n, tenantPath(tenant)+"/messages", m)
	if err != nil {
		return r.failed(n, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return readFailure(resp, n.ID)
	}
	return nil
}

// PublishEvent has the tenant's home node, which holds its outboxes,
// publish an event raised on this control plane (billing's) in the
// tenant: into its rules' outboxes and on its $events topic.
func (r *Remote) PublishEvent(ctx context.Context, e events.Event) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	n, err := r.home(ctx, e.Tenant)
	if err != nil {
		return err
	}
	resp, err := r.request(ctx, http.MethodPost, n, tenantPath(e.Tenant)+"/events", e)
	if err != nil {
		return r.failed(n, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return readFailure(resp, n.ID)
	}
	return nil
}

// Watch streams the tenant's messages from its home node until ctx ends;
// the home bounds the views of the tenant and of the watcher. The stream
// lasts as long as ctx, but the home must answer within callTimeout: one
// that takes the connection and says nothing (paused, overloaded) fails
// the watch, rather than holding the caller for as long as it waits.
//
// A stream that ends while ctx lasts (the home restarted, or went silent
// past watchIdle: a live home writes every 15 s), or whose node is no
// longer the tenant's home (looked up every watchRehome: a node that
// handed the tenant on keeps its watches, and sees none of the tenant's
// messages any more), is opened again, at the tenant's home then, after a
// pause that grows from watchRetry to watchRetryMax while it fails. What
// was published in between is not seen: a watch is a live view, at most
// once. Before, the watch went quiet for good, and the caller (an app's
// stream, the console's live view) never knew.
func (r *Remote) Watch(ctx context.Context, tenant, watcher, filter string, fn func(dataplane.Message)) error {
	body, n, stop, err := r.openWatch(ctx, tenant, watcher, filter, false)
	if err != nil {
		return err
	}
	go func() {
		attempt := 0 // the pause grows from one reopening to the next while streams end at once
		for {
			opened := time.Now()
			moved := r.closeIfMoved(ctx, tenant, n, body)
			readWatch(body, r.watchIdle, fn)
			moved()
			body.Close()
			stop()
			if time.Since(opened) >= r.watchRetryMax {
				attempt = 0 // it lasted: the home was well
			}
			var ok bool
			if body, n, stop, ok = r.reopenWatch(ctx, tenant, watcher, filter, &attempt); !ok {
				return
			}
		}
	}()
	return nil
}

// reopenWatch opens a watch's stream again, after a pause that grows with
// *attempt, until it opens or ctx ends (ok false). The first failure of
// an outage is logged, and the end of one.
func (r *Remote) reopenWatch(ctx context.Context, tenant, watcher, filter string, attempt *int) (body io.ReadCloser, n tenants.Node, stop context.CancelFunc, ok bool) {
	for failing := false; ; failing = true {
		*attempt++
		select {
		case <-ctx.Done():
			return nil, n, nil, false
		case <-time.After(min(r.watchRetry<<min(*attempt-1, 10), r.watchRetryMax)):
		}
		body, n, stop, err := r.openWatch(ctx, tenant, watcher, filter, true)
		switch {
		case err == nil:
			if failing {
				r.log.Info("watch of a tenant's messages open again", "tenant", tenant)
			}
			return body, n, stop, true
		case ctx.Err() != nil:
			return nil, n, nil, false
		case !failing:
			log := r.log.With("tenant", tenant, "err", err)
			if ne := (*nodeError)(nil); errors.As(err, &ne) {
				log = log.With("url", ne.url, "cause", ne.err)
			}
			log.Warn("watch of a tenant's messages lost; opening it again")
		}
	}
}

// watchIdle is how long a watch's stream may say nothing (its home writes
// every 15 s) before it is taken for dead; watchRetry and watchRetryMax
// bound the pause before it is opened again.
const (
	watchIdle     = 45 * time.Second
	watchRetry    = 200 * time.Millisecond
	watchRetryMax = 5 * time.Second
	watchRehome   = 30 * time.Second
)

// closeIfMoved closes a watch's stream from node n once the tenant's home
// is another node (looked up every watchRehome), until the returned func
// is called.
func (r *Remote) closeIfMoved(ctx context.Context, tenant string, n tenants.Node, body io.Closer) (done func()) {
	stop := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tk := time.NewTicker(r.watchRehome)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			hctx, cancel := context.WithTimeout(ctx, callTimeout)
			home, err := r.home(hctx, tenant)
			cancel()
			if err == nil && home.ID != n.ID {
				r.log.Info("watch of a tenant's messages follows it to its new home", "tenant", tenant, "from", n.ID, "to", home.ID)
				body.Close()
				return
			}
		}
	}()
	return func() { close(stop); <-finished }
}

// openWatch opens a watch's stream at the tenant's home: its body, the
// node, and what ends the request.
//
// Quiet, a failure on the way is not logged: a watch being opened again
// logs the first of an outage (see Watch), not one every few seconds.
func (r *Remote) openWatch(ctx context.Context, tenant, watcher, filter string, quiet bool) (io.ReadCloser, tenants.Node, context.CancelFunc, error) {
	hctx, cancel := context.WithTimeout(ctx, callTimeout)
	n, err := r.home(hctx, tenant)
	cancel()
	if err != nil {
		return nil, n, nil, err
	}
	sctx, stop := context.WithCancel(ctx)
	late := time.AfterFunc(callTimeout, stop)
	resp, err := r.request(sctx, http.MethodGet, n, tenantPath(tenant)+"/watch?"+url.Values{"filter": {filter}, "watcher": {watcher}}.Encode(), nil)
	if !late.Stop() {
		if err == nil {
			resp.Body.Close() // answered as the time ran out: its stream is cancelled
		}
		err = fmt.Errorf("no answer within %s", callTimeout)
	}
	if err != nil {
		stop()
		if quiet {
			return nil, n, nil, &nodeError{node: n.ID, url: n.URL, err: err}
		}
		return nil, n, nil, r.failed(n, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer stop()
		defer resp.Body.Close()
		return nil, n, nil, readFailure(resp, n.ID)
	}
	return resp.Body, n, stop, nil
}

// readWatch hands fn each message of a watch's stream until it ends, or
// says nothing for idle.
func readWatch(body io.ReadCloser, idleFor time.Duration, fn func(dataplane.Message)) {
	idle := time.AfterFunc(idleFor, func() { body.Close() })
	defer idle.Stop()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 32<<20)
	for sc.Scan() {
		idle.Reset(idleFor)
		var m dataplane.Message
		if json.Unmarshal(sc.Bytes(), &m) == nil && m.Topic != "" {
			fn(m)
		}
	}
}

var _ dataplane.Deliveries = (*Remote)(nil)

func destinationPath(tenant, id string) string {
	return tenantPath(tenant) + "/destinations/" + url.PathEscape(id)
}

// atHome asks the tenant's home node, which holds its outboxes, and
// decodes its answer into out.
func (r *Remote) atHome(ctx context.Context, method, tenant, path string, out any) error {
	_, err := r.atHomeHeader(ctx, method, tenant, path, out)
	return err
}

// atHomeHeader is atHome, returning the answer's header too.
func (r *Remote) atHomeHeader(ctx context.Context, method, tenant, path string, out any) (http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	n, err := r.home(ctx, tenant)
	if err != nil {
		return nil, err
	}
	resp, err := r.request(ctx, method, n, path, nil)
	if err != nil {
		return nil, r.failed(n, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readFailure(resp, n.ID)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, r.failed(n, err)
	}
	return resp.Header, nil
}

// DeliveryStatus asks the tenant's home node.
func (r *Remote) DeliveryStatus(ctx context.Context, tenant, destination string) (dataplane.DeliveryStatus, error) {
	var st dataplane.DeliveryStatus
	err := r.atHome(ctx, http.MethodGet, tenant, destinationPath(tenant, destination)+"/status", &st)
	return st, err
}

// DeadLetters asks the tenant's home node.
func (r *Remote) DeadLetters(ctx context.Context, tenant, destination string, after uint64, limit int) ([]dataplane.DeadLetter, bool, error) {
	var out []dataplane.DeadLetter
	q := url.Values{"after": {strconv.FormatUint(after, 10)}, "limit": {strconv.Itoa(limit)}}
	hdr, err := r.atHomeHeader(ctx, http.MethodGet, tenant, destinationPath(tenant, destination)+"/dead-letters?"+q.Encode(), &out)
	if err != nil {
		return nil, false, err
	}
	// In a header, so that the body is the list a node of the release
	// before answered.
	return out, hdr.Get(deadLettersMoreHeader) == "true", nil
}

// deadLettersMoreHeader says a page of dead letters was cut short by its
// bytes (dataplane.Deliveries.DeadLetters' more).
const deadLettersMoreHeader = "Roost-More"

// ReplayDeadLetters asks the tenant's home node.
func (r *Remote) ReplayDeadLetters(ctx context.Context, tenant, destination string) (int, error) {
	var v map[string]int
	err := r.atHome(ctx, http.MethodPost, tenant, destinationPath(tenant, destination)+"/dead-letters/replay", &v)
	return v["moved"], err
}

// PurgeDeadLetters asks the tenant's home node.
func (r *Remote) PurgeDeadLetters(ctx context.Context, tenant, destination string) (int, error) {
	var v map[string]int
	err := r.atHome(ctx, http.MethodPost, tenant, destinationPath(tenant, destination)+"/dead-letters/purge", &v)
	return v["moved"], err
}

// holder is the node a device is connected to, if any.
func (r *Remote) holder(ctx context.Context, tenant, device string) (tenants.Node, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	nodes := r.nodes(ctx)
	if len(nodes) == 0 {
		return tenants.Node{}, false, fmt.Errorf("%w: %w", ErrNoNodes, tenants.ErrUnavailable)
	}
	found := make(chan tenants.Node, len(nodes))
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := r.request(ctx, http.MethodGet, n, devicePath(tenant, device), nil)
			if err != nil {
				r.log.Warn("data-plane node did not answer", "node", n.ID, "err", err)
				return
			}
			defer resp.Body.Close()
			var v deviceView
			if resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&v) == nil && len(v.Connections) > 0 {
				found <- n
			}
		}()
	}
	wg.Wait()
	close(found)
	n, ok := <-found
	return n, ok, nil
}

// Command sends the command through the node the device is connected to
// (a queued one for a device connected nowhere through the tenant's
// home), which waits for the reply.
func (r *Remote) Command(ctx context.Context, tenant, device string, c dataplane.Command) (dataplane.CommandResult, error) {
	n, ok, err := r.holder(ctx, tenant, device)
	if err != nil {
		return dataplane.CommandResult{}, err
	}
	if !ok {
		if !c.Queue {
			return dataplane.CommandResult{Outcome: dataplane.CommandOffline}, nil
		}
		hctx, cancel := context.WithTimeout(ctx, callTimeout)
		n, err = r.home(hctx, tenant)
		cancel()
		if err != nil {
			return dataplane.CommandResult{}, err
		}
	}
	wait := c.Timeout
	if wait <= 0 || wait > dataplane.MaxCommandTimeout {
		wait = dataplane.DefaultCommandTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, wait+callTimeout)
	defer cancel()
	resp, err := r.request(ctx, http.MethodPost, n, devicePath(tenant, device)+"/commands", c)
	if err != nil {
		return dataplane.CommandResult{}, r.failed(n, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return dataplane.CommandResult{}, readFailure(resp, n.ID)
	}
	var res dataplane.CommandResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return dataplane.CommandResult{}, r.failed(n, err)
	}
	return res, nil
}

// retainedPage is a page of retained messages on the wire.
type retainedPage struct {
	Items []dataplane.Retained `json:"items"`
	Next  int                  `json:"next"`
}

// Retained asks the tenant's home node, whose broker holds every retained
// message of the tenant.
func (r *Remote) Retained(ctx context.Context, tenant, filter string, offset, limit int) ([]dataplane.Retained, int, error) {
	var p retainedPage
	q := url.Values{"filter": {filter}, "offset": {strconv.Itoa(offset)}, "limit": {strconv.Itoa(limit)}}
	err := r.atHome(ctx, http.MethodGet, tenant, tenantPath(tenant)+"/retained?"+q.Encode(), &p)
	return p.Items, p.Next, err
}

// RetainedMessage asks the tenant's home node.
func (r *Remote) RetainedMessage(ctx context.Context, tenant, topic string) (dataplane.RetainedMessage, error) {
	var m dataplane.RetainedMessage
	err := r.atHome(ctx, http.MethodGet, tenant, tenantPath(tenant)+"/retained/message?"+url.Values{"topic": {topic}}.Encode(), &m)
	return m, err
}

// DeleteRetained asks the tenant's home node.
func (r *Remote) DeleteRetained(ctx context.Context, tenant, topic string) error {
	var v map[string]bool
	return r.atHome(ctx, http.MethodPost, tenant, tenantPath(tenant)+"/retained/delete?"+url.Values{"topic": {topic}}.Encode(), &v)
}

// Session puts together the device's sessions on every node.
func (r *Remote) Session(ctx context.Context, tenant, device string) (dataplane.Session, error) {
	out := dataplane.Session{Device: device, Sessions: []dataplane.ClientSession{}}
	each(r, http.MethodGet, devicePath(tenant, device)+"/session", func(v dataplane.Session) {
		out.Sessions = append(out.Sessions, v.Sessions...)
	})
	slices.SortFunc(out.Sessions, func(a, b dataplane.ClientSession) int { return strings.Compare(a.ClientID, b.ClientID) })
	return out, nil
}

// PurgeQueue purges the device's queues on every node.
func (r *Remote) PurgeQueue(ctx context.Context, tenant, device string) (int, error) {
	n := 0
	each(r, http.MethodPost, devicePath(tenant, device)+"/session/purge", func(v map[string]int) { n += v["purged"] })
	return n, nil
}
