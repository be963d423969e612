// Package kafka is a fabric (see package fabric) on Kafka: it joins the
// brokers that serve one tenant on several nodes through one Kafka topic.
//
// Every tenant's cross-node traffic is the tenant's log: the records of
// one partition of the topic keyed by the tenant (a tenant's partition is
// fixed by its name). A publish that may have to cross is appended to the
// tenant's log once, whoever is to get it, and every owner of the tenant
// (a node's broker for it, or its home) reads the whole log and delivers
// what matches its own subscriptions. Routes are therefore not needed for
// a message to reach its subscribers, and none is written to Kafka for a
// plain subscription: an owner notes its filter in memory before the
// SUBACK, and any message acknowledged after that SUBACK is later in the
// log than where the owner started reading, so the owner reads it after
// the filter was noted. Kafka cannot refuse an append whose sender's view
// is stale, as the Redis fabric's script does; reading everything is what
// makes "route before SUBACK" hold without it. The cost is read fan-out:
// every node serving a tenant reads all of its cross-node messages.
//
// Shared subscriptions ($share/<group>/<filter>) need every owner to agree
// on which one serves a group, without asking each other. Their routes are
// written in the tenant's log itself, before the SUBACK (acks=all): an
// owner's "state" record lists its shared filters, written at every change
// and renewed every Lease/4 while it has some. Reading the log in order,
// every owner knows the same members at each message (the owners whose
// state lists a matching filter, whose last record is no older than Lease
// by the log's timestamps; the home never lapses, its queue outlives it),
// and the group goes to the member with the highest hash of (member,
// group, the message's place in the log) — rendezvous hashing, so an owner
// that knows fewer members (it started reading later) may serve a message
// another member also serves, but never leaves one that is its own
// unserved. An owner decides for itself from its own current
// subscriptions, not from the log. A group with a member on the
// publisher's node is served there (servedHere) and nowhere else.
//
// The home reads the log through a consumer group of its own,
// "<topic>.home.<tenant>": a record is acknowledged (its offset
// committed) only once the home delivered it or found nothing of its own
// in it, so a new home (another node joining as home) resumes where the
// old one stopped, and nothing acknowledged to a publisher is lost with a
// home. The first home commits where it starts reading before it returns.
// Until a home delivered the log up to where it ended when the home
// joined (CaughtUp), its broker holds what is published at it: delivered
// at once, it would reach a persistent session before older messages of
// the same publisher still being read.
// A node starts reading at the log's end when it joins: its subscribers
// are clean sessions, which start afresh.
//
// One client serves all of a node's tenants: it reads the partitions its
// tenants' logs are on, from the earliest place any of them needs, and
// keeps the latest shared routes it read there for an owner that joins
// later. An owner whose queue is full (a slow broker) is passed over, and
// reads its part again once it caught up; the others skip what they
// already had.
//
// What it costs, and its limits:
//   - Every publish of a spread tenant crosses Kafka once (QoS 0 too,
//     without waiting), and every node serving the tenant reads it.
//   - Kafka out of reach: a QoS 1 or 2 send fails after SendTimeout (the
//     publisher is refused), as does a shared subscription; a plain one
//     is granted (it writes nothing). A write whose answer was lost may
//     have been taken: refused, and delivered all the same.
//   - A home away longer than the topic's retention loses what was
//     queued for it (logged); a home that dies delivers again what it
//     did not commit (CommitEvery): at least once, QoS 2 included. While
//     it catches up a home does not retain again what it reads (the
//     origin stored it), so an old retained message cannot replace a
//     newer one.
//   - A member of a shared group that left is still counted until its
//     state says so (a message given to it then is lost to the group),
//     one that died until Lease passed; an owner that knows of fewer
//     members than the others (it started reading from a commit, or
//     within Lease of another's last state) may serve a group's message
//     another member serves too.
//   - The topic's partition count must not change while nodes run.
//
// Records: key = tenant; value = a version byte, a kind (message or
// state), the owner that wrote it, then the message (flags, topic,
// payload, properties and the shared groups served where it was
// published) or the state (the owner's shared filters).
package kafka

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/roosthub/roost/broker/fabric"
)

// Config is what a node's fabric on Kafka needs.
type Config struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// Topic carries every tenant's log; "roost.fabric" if empty. Each
	// tenant's home commits its place in group "<Topic>.home.<tenant>".
	Topic string
	// Partitions and Replication are used if the topic has to be created
	// (16, and the brokers' default, if zero). A tenant's partition is
	// its name's hash modulo the topic's partitions: the count must not
	// change while any node runs.
	Partitions  int32
	Replication int16
	// Retention, if set, is the created topic's retention.ms. It bounds
	// how long a home may be away without losing what was queued for it.
	Retention time.Duration
	// Node is this node's id.
	Node string
	Log  *slog.Logger
	// Lease is how long an owner's shared routes count after its last
	// record (it writes one every Lease/4 while it has some): 5s if zero.
	Lease time.Duration
	// SendTimeout bounds how long a record may wait to be written when
	// Kafka cannot be reached: 5s if zero.
	SendTimeout time.Duration
	// CommitEvery is how often a home commits its place while it reads:
	// 1s if zero. A home that dies redelivers at most that much.
	CommitEvery time.Duration
	// Queue is how many records may wait for one owner's broker: 1024 if
	// zero.
	Queue int
	// Opts are more client options (TLS, SASL...).
	Opts []kgo.Opt
}

var (
	_ fabric.Node  = (*Fabric)(nil)
	_ fabric.Owner = (*Tenant)(nil)
)

// Fabric is a node's part in its spread tenants, on Kafka.
type Fabric struct {
	cfg        Config
	cl         *kgo.Client
	adm        *kadm.Client
	partitions int32

	mu      sync.Mutex
	tenants map[string]*Tenant
	parts   map[int32]*part
	reqs    []func()
	wake    context.CancelFunc

	stop    context.CancelFunc
	stopped chan struct{}
	beats   chan struct{}

	sent, received, failed, dropped, rewinds atomic.Int64
}

// part is a partition this node reads: the owners whose logs are on it,
// and where the client reads it.
type part struct {
	owners map[string]*Tenant
	pos    int64 // the next offset the client returns
	hwm    int64 // the partition's end, as last fetched
	// states are the latest shared routes of every tenant's owners on
	// the partition, as read: an owner that joins learns them here.
	states map[string]map[string]state
}

type state struct {
	filters []string
	at      time.Time
}

// New connects to Kafka, creates the topic if it is missing, and starts
// reading.
func New(ctx context.Context, cfg Config) (*Fabric, error) {
	if cfg.Node == "" {
		return nil, errors.New("fabric: no node id")
	}
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("fabric: no Kafka brokers")
	}
	if cfg.Topic == "" {
		cfg.Topic = "roost.fabric"
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = 16
	}
	if cfg.Replication == 0 {
		cfg.Replication = -1
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 5 * time.Second
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = 5 * time.Second
	}
	if cfg.CommitEvery <= 0 {
		cfg.CommitEvery = time.Second
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 1024
	}
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID("roost-fabric-" + cfg.Node),
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordDeliveryTimeout(cfg.SendTimeout),
		// A write whose answer was lost when Kafka went away fails
		// after SendTimeout rather than wait for Kafka to come back
		// (the publisher is refused; the write may have been taken).
		kgo.AllowIdempotentProduceCancellation(),
		kgo.ProducerLinger(0),
		kgo.FetchMaxWait(500 * time.Millisecond),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.RetryTimeout(cfg.SendTimeout),
	}, cfg.Opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("fabric: kafka: %w", err)
	}
	f := &Fabric{cfg: cfg, cl: cl, adm: kadm.NewClient(cl), tenants: map[string]*Tenant{}, parts: map[int32]*part{}}
	if f.partitions, err = f.topic(ctx); err != nil {
		cl.Close()
		return nil, fmt.Errorf("fabric: kafka topic %s: %w", cfg.Topic, err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	f.stop, f.stopped, f.beats = stop, make(chan struct{}), make(chan struct{})
	go f.poll(runCtx)
	go f.heartbeat(runCtx)
	return f, nil
}

// topic creates the topic if it is missing and returns its partitions.
// It asks to create it first: the metadata a client read says "missing"
// for a while after the topic is created.
func (f *Fabric) topic(ctx context.Context) (int32, error) {
	var configs map[string]*string
	if f.cfg.Retention > 0 {
		ms := strconv.FormatInt(f.cfg.Retention.Milliseconds(), 10)
		configs = map[string]*string{"retention.ms": &ms}
	}
	resp, err := f.adm.CreateTopic(ctx, f.cfg.Partitions, f.cfg.Replication, configs, f.cfg.Topic)
	if err == nil {
		err = resp.Err
	}
	if err == nil && resp.NumPartitions > 0 {
		f.cfg.Log.Info("fabric: created the Kafka topic", "topic", f.cfg.Topic, "partitions", resp.NumPartitions)
		return resp.NumPartitions, nil
	}
	// There already (or not ours to create): read it.
	details, lerr := f.adm.ListTopics(ctx, f.cfg.Topic)
	if lerr != nil {
		return 0, lerr
	}
	if d, ok := details[f.cfg.Topic]; ok && d.Err == nil && len(d.Partitions) > 0 {
		return int32(len(d.Partitions)), nil
	}
	if err == nil || errors.Is(err, kerr.TopicAlreadyExists) {
		err = errors.New("not in the metadata")
	}
	return 0, err
}

// Node is this node's id.
func (f *Fabric) Node() string { return f.cfg.Node }

// Close leaves every tenant and closes the client.
func (f *Fabric) Close() error {
	f.mu.Lock()
	ts := make([]*Tenant, 0, len(f.tenants))
	for _, t := range f.tenants {
		ts = append(ts, t)
	}
	f.mu.Unlock()
	for _, t := range ts {
		t.Leave()
	}
	f.stop()
	<-f.stopped
	<-f.beats
	f.cl.Close()
	return nil
}

// Stats are the fabric's counters now. Sent counts the messages Kafka
// took, Received those delivered here, Failed the sends Kafka did not
// take; Stale is always 0 (no sender's view can be stale: see the package
// comment). Routes are this node's owners' filters and the shared routes
// of the others they know of; Lag is the records of this node's partitions
// not yet read, and those read but not yet delivered.
func (f *Fabric) Stats() fabric.Stats {
	s := fabric.Stats{Sent: f.sent.Load(), Received: f.received.Load(), Failed: f.failed.Load()}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.tenants {
		s.Tenants++
		s.Routes += t.routes.Load()
		s.Lag += int64(len(t.queue))
	}
	for _, p := range f.parts {
		s.Lag += max(0, p.hwm-p.pos)
	}
	return s
}

// Dropped counts the messages a node's broker could not take (its clean
// subscribers missed them); a home's are delivered again instead.
func (f *Fabric) Dropped() int64 { return f.dropped.Load() }

// Rewinds counts how often a partition was read again from an earlier
// place: for an owner that joined behind where it was read, or that was
// passed over while its queue was full.
func (f *Fabric) Rewinds() int64 { return f.rewinds.Load() }

// write hands a record to the client and returns the wait for Kafka's
// answer, which gives up after ctx or SendTimeout: the client does not
// always notice a lapsed deadline while it cannot reach Kafka, but it
// checks the record's before it writes it, so a record given up on is
// not written later.
func (f *Fabric) write(ctx context.Context, rec *kgo.Record) func() error {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.SendTimeout)
	done := make(chan error, 1)
	f.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) { done <- err })
	return func() error {
		defer cancel()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// partition is where a tenant's log is.
func (f *Fabric) partition(tenant string) int32 {
	h := fnv.New32a()
	h.Write([]byte(tenant))
	return int32(h.Sum32() % uint32(f.partitions))
}

func (f *Fabric) group(tenant string) string { return f.cfg.Topic + ".home." + tenant }

// Join makes this node an owner of the tenant: as its home, or as one of
// its nodes. deliver receives, in the log's order, the messages other
// owners send that are for this one (or, retained, for every owner); a
// home's deliver error leaves the message to be delivered again, a node's
// drops it. Reading starts once the owner's routes are set (the first
// Replace or Add): a home resumes from its group's committed offset.
func (f *Fabric) Join(ctx context.Context, tenant string, home bool, deliver func(fabric.Message) error) (fabric.Owner, error) {
	owner := f.cfg.Node
	if home {
		owner = fabric.Home
	}
	runCtx, stop := context.WithCancel(context.Background())
	t := &Tenant{
		f: f, name: tenant, owner: owner, home: home, deliver: deliver, part: f.partition(tenant),
		queue: make(chan item, f.cfg.Queue), ready: make(chan struct{}), filters: map[string]bool{},
		view: newView(), ctx: runCtx, stop: stop, done: make(chan struct{}),
	}
	t.local = newIndex()
	f.mu.Lock()
	if _, taken := f.tenants[tenant]; taken {
		f.mu.Unlock()
		stop()
		return nil, fmt.Errorf("fabric: tenant %s joined twice on this node", tenant)
	}
	f.tenants[tenant] = t
	f.mu.Unlock()
	from, start, end, err := f.start(ctx, t)
	if err != nil {
		f.mu.Lock()
		delete(f.tenants, tenant)
		f.mu.Unlock()
		stop()
		return nil, fmt.Errorf("fabric: join tenant %s: %w", tenant, err)
	}
	t.deliverFrom, t.catchUp, t.processed, t.committed = start, end, start, start
	t.caughtUp = make(chan struct{})
	if !home || start >= end {
		t.caughtOnce.Do(func() { close(t.caughtUp) })
	}
	f.control(func() { f.attach(t, from, start) })
	go t.run()
	return t, nil
}

// start is where an owner delivers its tenant's log from, where it reads
// it from (up to a Lease earlier: the others' latest shared routes are
// there), and where the log ends now. A home delivers from its group's
// committed offset, or, the first time, from the end, which it commits
// before it returns.
func (f *Fabric) start(ctx context.Context, t *Tenant) (from, start, end int64, err error) {
	ends, err := f.adm.ListEndOffsets(ctx, f.cfg.Topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("list end offsets: %w", err)
	}
	o, ok := ends.Lookup(f.cfg.Topic, t.part)
	if !ok {
		return 0, 0, 0, fmt.Errorf("no partition %d", t.part)
	}
	end, start = o.Offset, o.Offset
	if t.home {
		committed, err := f.adm.FetchOffsets(ctx, f.group(t.name))
		if err == nil {
			err = committed.Error()
		}
		if errors.Is(err, kerr.GroupIDNotFound) {
			committed, err = nil, nil
		}
		if err != nil {
			return 0, 0, 0, fmt.Errorf("fetch the home's offset: %w", err)
		}
		if c, ok := committed.Lookup(f.cfg.Topic, t.part); ok && c.At >= 0 {
			start = c.At
			starts, err := f.adm.ListStartOffsets(ctx, f.cfg.Topic)
			if err == nil {
				err = starts.Error()
			}
			if err != nil {
				return 0, 0, 0, fmt.Errorf("list start offsets: %w", err)
			}
			if s, ok := starts.Lookup(f.cfg.Topic, t.part); ok && s.Offset > start {
				f.cfg.Log.Error("fabric: the home's place is no longer in Kafka (retention): what was queued for it since is lost",
					"tenant", t.name, "committed", start, "log_start", s.Offset)
				start = s.Offset
			}
		} else if err := f.commit(ctx, t, end); err != nil {
			return 0, 0, 0, err
		}
	}
	from = start
	since := time.Now().Add(-f.cfg.Lease - f.cfg.Lease/4).UnixMilli()
	after, err := f.adm.ListOffsetsAfterMilli(ctx, since, f.cfg.Topic)
	if err == nil {
		err = after.Error()
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("list offsets by time: %w", err)
	}
	if a, ok := after.Lookup(f.cfg.Topic, t.part); ok && a.Offset >= 0 && a.Offset < from {
		from = a.Offset
	}
	return from, start, end, nil
}

// commit records that a home has what its tenant's log held before offset.
func (f *Fabric) commit(ctx context.Context, t *Tenant, offset int64) error {
	os := kadm.Offsets{}
	os.Add(kadm.Offset{Topic: f.cfg.Topic, Partition: t.part, At: offset, LeaderEpoch: -1, Metadata: f.cfg.Node})
	resp, err := f.adm.CommitOffsets(ctx, f.group(t.name), os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return fmt.Errorf("commit the home's offset: %w", err)
	}
	return nil
}

// control runs fn on the reading goroutine, between polls, and waits.
func (f *Fabric) control(fn func()) {
	done := make(chan struct{})
	f.request(func() { fn(); close(done) })
	select {
	case <-done:
	case <-f.stopped:
	}
}

// request asks the reading goroutine to run fn between polls.
func (f *Fabric) request(fn func()) {
	f.mu.Lock()
	f.reqs = append(f.reqs, fn)
	wake := f.wake
	f.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// attach adds an owner to its partition, to deliver from start on. The
// first owner of a partition reads it from from, to learn the others'
// shared routes; a later one learns them from what the partition's reader
// kept, and reads from where the reader is (or from start, if that is
// earlier). Runs on the reading goroutine, with f.mu held.
func (f *Fabric) attach(t *Tenant, from, start int64) {
	p := f.parts[t.part]
	if p == nil {
		p = &part{owners: map[string]*Tenant{t.name: t}, pos: from, hwm: from, states: map[string]map[string]state{}}
		f.parts[t.part] = p
		t.next = from
		f.cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{f.cfg.Topic: {t.part: kgo.NewOffset().At(from)}})
		return
	}
	for owner, st := range p.states[t.name] {
		if owner != t.owner {
			t.view.set(owner, st.filters, st.at)
		}
	}
	p.owners[t.name] = t
	t.next = min(start, p.pos)
	f.rewind(t.part, p, start)
}

// rewind reads a partition again from offset, if it was read past it.
func (f *Fabric) rewind(id int32, p *part, offset int64) {
	if offset >= p.pos {
		return
	}
	f.rewinds.Add(1)
	f.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{f.cfg.Topic: {id: {Epoch: -1, Offset: offset}}})
	p.pos = offset
}

// detach takes an owner off its partition, and stops reading the
// partition with the last. Runs on the reading goroutine, with f.mu held.
func (f *Fabric) detach(t *Tenant) {
	p := f.parts[t.part]
	if p == nil || p.owners[t.name] != t {
		return
	}
	delete(p.owners, t.name)
	if len(p.owners) == 0 {
		delete(f.parts, t.part)
		f.cl.RemoveConsumePartitions(map[string][]int32{f.cfg.Topic: {t.part}})
	}
}

// resume reads an owner's part again once it caught up with its queue.
// Runs on the reading goroutine, with f.mu held.
func (f *Fabric) resume(t *Tenant) {
	t.resumeAsked.Store(false)
	p := f.parts[t.part]
	if !t.stalled.Load() || p == nil || p.owners[t.name] != t {
		return
	}
	t.stalled.Store(false)
	f.rewind(t.part, p, t.next)
}

// poll reads the partitions of this node's tenants and hands each record
// to its tenant's owner here.
func (f *Fabric) poll(ctx context.Context) {
	defer close(f.stopped)
	var failing bool
	for ctx.Err() == nil {
		f.mu.Lock()
		reqs := f.reqs
		f.reqs = nil
		for _, fn := range reqs {
			fn()
		}
		pctx, cancel := context.WithCancel(ctx)
		f.wake = cancel
		f.mu.Unlock()
		fetches := f.cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		var ferr error
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				ferr = fmt.Errorf("partition %d: %w", p, err)
			}
		})
		switch {
		case ferr != nil && !failing:
			f.cfg.Log.Warn("fabric: read from Kafka", "err", ferr)
			failing = true
		case ferr == nil && failing && fetches.NumRecords() > 0:
			f.cfg.Log.Info("fabric: reading from Kafka again")
			failing = false
		}
		f.mu.Lock()
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			if fp.Topic != f.cfg.Topic {
				return
			}
			p := f.parts[fp.Partition]
			if p == nil {
				return
			}
			if fp.HighWatermark > 0 {
				p.hwm = fp.HighWatermark
			}
			for _, r := range fp.Records {
				p.pos = r.Offset + 1
				if len(r.Value) > 1 && r.Value[1] == kindState {
					p.keep(r)
				}
				t := p.owners[string(r.Key)]
				if t == nil || r.Offset < t.next || t.stalled.Load() {
					continue
				}
				select {
				case t.queue <- item{rec: r}:
					t.next = r.Offset + 1
				default:
					// Passed over until it caught up: it reads this
					// record again then (resume).
					t.stalled.Store(true)
				}
			}
			// A home commits past the records of other tenants too.
			for _, t := range p.owners {
				if t.home && !t.stalled.Load() && p.pos > t.next {
					select {
					case t.queue <- item{mark: p.pos}:
						t.next = p.pos
					default:
					}
				}
			}
		})
		f.mu.Unlock()
	}
}

// keep notes a state record.
func (p *part) keep(r *kgo.Record) {
	rec, err := decode(r.Value)
	if err != nil {
		return
	}
	tenant := string(r.Key)
	if len(rec.filters) == 0 {
		delete(p.states[tenant], rec.origin)
		if len(p.states[tenant]) == 0 {
			delete(p.states, tenant)
		}
		return
	}
	if p.states[tenant] == nil {
		p.states[tenant] = map[string]state{}
	}
	p.states[tenant][rec.origin] = state{filters: rec.filters, at: r.Timestamp}
}

// heartbeat renews the shared routes of this node's owners.
func (f *Fabric) heartbeat(ctx context.Context) {
	defer close(f.beats)
	tick := time.NewTicker(f.cfg.Lease / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f.mu.Lock()
		ts := make([]*Tenant, 0, len(f.tenants))
		for _, t := range f.tenants {
			ts = append(ts, t)
		}
		f.mu.Unlock()
		for _, t := range ts {
			t.renew()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
