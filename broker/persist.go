package broker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/dataplane"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// SessionStore keeps persistent sessions, their queues and retained
// messages. The back-ends in broker/store satisfy it.
//
// A session has one owner at a time: the broker that claimed it last
// (Claim). The owner's writes carry the epoch its claim returned and are
// refused with store.ErrFenced once another claim followed, so that a
// broker that lost a session (to a connection elsewhere, or because its
// node was taken for dead) cannot overwrite or delete what the new owner
// keeps. Appends are not fenced: any broker queues messages for any session.
type SessionStore interface {
	// Claim makes the caller the session's owner and returns its new
	// epoch, which the owner's writes carry.
	Claim(ctx context.Context, tenant, clientID string) (uint64, error)
	// SaveSession writes the record, fenced by s.Epoch.
	SaveSession(ctx context.Context, tenant string, s store.Session) error
	Sessions(ctx context.Context, tenant string) ([]store.Session, error)
	// Session reads one session's record (with its PendingRelease and Epoch,
	// as Sessions fills them); found is false if it has none.
	Session(ctx context.Context, tenant, clientID string) (s store.Session, found bool, err error)
	DeleteSession(ctx context.Context, tenant, clientID string, epoch uint64) error
	// Append queues the items and returns their sequence numbers. A
	// receipt with a client id is recorded in the same write: the items
	// and the receipt are stored together or not at all.
	Append(ctx context.Context, tenant string, items []store.Item, r store.Receipt) ([]uint64, error)
	// Release forgets a receipt once its PUBREL arrived.
	Release(ctx context.Context, tenant, clientID string, epoch uint64, packetID uint16) error
	// Mark records the packet id a queued QoS 2 message is sent with, and
	// whether the client acknowledged it with PUBREC. A mark on a message
	// no longer queued is ignored.
	Mark(ctx context.Context, tenant, clientID string, epoch, seq uint64, packetID uint16, released bool) error
	Read(ctx context.Context, tenant, clientID string, after uint64, limit int) ([]store.Queued, error)
	// Ack deletes exactly the queued messages named, with their marks:
	// never a range, which could cover messages another broker queued
	// and this one has not seen.
	Ack(ctx context.Context, tenant, clientID string, epoch uint64, seqs []uint64) error
	QueueInfo(ctx context.Context, tenant, clientID string) (store.QueueInfo, error)
	SetRetained(ctx context.Context, tenant string, m store.Message) error
	Retained(ctx context.Context, tenant string) ([]store.Message, error)
	Close() error
}

// seqProperty tags a publish, between OnPublish and its deliveries, with the
// id under which the store numbers of its copies are kept. It is removed
// before any packet is encoded, so no client ever sees it.
const seqProperty = "\x00roost-publish"

// persistence writes a tenant's persistent sessions through to the store.
// What it guarantees: a QoS 1 or 2 message is in the queue of every
// persistent session it is for, and a retained message is stored, before
// the publisher gets its PUBACK or PUBREC. A queued message leaves the
// queue once the subscriber acknowledged it (PUBACK, or PUBCOMP for QoS 2).
// After a restart, sessions, their subscriptions, their unacknowledged
// messages (in order) and retained messages are restored.
//
// QoS 2 is exactly once across restarts too. Inbound: a persistent
// publisher's QoS 2 publish is stored with a receipt for its packet id, in
// the same write; until its PUBREL, a resent PUBLISH with that id is
// acknowledged and not delivered again. Outbound: a QoS 2 message is marked
// in the store with its packet id before it is sent, and marked released
// when the client's PUBREC arrives, so that after a restart it is resent
// with the same id (the client recognises it) or only its PUBREL is.
type persistence struct {
	// claims counts the session claims made here, each a new epoch.
	claims atomic.Int64
	st     SessionStore
	tenant string
	// server is the tenant's mochi server the store mirrors; host answers
	// the questions about the tenant that are not the store's.
	server *mqtt.Server
	host   sessionHost
	log    *slog.Logger

	mu      sync.Mutex
	nextPub uint64
	// pubs maps a publish id to the store number of each session's copy,
	// until mochi has routed it.
	pubs map[string]pubCopies
	// inflight maps a client's outbound packet id to the store number of
	// the message it carries.
	inflight map[string]map[uint16]uint64
	// outstanding holds, per client, the store numbers of its queued
	// messages not yet acknowledged (nor dropped), in order.
	outstanding map[string][]uint64
	// epochs holds, per client, the session's epoch as this broker claimed
	// or read it: its writes for the session carry it (see SessionStore).
	epochs map[string]uint64
	// devices maps restored sessions' client ids to their devices, for ACL
	// checks before the client reconnects.
	devices map[string]string
	// stored holds the client ids that have a session record in the store,
	// so that the many clean connections cost no store write; storedN is
	// its size, read without the lock by every publish: with no persistent
	// session in the tenant there is nothing to queue.
	stored  map[string]bool
	storedN atomic.Int64
	// dropped counts, per client id, messages dropped from a full queue
	// since the tenant's broker started.
	dropped map[string]int64
	// marks holds, per client, the store marks of the QoS 2 messages sent
	// to it, by store number.
	marks map[string]map[uint64]mark
	// received holds, per publisher, the packet ids of its QoS 2 publishes
	// stored with a receipt and not yet released by PUBREL.
	received map[string]map[uint16]bool
	// wills are the Wills restored sessions held back when the tenant's
	// broker last stopped, until the instance takes them over.
	wills []restoredWill
	// live holds the client of each persistent session with a connection
	// established (past its CONNACK and resends); recheck the sessions
	// that may have lost a message to a client object a connection took
	// over (see handedOver and reconcile).
	live    map[string]*mqtt.Client
	recheck map[string]bool
	// lost holds, per client, the copies routed to a client object a new
	// connection took over, by publish tag (see handedOver).
	lost map[string]map[string]uint64
	// holding holds, per client, its deliveries back from its connection
	// until a reconcile sends them from the queue in order (see hold);
	// held counts the deliveries withheld for it, so that a reconcile
	// knows whether more were withheld as it sent.
	holding map[string]bool
	held    map[string]uint64
	// heldPk keeps, per client, the deliveries held back by their copy's
	// number, for reconcile to send without reading the store; each is an
	// outstanding copy, so max_queued bounds them.
	heldPk map[string]map[uint64]packets.Packet
	// reconciling serializes each client's reconciles (by a hash of its
	// client id).
	reconciling [64]sync.Mutex
	// retainedOnly restores retained messages only: a spread tenant's
	// broker on a node other than its home, where no persistent session
	// lives, or any of its brokers when sessions live anywhere (see
	// spread.go).
	retainedOnly bool
	// anywhere: the tenant's persistent sessions live on any node; each is
	// read from the store when its client connects (adopt) and let go
	// when it leaves (evict).
	anywhere bool
	// spread: the tenant is served by every node (see passesOn).
	spread bool
	// discard holds the clients whose connection discarded a stored
	// session, until the new session starts (anywhere).
	discard map[string]bool
	// What a catchUp must not take for copies sent nowhere (see catchUp):
	// appending holds beforeAck's appends in flight, by ticket, until
	// their copies are noted (appended signals each end); acking holds,
	// per client, the numbers taken from its outstanding ones that a read
	// may still return (true: the store's delete has returned); reading
	// counts, per client, the catchUps reading its queue.
	appending  map[uint64]bool
	nextAppend uint64
	appended   sync.Cond
	acking     map[string]map[uint64]bool
	reading    map[string]int
	// What must not reach a session twice (see arrived): resent holds,
	// per session, the copies reconcile sent (and when), which an entry
	// in this node's inbox may bring again; unsend holds, per client, the
	// publishes (by tag) mochi handed it that are not to be written, with
	// the packet id each still takes (see withhold), and
	// unsending counts them, read without the lock as each PUBLISH is
	// encoded.
	// claiming counts, per client, the claims this broker has in flight.
	claiming  map[string]int
	resent    map[string]map[uint64]time.Time
	unsend    map[string]map[string]*withheldCopy
	unsending atomic.Int64
	// unannounced holds, per connection, the outbound topic aliases mochi
	// gave withheld deliveries whose writes were dropped: the client never
	// learned them, so the next delivery under each carries its topic
	// again (see announceAlias); unannouncedN counts them, read without
	// the lock as each PUBLISH is encoded.
	unannounced  map[*mqtt.Client]map[uint16]string
	unannouncedN atomic.Int64
}

// sessionHost is what persistence asks of its tenant's broker.
type sessionHost interface {
	// mayRead reports whether a session's client may read a topic now.
	mayRead(cl *mqtt.Client, topic string) bool
	// quotas are the tenant's quotas now (max_queued, max_session_expiry).
	quotas() tenants.Quotas
	// queuePolicy is what a full queue drops.
	queuePolicy(ctx context.Context) tenants.QueuePolicy
	// heldWill is a session's Will waiting out its delay; nil if none.
	heldWill(clientID string) *store.Will
	// fenced counts a write refused because the session has a new owner.
	fenced()
	// raise raises an event.
	raise(events.Event)
}

// restoredWill is a Will a session's record kept through a restart.
type restoredWill struct {
	device, clientID string
	will             *store.Will
	left             time.Time
}

// mark is how a QoS 2 message is marked in the store: the packet id it was
// sent with, and whether the client has acknowledged it with PUBREC.
type mark struct {
	packetID uint16
	released bool
}

func newPersistence(st SessionStore, tenant string, server *mqtt.Server, host sessionHost, log *slog.Logger) *persistence {
	p := &persistence{
		st: st, tenant: tenant, server: server, host: host, log: log,
		pubs: map[string]pubCopies{}, inflight: map[string]map[uint16]uint64{},
		outstanding: map[string][]uint64{}, epochs: map[string]uint64{}, devices: map[string]string{}, stored: map[string]bool{}, dropped: map[string]int64{},
		marks: map[string]map[uint64]mark{}, received: map[string]map[uint16]bool{},
		live: map[string]*mqtt.Client{}, recheck: map[string]bool{}, lost: map[string]map[string]uint64{}, holding: map[string]bool{}, held: map[string]uint64{}, heldPk: map[string]map[uint64]packets.Packet{},
		appending: map[uint64]bool{}, acking: map[string]map[uint64]bool{}, reading: map[string]int{},
		resent: map[string]map[uint64]time.Time{}, unsend: map[string]map[string]*withheldCopy{}, claiming: map[string]int{},
		unannounced: map[*mqtt.Client]map[uint16]string{},
	}
	p.appended.L = &p.mu
	return p
}

type pubCopies struct {
	seqs map[string]uint64 // client id → store number
	// skip are the sessions the publish must not reach: their copy
	// went another way (see arrived).
	skip map[string]bool
	// full are the sessions whose full queue took no copy of the
	// publish (see makeRoom): it must not reach them either.
	full map[string]bool
	at   time.Time
	// topic is the publish's topic (a delivery's may be left out for its
	// outbound topic alias).
	topic string
	// turns are the shared groups' members chosen as the copies were
	// stored (group → client id; see share.go).
	turns map[string]string
}

// sweep forgets tags of publishes mochi never finished routing (it skips
// OnPublished when it cannot write the publisher's ack), and checks every
// connected session for queued messages it is not sending (see
// reconcile; where sessions live anywhere, catchUp first, through the
// instance's): whatever left one behind, it does not stay stuck.
func (p *persistence) sweep(olderThan time.Time, catchUp func(*mqtt.Client)) {
	p.mu.Lock()
	for id, c := range p.pubs {
		if c.at.Before(olderThan) {
			delete(p.pubs, id)
		}
	}
	// A connection mochi ended before its session started (its CONNACK
	// or resend failed) runs no disconnect hook: what it left is
	// forgotten here.
	for cl, aliases := range p.unannounced {
		if cl.Closed() {
			delete(p.unannounced, cl)
			p.unannouncedN.Add(-int64(len(aliases)))
		}
	}
	live := make([]*mqtt.Client, 0, len(p.live))
	for _, cl := range p.live {
		live = append(live, cl)
	}
	p.mu.Unlock()
	for _, cl := range live {
		if p.anywhere {
			catchUp(cl) // and reconcile
		} else {
			p.reconcile(cl)
		}
	}
}

// maxQueued is the tenant's max_queued as it is now, within what one
// session can hold (a packet id each).
func (p *persistence) maxQueued() int {
	return int(clamp(p.host.quotas().MaxQueued, 1, math.MaxUint16))
}

func persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// storeTimeout bounds a call to the session store.
const storeTimeout = 10 * time.Second

// storeCtx is the context of a call to the session store, bounding it to
// between storeTimeout less a second and storeTimeout. The calls share
// one context, made at most once a second: a publish matching a rule
// makes several store calls, and a context and a timer for each was a
// visible part of its cost. Its cancel does nothing; the shared context
// ends at its deadline. Times are compared on the monotonic clock, so a
// step of the wall clock never hands out a context already ended (which
// would fail every store call); nor is one that has ended handed out.
func storeCtx() (context.Context, context.CancelFunc) {
	now := time.Now()
	if d := storeDeadline.Load(); d != nil && now.Before(d.handOutUntil) && d.ctx.Err() == nil {
		return d.ctx, noCancel
	}
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(storeTimeout))
	storeDeadline.Store(&sharedDeadline{ctx: ctx, cancel: cancel, handOutUntil: now.Add(time.Second)})
	return ctx, noCancel
}

// storeDeadline is the context storeCtx hands out.
var storeDeadline atomic.Pointer[sharedDeadline]

type sharedDeadline struct {
	ctx context.Context
	// cancel is kept, not called: the context ends at its deadline, and
	// calls made in its last second still hold it.
	cancel       context.CancelFunc
	handOutUntil time.Time // with its monotonic reading
}

func noCancel() {}

// errNotStored refuses a publish the store could not take.
var errNotStored = errors.New("message not stored")

// beforeAck stores a publish for every persistent session it is for, and as
// retained, before mochi acknowledges it. It returns the packet to route,
// tagged so that deliveries can be matched to their store numbers.
func (p *persistence) beforeAck(cl *mqtt.Client, pk packets.Packet, ow *outboxWrite) (packets.Packet, error) {
	out, err := p.storeCopies(cl, pk, &ow)
	if err != nil || ow == nil {
		return out, err
	}
	// No copies were written: the outbox write is made alone, still
	// before the acknowledgement.
	if logged, err := ow.commitBeforeAck(cl, pk.FixedHeader.Qos); err != nil {
		if !logged {
			p.log.Error("append to outbox", "topic", pk.TopicName, "destinations", len(ow.items), "err", err)
		}
		return pk, errNotStored
	}
	return out, nil
}

// storeCopies is beforeAck's store work. The outbox write *ow, if any, is
// made in the same Append as the copies, and *ow set to nil once it is.
func (p *persistence) storeCopies(cl *mqtt.Client, pk packets.Packet, ow **outboxWrite) (packets.Packet, error) {
	if remote(pk) && p.anywhere {
		// Queued where it was published, and tagged by deliverRemote (a
		// shared group's turn for a session here: see arrivedTurns).
		return pk, nil
	}
	if !pk.FixedHeader.Retain && (pk.FixedHeader.Qos == 0 || p.storedN.Load() == 0) {
		return p.tagUnqueued(pk), nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	if pk.FixedHeader.Retain && !remote(pk) { // a remote one was stored where it arrived
		m := toStore(pk)
		m.Retain = true
		if err := p.st.SetRetained(ctx, p.tenant, m); err != nil {
			p.log.Error("store retained message", "topic", pk.TopicName, "err", err)
			return pk, errNotStored
		}
	}
	if pk.FixedHeader.Qos == 0 {
		return pk, nil
	}
	var items []store.Item
	subs := p.server.Topics.Subscribers(pk.TopicName)
	for id, sub := range subs.Subscriptions {
		target, ok := p.server.Clients.Get(id)
		if !ok || !persistent(target) || min(pk.FixedHeader.Qos, sub.Qos) == 0 || (sub.NoLocal && id == cl.ID) {
			continue
		}
		if !p.host.mayRead(target, pk.TopicName) {
			continue
		}
		m := toStore(pk)
		m.QoS = min(pk.FixedHeader.Qos, sub.Qos)
		items = append(items, store.Item{ClientID: id, Message: m})
	}
	turns, items := p.sharedTurns(subs, pk, items)
	if len(items) == 0 {
		return p.tagUnqueued(pk), nil
	}
	items, full := p.makeRoom(ctx, items)
	if len(items) == 0 {
		// Every copy was dropped: tagged all the same, so that mochi
		// neither delivers it nor keeps it (see handedOver).
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.register(pk, pubCopies{seqs: map[string]uint64{}, turns: turns, full: full}), nil
	}
	var receipt store.Receipt
	if pk.FixedHeader.Qos == 2 && !cl.Net.Inline && persistent(cl) {
		receipt = store.Receipt{ClientID: cl.ID, PacketID: pk.PacketID}
	}
	if *ow != nil {
		// After the connection's queued outbox writes: the outbox keeps
		// a device's messages in order (see durable.go).
		if dc, ok := cl.Net.Conn.(*deviceConn); ok && !cl.Net.Inline {
			if err := dc.settle(); err != nil {
				return pk, errNotStored
			}
		}
	}
	ticket, kept := p.appendStartsFor(items)
	forgetTurns(turns, items, kept)
	items = kept
	if len(items) == 0 {
		// Every copy was for a session let go of meanwhile (see kicked):
		// the fabric queues them. An outbox write is made alone.
		p.appendEnds(ticket)
		return p.tag(pk, map[string]uint64{}), nil
	}
	all := items
	if *ow != nil {
		all = append(slices.Clip(items), (*ow).items...)
	}
	seqs, err := p.st.Append(ctx, p.tenant, all, receipt)
	if err != nil {
		p.appendEnds(ticket)
		p.log.Error("queue message for persistent sessions", "topic", pk.TopicName, "sessions", len(items), "err", err)
		return pk, errNotStored
	}
	if *ow != nil {
		(*ow).written()
		*ow = nil
	}
	copies := make(map[string]uint64, len(items))
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, it := range items {
		copies[it.ClientID] = seqs[i]
		p.outstanding[it.ClientID] = insertSeq(p.outstanding[it.ClientID], seqs[i])
	}
	if receipt.ClientID != "" {
		if p.received[cl.ID] == nil {
			p.received[cl.ID] = map[uint16]bool{}
		}
		p.received[cl.ID][receipt.PacketID] = true
	}
	// Noted and tagged at once: a reconcile in between would find the
	// copies outstanding and not being routed, and send them itself.
	pk = p.register(pk, pubCopies{seqs: copies, turns: turns, full: full})
	p.appendEndsLocked(ticket)
	return pk, nil
}

// tagUnqueued tags a QoS 1 or 2 publish no copy was queued for here, where
// sessions live anywhere: a session this broker adopts while the publish is
// on its way (see adopt) may be handed it by mochi all the same, and the
// copy the fabric queues for it is noted under the tag (see queuedHere),
// so that the delivery is withheld like any other before the connection is
// established, and the copy sent in queue order. Elsewhere, and at QoS 0,
// it returns pk as it is.
func (p *persistence) tagUnqueued(pk packets.Packet) packets.Packet {
	if !p.anywhere || pk.FixedHeader.Qos == 0 {
		return pk
	}
	return p.tag(pk, map[string]uint64{})
}

// appendStarts registers an append of beforeAck before it reaches the
// store, and appendEnds (appendEndsLocked, with p.mu held) once its copies
// are noted or it failed; see catchUp.
// appendStartsFor is appendStarts for copies to queue from a publish
// here: where sessions live anywhere, it leaves out those for sessions this
// broker let go of (taken over elsewhere: see kicked), under the same lock
// as the ticket, so that a kick waiting for the appends in flight knows
// that later ones queue nothing for its session.
func (p *persistence) appendStartsFor(items []store.Item) (uint64, []store.Item) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.anywhere {
		items = slices.DeleteFunc(items, func(it store.Item) bool { return p.epochs[it.ClientID] == 0 })
	}
	p.nextAppend++
	p.appending[p.nextAppend] = true
	return p.nextAppend, items
}

func (p *persistence) appendEnds(ticket uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.appendEndsLocked(ticket)
}

func (p *persistence) appendEndsLocked(ticket uint64) {
	delete(p.appending, ticket)
	p.appended.Broadcast()
}

// insertSeq adds a store number to a session's outstanding ones, keeping
// them in order: publishes stored together may come back from the store in
// any order, and the oldest outstanding is the one a full queue drops.
func insertSeq(out []uint64, seq uint64) []uint64 {
	if n := len(out); n == 0 || out[n-1] < seq {
		return append(out, seq)
	}
	i, _ := slices.BinarySearch(out, seq)
	return slices.Insert(out, i, seq)
}

// tag registers a publish's stored copies and marks the packet with their
// id, for handedOver to find as mochi delivers it.
func (p *persistence) tag(pk packets.Packet, copies map[string]uint64) packets.Packet {
	return p.tagTurns(pk, copies, nil)
}

// tagTurns is tag for a publish whose shared groups' members were chosen
// (see share.go).
func (p *persistence) tagTurns(pk packets.Packet, copies map[string]uint64, turns map[string]string) packets.Packet {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.register(pk, pubCopies{seqs: copies, turns: turns})
}

// tagLocked is tag with p.mu held.
func (p *persistence) tagLocked(pk packets.Packet, copies map[string]uint64) packets.Packet {
	return p.register(pk, pubCopies{seqs: copies})
}

// tagSkipping is tagLocked for a publish that must not reach the sessions
// in skip. Called with p.mu held.
func (p *persistence) tagSkipping(pk packets.Packet, copies map[string]uint64, skip map[string]bool) packets.Packet {
	return p.register(pk, pubCopies{seqs: copies, skip: skip})
}

// register notes what is known of a publish's copies under a new id, and
// marks the packet with it. Called with p.mu held.
func (p *persistence) register(pk packets.Packet, c pubCopies) packets.Packet {
	p.nextPub++
	pubID := strconv.FormatUint(p.nextPub, 36)
	c.at, c.topic = time.Now(), pk.TopicName
	p.pubs[pubID] = c
	pk.Properties.User = append(slices.Clone(pk.Properties.User), packets.UserProperty{Key: seqProperty, Val: pubID})
	return pk
}

// makeRoom keeps each queue within the tenant's max_queued. Under
// drop_oldest a full queue drops its oldest message, in the store and in
// mochi's inflight state (its packet id kept while the client may hold
// it: see dropDelivery); under drop_newest the new message is not queued.
// Either way the drop is counted and raised as an event. It returns the
// items to append, and the sessions whose new message was not queued
// (full): mochi, which does not bound a persistent session's inflight
// messages (see newInstance), would still hand it to the client, and a
// connected one would be sent a message counted as dropped, and hold it
// beyond max_queued (TestConnectedDropNewestNotDelivered); handedOver
// withholds it.
func (p *persistence) makeRoom(ctx context.Context, items []store.Item) (kept []store.Item, full map[string]bool) {
	limit := p.maxQueued()
	policy := p.host.queuePolicy(ctx)
	kept = items[:0:0]
	for _, it := range items {
		p.mu.Lock()
		out := p.outstanding[it.ClientID]
		if len(out) < limit {
			p.mu.Unlock()
			kept = append(kept, it)
			continue
		}
		// Under drop_oldest, the oldest message the client has not
		// acknowledged goes: one it acknowledged with PUBREC only waits
		// for its PUBREL.
		i := slices.IndexFunc(out, func(seq uint64) bool { return !p.marks[it.ClientID][seq].released })
		if policy == tenants.DropNewest || i < 0 {
			p.dropped[it.ClientID]++
			p.mu.Unlock()
			if full == nil {
				full = map[string]bool{}
			}
			full[it.ClientID] = true
			p.host.raise(events.Event{Tenant: p.tenant, Type: events.QueueDropped, ClientID: it.ClientID,
				Device: p.deviceOf(it.ClientID), Quota: "max_queued", Limit: int64(limit), Reason: string(policy)})
			continue
		}
		kept = append(kept, it)
		oldest := out[i]
		p.outstanding[it.ClientID] = slices.Delete(slices.Clone(out), i, i+1)
		p.unqueued(it.ClientID, oldest)
		delete(p.marks[it.ClientID], oldest)
		p.dropped[it.ClientID]++
		var packetID uint16
		for id, seq := range p.inflight[it.ClientID] {
			if seq == oldest {
				packetID = id
				delete(p.inflight[it.ClientID], id)
				break
			}
		}
		if cl, ok := p.server.Clients.Get(it.ClientID); ok && packetID != 0 {
			p.dropDelivery(cl, packetID)
		}
		p.mu.Unlock()
		e := p.epoch(it.ClientID)
		err := p.st.Ack(ctx, p.tenant, it.ClientID, e, []uint64{oldest})
		p.deleted(it.ClientID, oldest)
		if err != nil {
			p.failed(it.ClientID, e, "drop the oldest queued message", err)
		}
		p.log.Info("queue full: oldest message dropped", "client_id", it.ClientID, "limit", limit)
		p.host.raise(events.Event{Tenant: p.tenant, Type: events.QueueDropped, ClientID: it.ClientID,
			Device: p.deviceOf(it.ClientID), Quota: "max_queued", Limit: int64(limit), Reason: string(policy)})
	}
	return kept, full
}

// reservedProperty marks a reservation (see reservation).
const reservedProperty = "\x00roost-reserved"

// dropDelivery takes a dropped message (a full queue's oldest, or one
// purged) out of a client's inflight messages, where it waits under
// packetID to be acknowledged. The client may hold it under that id
// already: then a reservation takes its place (see reservation), and its
// payload is let go. Called with p.mu held, and with the id mapped to no
// copy any more: the client's acknowledgement of it, which the session
// hook reads (under p.mu) before mochi processes it, then completes
// nothing queued, and mochi's processing of it ends the reservation.
func (p *persistence) dropDelivery(cl *mqtt.Client, packetID uint16) {
	if pk, ok := cl.State.Inflight.Get(packetID); !ok || pk.FixedHeader.Type != packets.Publish {
		return // acknowledged meanwhile, or it only waits for its PUBCOMP
	}
	if mayHold(cl, packetID) {
		cl.State.Inflight.Set(reservation(packetID)) // in its place: counted as it was
		noteReservation(cl, packetID)
		return
	}
	if cl.State.Inflight.Delete(packetID) {
		atomic.AddInt64(&p.server.Info.Inflight, -1)
	}
}

// expired keeps the packet id of a message mochi dropped from a client's
// inflight messages as its message expiry passed (mochi's
// ClearExpiredInflights, which drops one it wrote too) while the client
// may hold it, as dropDelivery does; it is dropped from the session's
// queue as if acknowledged. mochi has freed the id already: a delivery
// that took it in the moment between, the id is left to it. So is the id
// of a delivery withheld (see withhold), which is not written. Called as
// mochi drops it (OnQosDropped).
func (p *persistence) expired(cl *mqtt.Client, pk packets.Packet) {
	p.acknowledged(cl, pk.PacketID)
	p.mu.Lock()
	defer p.mu.Unlock()
	if pubID, ok := pubIDOf(pk); ok && p.unsend[cl.ID][pubID] != nil {
		return
	}
	if !mayHold(cl, pk.PacketID) {
		return
	}
	if _, taken := cl.State.Inflight.Get(pk.PacketID); !taken && cl.State.Inflight.Set(reservation(pk.PacketID)) {
		atomic.AddInt64(&p.server.Info.Inflight, 1)
		noteReservation(cl, pk.PacketID)
	}
}

// mayHold reports whether a client may hold a message it was handed under
// packetID, unacknowledged: the connection it was handed to is the
// client's, and may have written it; unless its Receive Maximum holds it
// back, never written (it is forgotten there then: see
// flowControl.dropHeld). A connection that ended takes what its client
// held with it: the session that resumes is not resent a dropped message,
// and its new deliveries take new ids anyway.
func mayHold(cl *mqtt.Client, packetID uint16) bool {
	if cl.Net.Conn == nil || cl.Closed() || cl.IsTakenOver() {
		return false
	}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok && dc.flow != nil && dc.flow.dropHeld(packetID) {
		return false
	}
	return true
}

// reservation keeps a packet id taken among a client's inflight messages
// after the message it carried was dropped, while the client may hold that
// message unacknowledged: mochi gives a new delivery the next id not among
// them (Client.NextPacketID), and one given the id the client holds would
// be taken for the old message, its PUBLISH discarded as a duplicate at
// QoS 2 [MQTT-2.2.1-3], the client's acknowledgement of the old one taken
// for it (deleting it from the queue unsent). It carries no message, maps
// to no copy (an acknowledgement of it completes nothing queued) and is
// not queued (max_queued does not count it). mochi processes the client's
// acknowledgement of it as of any message: a PUBACK or PUBCOMP deletes it,
// a PUBREC is answered with a PUBREL (kept until the PUBCOMP). It is a
// PUBACK, so that it is never written: flowControl.release passes over
// anything but a PUBLISH, and orderResend deletes a PUBACK from a resumed
// session's inflight messages before mochi resends them, the connection
// whose client may have held it gone. Created now, it lasts mochi's
// maximum message expiry, as a message would.
func reservation(packetID uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: packetID, Created: time.Now().Unix(),
		Properties: packets.Properties{User: []packets.UserProperty{{Key: reservedProperty}}}}
}

// noteReservation notes a reservation made for the client's connection,
// for holdsAtLeast to leave out without going through every message the
// client is held (see reservations).
func noteReservation(cl *mqtt.Client, packetID uint16) {
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		dc.reservedMu.Lock()
		if dc.reserved == nil {
			dc.reserved = map[uint16]struct{}{}
		}
		dc.reserved[packetID] = struct{}{}
		dc.reservedMu.Unlock()
	}
}

// reservations is the number of reservations among the client's inflight
// messages made while the connection was its (mayHold: none is made for
// another, and a resumed session's are deleted, see orderResend). A noted
// id whose reservation ended (acknowledged, answered with a PUBREL,
// expired) is forgotten here.
func (dc *deviceConn) reservations(cl *mqtt.Client) int {
	dc.reservedMu.Lock()
	defer dc.reservedMu.Unlock()
	for id := range dc.reserved {
		if pk, ok := cl.State.Inflight.Get(id); !ok || !isReservation(pk) {
			delete(dc.reserved, id)
		}
	}
	return len(dc.reserved)
}

// isReservation reports whether an inflight message is a reservation.
func isReservation(pk packets.Packet) bool {
	return pk.FixedHeader.Type == packets.Puback && len(pk.Properties.User) == 1 && pk.Properties.User[0].Key == reservedProperty
}

// orderResend runs as a resumed session's CONNACK is encoded, just before
// mochi resends its inflight messages. mochi sorts them by uint16(Created),
// a time in seconds, so messages queued within one second would go out in
// any order; this gives them increasing Created values in queue order.
func (p *persistence) orderResend(cl *mqtt.Client) {
	p.mu.Lock()
	// A delivery withheld (see withhold) is taken out of the inflight
	// messages before mochi's resend reads them: resent, it would be
	// written (see unsent) ahead of the older copies the session sends
	// after the CONNACK. Its write still queued, if any, is dropped by the
	// encoder, which knows it by its tag, not by its packet id.
	// A copy routed to the object taken over that mochi copied here is
	// this connection's now, under the id it came with.
	// A PUBACK is stale: mochi holds one among the inflight messages only
	// while it writes it to the connection taken over, and resent, it
	// would acknowledge the packet id the client may be giving a new
	// publish (TestBatchLonePublishAcked got one in CI). So is a
	// reservation: the connection whose client may have held the dropped
	// message under its id is gone.
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Puback {
			if cl.State.Inflight.Delete(pk.PacketID) {
				atomic.AddInt64(&p.server.Info.Inflight, -1)
			}
			continue
		}
		pubID, ok := pubIDOf(pk)
		if !ok {
			continue
		}
		if w, withheld := p.unsend[cl.ID][pubID]; withheld && w.id == pk.PacketID && !w.out {
			w.out = true
			if cl.State.Inflight.Delete(pk.PacketID) {
				atomic.AddInt64(&p.server.Info.Inflight, -1)
			}
			continue
		}
		if seq, lost := p.lost[cl.ID][pubID]; lost {
			if _, mapped := p.inflight[cl.ID][pk.PacketID]; !mapped {
				if p.inflight[cl.ID] == nil {
					p.inflight[cl.ID] = map[uint16]uint64{}
				}
				p.inflight[cl.ID][pk.PacketID] = seq
			}
		}
	}
	delete(p.lost, cl.ID)
	bySeq := p.inflight[cl.ID]
	type entry struct {
		seq uint64
		pk  packets.Packet
	}
	var entries []entry
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if seq, ok := bySeq[pk.PacketID]; ok && pk.FixedHeader.Type == packets.Publish {
			entries = append(entries, entry{seq, pk})
		}
	}
	p.mu.Unlock()
	slices.SortFunc(entries, func(a, b entry) int { return cmp.Compare(a.seq, b.seq) })
	base := time.Now().Unix() &^ 0xffff
	for i, e := range entries {
		e.pk.Created = base + int64(i)
		cl.State.Inflight.Set(e.pk)
	}
}

// queued is the number of messages waiting in the tenant's sessions'
// queues.
func (p *persistence) queued() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for _, out := range p.outstanding {
		n += int64(len(out))
	}
	return n
}

// queueStats sums a device's sessions' queues.
func (p *persistence) queueStats(device string) dataplane.QueueStats {
	p.mu.Lock()
	var cids []string
	var qs dataplane.QueueStats
	for cid, d := range p.devices {
		if d == device {
			cids = append(cids, cid)
			qs.Queued += len(p.outstanding[cid])
			qs.Dropped += p.dropped[cid]
		}
	}
	p.mu.Unlock()
	ctx, cancel := storeCtx()
	defer cancel()
	for _, cid := range cids {
		info, err := p.st.QueueInfo(ctx, p.tenant, cid)
		if err != nil || info.Len == 0 {
			continue
		}
		if qs.Oldest == nil || info.Oldest.Before(*qs.Oldest) {
			o := info.Oldest
			qs.Oldest = &o
		}
	}
	return qs
}

func pubIDOf(pk packets.Packet) (string, bool) {
	for _, u := range pk.Properties.User {
		if u.Key == seqProperty {
			return u.Val, true
		}
	}
	return "", false
}

// handedOver runs as mochi hands a QoS 1 or 2 message to a client, first
// or again, before it is written. It notes which packet id carries which
// stored message, and marks a QoS 2 message in the store with its packet
// id: the client may hold it by that id from the moment it is written.
// A mark that cannot be written disconnects the client, before the
// message is written, so that it is sent again later.
func (p *persistence) handedOver(cl *mqtt.Client, out packets.Packet) {
	p.mu.Lock()
	seq, ok := p.inflight[cl.ID][out.PacketID]
	if pubID, tagged := pubIDOf(out); tagged {
		// A connected session's delivery that its full queue did not take
		// is withheld: counted as dropped, it must not be sent. An offline
		// one's is dropped below.
		if c := p.pubs[pubID]; c.skip[cl.ID] || (c.full[cl.ID] && cl.Net.Conn != nil && !cl.Closed()) {
			p.withhold(cl, pubID, out.PacketID, 0)
			p.mu.Unlock()
			return
		}
		seq, ok = p.pubs[pubID].seqs[cl.ID]
		// Only a first delivery is held back: a resend (DUP) is of a
		// message the connection has, from mochi's resend at the
		// CONNACK, which must write it.
		switch first := !out.FixedHeader.Dup; {
		case ok && first && p.holds(cl):
			p.withhold(cl, pubID, out.PacketID, seq)
			p.holdBack(cl.ID, seq, out)
			p.mu.Unlock()
			return
		case !ok && first && p.anywhere && persistent(cl) && cl.Net.Conn != nil && !cl.Closed() &&
			!cl.IsTakenOver() && p.live[cl.ID] != cl && queuedTurn(cl, p.pubs[pubID].topic):
			// A publish that noted no copy for a session adopted while it
			// was on its way (after the store hook looked for subscribers,
			// and after the fabric queued the session's copy: see
			// queuedHere), reaching its connection before it is
			// established: the copy is in the queue, which the attach's
			// catch-up sends in order. Written now, it would overtake
			// older copies there (TestSpreadFleetKill, once: a publish
			// just before the CONNACK reached the client ahead of the 82
			// queued while it was away).
			p.withhold(cl, pubID, out.PacketID, 0)
			p.mu.Unlock()
			return
		case ok && first && p.anywhere && cl.Net.Conn == nil && !cl.IsTakenOver():
			// A session adopted for a connection that has not taken it
			// over yet (see adopt): kept here, the copy would be resent
			// at the CONNACK, before older ones other nodes queued that
			// the attach's catch-up finds. It stays in the queue, and is
			// sent from there once the connection caught up.
			p.holdBack(cl.ID, seq, out)
			p.mu.Unlock()
			if cl.State.Inflight.Delete(out.PacketID) {
				atomic.AddInt64(&p.server.Info.Inflight, -1)
			}
			return
		}
		if ok {
			if p.inflight[cl.ID] == nil {
				p.inflight[cl.ID] = map[uint16]uint64{}
			}
			if !cl.IsTakenOver() {
				p.inflight[cl.ID][out.PacketID] = seq
			} else {
				// Routed to the client object a new connection is taking
				// over: whether mochi copied it to the new one depends on
				// timing, and the packet id is the old object's, which
				// the new one may give another message. Noted by its tag:
				// a copy the new connection inherited is mapped to it as
				// the CONNACK goes out (see orderResend); else, once
				// routed, the session sends it (see reconcile), holding
				// newer ones back meanwhile.
				if p.lost[cl.ID] == nil {
					p.lost[cl.ID] = map[string]uint64{}
				}
				p.lost[cl.ID][pubID] = seq
				p.recheck[cl.ID] = true
				p.holding[cl.ID] = true
			}
		} else if persistent(cl) && (cl.Net.Conn == nil || cl.Closed()) &&
			(queuedTurn(cl, p.pubs[pubID].topic) || p.pubs[pubID].chosen(cl.ID)) {
			// Not stored for this offline session (its queue was full):
			// mochi must not keep it either. So for a shared group's turn
			// chosen for it to be stored (see share.go).
			p.mu.Unlock()
			if cl.State.Inflight.Delete(out.PacketID) {
				atomic.AddInt64(&p.server.Info.Inflight, -1)
			}
			return
		}
	}
	want := mark{packetID: out.PacketID}
	if !ok || out.FixedHeader.Qos != 2 || p.marks[cl.ID][seq] == want {
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if !p.mark(cl, seq, want) {
		cl.Stop(packets.ErrUnspecifiedError)
	}
}

// queuedTurn reports whether a delivery of a publish on topic to a
// persistent session is one its queue is for: the session subscribes to
// the topic other than in a shared group. A shared group's turn is stored
// only when the store hook chose the session for it (pubCopies.chosen);
// one it did not (a message from another node, where sessions live
// anywhere) is queued nowhere, mochi's inflight messages its only copy,
// and must be delivered.
func queuedTurn(cl *mqtt.Client, topic string) bool {
	for filter := range cl.State.Subscriptions.GetAll() {
		if tenants.SharedFilter(filter) == filter && tenants.MatchTopic(filter, topic) {
			return true
		}
	}
	return false
}

// holds reports whether a delivery of a stored copy to a client object is
// to be withheld (see withhold) and sent from the queue by reconcile
// instead, so that it cannot overtake an older copy of the session's. That
// is so for a connected client object
//   - before its connection is established: mochi resends what the
//     session held between the CONNACK and established, and a delivery
//     written meanwhile would go out before that resend;
//   - while the session holds its deliveries (holding): a copy went to the
//     client object this connection took over, where it is lost (mochi
//     copied that object's messages already), or was withheld before; a
//     newer one written now would overtake it. reconcile sends them, in
//     queue order, once no older copy is still being routed, and ends the
//     hold once it sent everything withheld.
//
// A client object with no connection (a session waiting for its client,
// or one being taken over) keeps what mochi hands it: the connection that
// takes it over inherits it, in order. Called with p.mu held.
func (p *persistence) holds(cl *mqtt.Client) bool {
	if cl.IsTakenOver() || cl.Net.Conn == nil || cl.Closed() || !persistent(cl) {
		return false
	}
	return p.live[cl.ID] != cl || p.holding[cl.ID]
}

// holdBack notes a delivery of copy seq to a client held back: the
// session holds its deliveries until a reconcile sent it. Called with p.mu
// held.
func (p *persistence) holdBack(clientID string, seq uint64, pk packets.Packet) {
	p.holding[clientID] = true
	p.held[clientID]++
	p.recheck[clientID] = true
	if pk.Properties.TopicAliasFlag {
		// mochi gave it an outbound topic alias (and may have left out the
		// topic): sent from the store, with its topic, instead.
		return
	}
	if p.heldPk[clientID] == nil {
		p.heldPk[clientID] = map[uint64]packets.Packet{}
	}
	p.heldPk[clientID][seq] = withoutTag(pk)
}

// mark writes a QoS 2 message's mark; false if the store failed.
func (p *persistence) mark(cl *mqtt.Client, seq uint64, m mark) bool {
	ctx, cancel := storeCtx()
	defer cancel()
	e := p.epoch(cl.ID)
	if err := p.st.Mark(ctx, p.tenant, cl.ID, e, seq, m.packetID, m.released); err != nil {
		p.failed(cl.ID, e, "mark a QoS 2 message", err)
		return false
	}
	p.mu.Lock()
	if p.marks[cl.ID] == nil {
		p.marks[cl.ID] = map[uint64]mark{}
	}
	p.marks[cl.ID][seq] = m
	p.mu.Unlock()
	return true
}

// received is a client's PUBREC for a message it was sent. For a stored
// QoS 2 message the store notes that only the PUBREL is left; it returns
// false if it could not, and the PUBREC must not be answered.
func (p *persistence) receivedBy(cl *mqtt.Client, pk packets.Packet) bool {
	if pk.ReasonCode >= 0x80 {
		// The client refused the message: mochi drops it.
		p.acknowledged(cl, pk.PacketID)
		return true
	}
	p.mu.Lock()
	seq, ok := p.inflight[cl.ID][pk.PacketID]
	p.mu.Unlock()
	if !ok {
		return true
	}
	return p.mark(cl, seq, mark{packetID: pk.PacketID, released: true})
}

// duplicate reports a QoS 2 PUBLISH that was stored before a restart and
// not yet released: it is acknowledged again, not delivered again.
func (p *persistence) duplicate(cl *mqtt.Client, pk packets.Packet) bool {
	if pk.FixedHeader.Qos != 2 || cl.Net.Inline {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.received[cl.ID][pk.PacketID]
}

// release forgets a publisher's receipt when its PUBREL arrives, before the
// PUBCOMP is sent: from then on the packet id is free for a new message.
// After a restart mochi no longer holds the PUBREC, so it is put back for
// mochi to complete the exchange with a successful PUBCOMP.
func (p *persistence) release(cl *mqtt.Client, packetID uint16) error {
	p.mu.Lock()
	held := p.received[cl.ID][packetID]
	p.mu.Unlock()
	if !held {
		return nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	e := p.epoch(cl.ID)
	if err := p.st.Release(ctx, p.tenant, cl.ID, e, packetID); err != nil {
		p.failed(cl.ID, e, "release a QoS 2 receipt", err)
		return err
	}
	p.mu.Lock()
	delete(p.received[cl.ID], packetID)
	p.mu.Unlock()
	if _, ok := cl.State.Inflight.Get(packetID); !ok {
		if cl.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: packetID}) {
			atomic.AddInt64(&p.server.Info.Inflight, 1)
		}
	}
	return nil
}

// routed forgets a publish's tag once mochi has routed it, and checks the
// established sessions it may have been lost for (see handedOver).
func (p *persistence) routed(pk packets.Packet) {
	pubID, ok := pubIDOf(pk)
	if !ok {
		return
	}
	p.mu.Lock()
	delete(p.pubs, pubID)
	var check []*mqtt.Client
	for id := range p.recheck {
		if cl := p.live[id]; cl != nil {
			check = append(check, cl)
			delete(p.recheck, id)
		}
	}
	p.mu.Unlock()
	for _, cl := range check {
		p.reconcile(cl)
	}
}

// established notes a persistent session's connection ready (its CONNACK
// and resends written) and checks that it has every message its queue
// holds; it sends what was withheld from the connection until now (see
// holds). A session the fabric attaches here (attaching: it lives on any
// node) holds its deliveries until the attach's catch-up read what other
// nodes queued for it meanwhile and sent it, in order with them (see
// routeHook.OnSessionEstablished); its reconcile is the catch-up's.
//
// A recheck noted for the session stays: a delivery withheld before (see
// handedOver) may belong to a publish still being routed, which this
// reconcile leaves to routed.
func (p *persistence) established(cl *mqtt.Client, attaching bool) {
	p.mu.Lock()
	p.live[cl.ID] = cl
	if attaching {
		p.holding[cl.ID] = true
	}
	p.releaseDropped(cl)
	p.mu.Unlock()
	if !attaching {
		p.reconcile(cl)
	}
}

// gone forgets a connection that ended. What is withheld from the client
// id, and its hold, are this connection's only while no newer connection
// took its session over: mochi ends the old connection as the new one
// takes over, and the two may run this and their deliveries in any order.
func (p *persistence) gone(cl *mqtt.Client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live[cl.ID] == cl {
		delete(p.live, cl.ID)
	}
	if n := len(p.unannounced[cl]); n > 0 {
		delete(p.unannounced, cl)
		p.unannouncedN.Add(-int64(n))
	}
	if cur, ok := p.server.Clients.Get(cl.ID); ok && cur != cl {
		return
	}
	p.forgetWithheld(cl, cl.ID)
	if !cl.IsTakenOver() {
		p.unhold(cl.ID)
	}
}

// unhold ends a client's hold. Called with p.mu held.
func (p *persistence) unhold(clientID string) {
	delete(p.lost, clientID)
	delete(p.holding, clientID)
	delete(p.held, clientID)
	delete(p.heldPk, clientID)
}

// reconcile makes sure a connected persistent session is sending every
// message its queue holds. mochi hands a session's waiting messages to a
// new connection by copying them from the client object it takes over; a
// message routed to the old object after the copy was made stays there and
// is never sent, though it is stored (mochi v2.7.9's inheritClientSession).
// Left alone it would never be acknowledged: it would stay in the store, to
// come back at the next restart, and fill the queue toward max_queued.
//
// So every queued message not waiting in the client's inflight messages
// and not still being routed (its tag in pubs) is read from the store and
// sent again with a new packet id. It runs when a session's connection is
// ready, when a message was routed to a taken-over object, and from the
// hub's sweep, which also catches a message mochi dropped from a full
// write queue.
//
// While the session holds its deliveries (see holds), only the copies
// older than the oldest one still being routed are sent, so that they
// reach the client in queue order; the hold ends with a pass that sent
// everything and saw nothing more withheld meanwhile. One client's
// reconciles run one at a time: two at once could each send a part.
func (p *persistence) reconcile(cl *mqtt.Client) {
	mu := &p.reconciling[maphash.String(reconcileSeed, cl.ID)%uint64(len(p.reconciling))]
	mu.Lock()
	defer mu.Unlock()
	for range reconcilePasses {
		if !p.reconcileOnce(cl) {
			return
		}
	}
}

// reconcilePasses bounds one reconcile's passes; the publish whose
// delivery was held back meanwhile reconciles again once routed.
const reconcilePasses = 8

// routingGrace is how long a publish counts as being routed: mochi does not
// route one whose acknowledgement it cannot write, or that a later hook
// refused, and its copy must not hold a session's deliveries back until
// the sweep forgets its tag (see sweep).
const routingGrace = 5 * time.Second

// reconcileSeed spreads clients over persistence.reconciling.
var reconcileSeed = maphash.MakeSeed()

// reconcileOnce is a pass of reconcile. It reports whether to pass again:
// the session holds its deliveries, and more were withheld as it sent.
func (p *persistence) reconcileOnce(cl *mqtt.Client) bool {
	if cl.Closed() {
		return false
	}
	p.mu.Lock()
	holding, heldBefore := p.holding[cl.ID], p.held[cl.ID]
	routing := map[uint64]bool{}
	now := time.Now()
	for _, c := range p.pubs {
		if seq, ok := c.seqs[cl.ID]; ok && now.Sub(c.at) < routingGrace {
			routing[seq] = true
		}
	}
	sending := map[uint64]bool{}
	for id, seq := range p.inflight[cl.ID] {
		if _, ok := cl.State.Inflight.Get(id); ok {
			sending[seq] = true
		} else {
			delete(p.inflight[cl.ID], id) // the id went with an object taken over
		}
	}
	var missing []uint64
	blocked := false // an outstanding copy is still being routed
	for _, seq := range p.outstanding[cl.ID] {
		switch {
		case sending[seq]:
		case routing[seq]:
			// Still being routed, maybe to the client object this
			// connection took over: once it is, look again (routed).
			// established clears the session's recheck, so the one its
			// handing over set may be gone.
			p.recheck[cl.ID] = true
			blocked = true
		case blocked && holding:
			// Newer than a copy still being routed: sent after it.
		default:
			missing = append(missing, seq)
		}
	}
	if len(missing) == 0 {
		if holding && !blocked && p.live[cl.ID] == cl {
			p.unhold(cl.ID)
		}
		p.mu.Unlock()
		return false
	}
	// What was held back is here; the rest is read from the store.
	type copyToSend struct {
		seq uint64
		pk  packets.Packet
	}
	var sends []copyToSend
	var unread []uint64
	for _, seq := range missing {
		if pk, ok := p.heldPk[cl.ID][seq]; ok {
			sends = append(sends, copyToSend{seq, pk})
		} else {
			unread = append(unread, seq)
		}
	}
	p.mu.Unlock()
	if len(unread) > 0 {
		ctx, cancel := storeCtx()
		queued, err := p.st.Read(ctx, p.tenant, cl.ID, slices.Min(unread)-1, p.maxQueued())
		cancel()
		if err != nil {
			p.log.Error("read queued messages to resend", "client_id", cl.ID, "err", err)
			return false
		}
		want := map[uint64]bool{}
		for _, seq := range unread {
			want[seq] = true
		}
		for _, q := range queued {
			if want[q.Seq] {
				sm := fromStore(q.Message, cl.ID, 0, 0)
				sends = append(sends, copyToSend{q.Seq, sm.ToPacket()})
			}
		}
		slices.SortFunc(sends, func(a, b copyToSend) int { return cmp.Compare(a.seq, b.seq) })
	}
	resent, dropped, complete := 0, 0, true
	for _, c := range sends {
		// Checked now, as a delivery would be: the topic was readable
		// when the copy was queued, but the rules may have changed since
		// (as dropUnreadable does for the copies mochi resends).
		if !p.host.mayRead(cl, c.pk.TopicName) {
			p.unqueue(cl.ID, c.seq)
			dropped++
			continue
		}
		id, err := cl.NextPacketID()
		if err != nil {
			complete = false
			break // no packet id free: the next reconcile tries again
		}
		// A new packet id: not a DUP of one the client has seen.
		pk := c.pk
		pk.PacketID, pk.FixedHeader.Dup, pk.Created = uint16(id), false, time.Now().Unix()
		p.mu.Lock()
		delete(p.heldPk[cl.ID], c.seq)
		if !slices.Contains(p.outstanding[cl.ID], c.seq) { // acknowledged or dropped meanwhile
			p.mu.Unlock()
			continue
		}
		if p.inflight[cl.ID] == nil {
			p.inflight[cl.ID] = map[uint16]uint64{}
		}
		p.inflight[cl.ID][pk.PacketID] = c.seq
		if p.anywhere {
			p.noteResent(cl.ID, c.seq)
		}
		p.mu.Unlock()
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&p.server.Info.Inflight, 1)
		}
		p.handedOver(cl, pk)
		if err := cl.WritePacket(pk); err != nil {
			complete = false
			break // gone: the rest is sent when the session resumes
		}
		resent++
	}
	if holding {
		p.log.Debug("queued messages held back from the connection sent in order", "client_id", cl.ID, "sent", resent, "dropped_unreadable", dropped)
	} else {
		p.log.Info("queued messages the connection lacked sent again", "client_id", cl.ID, "missing", len(missing), "resent", resent, "dropped_unreadable", dropped)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !holding || blocked || !complete || p.live[cl.ID] != cl {
		return false
	}
	if p.held[cl.ID] != heldBefore {
		return true
	}
	p.unhold(cl.ID)
	return false
}

// acknowledged removes a message from its session's queue once the client
// has it: PUBACK for QoS 1, PUBCOMP for QoS 2.
func (p *persistence) acknowledged(cl *mqtt.Client, packetID uint16) {
	p.mu.Lock()
	seq, ok := p.inflight[cl.ID][packetID]
	if !ok {
		p.mu.Unlock()
		return
	}
	delete(p.inflight[cl.ID], packetID)
	e, ok := p.unqueueLocked(cl.ID, seq)
	p.mu.Unlock()
	if ok {
		p.deleteQueued(cl.ID, seq, e)
	}
}

// unqueue takes a copy out of its session's queue, here and in the store,
// unsent (see reconcile).
func (p *persistence) unqueue(clientID string, seq uint64) {
	p.mu.Lock()
	e, ok := p.unqueueLocked(clientID, seq)
	p.mu.Unlock()
	if ok {
		p.deleteQueued(clientID, seq, e)
	}
}

// unqueueLocked takes a copy out of its session's outstanding ones and
// returns the session's epoch, for deleteQueued; false if it was not
// outstanding (acknowledged or dropped already). Called with p.mu held.
func (p *persistence) unqueueLocked(clientID string, seq uint64) (uint64, bool) {
	delete(p.marks[clientID], seq)
	delete(p.heldPk[clientID], seq)
	out := p.outstanding[clientID]
	i := slices.Index(out, seq)
	if i < 0 {
		return 0, false
	}
	p.outstanding[clientID] = slices.Delete(out, i, i+1)
	p.unqueued(clientID, seq)
	return p.epochs[clientID], true
}

// deleteQueued deletes a copy unqueueLocked took out from the store.
func (p *persistence) deleteQueued(clientID string, seq, e uint64) {
	ctx, cancel := storeCtx()
	defer cancel()
	err := p.st.Ack(ctx, p.tenant, clientID, e, []uint64{seq})
	if now := p.epoch(clientID); errors.Is(err, store.ErrFenced) && now != 0 && now != e {
		// Acknowledged on the connection a reconnection here has just
		// replaced: the session is still this broker's, under its new
		// claim.
		err = p.st.Ack(ctx, p.tenant, clientID, now, []uint64{seq})
		e = now
	}
	p.deleted(clientID, seq)
	if err != nil {
		p.failed(clientID, e, "delete a delivered message", err)
	}
}

// epoch is the session's epoch as this broker knows it.
func (p *persistence) epoch(clientID string) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.epochs[clientID]
}

// claim makes this broker the session's owner, before its connection is
// accepted: from then on a broker that held it before writes nothing for
// it (see SessionStore).
func (p *persistence) claim(ctx context.Context, clientID string) error {
	// While the claim is in flight, a write under the epoch it replaces
	// is refused for it (see failed).
	p.mu.Lock()
	p.claiming[clientID]++
	p.mu.Unlock()
	e, err := p.st.Claim(ctx, p.tenant, clientID)
	p.mu.Lock()
	if p.claiming[clientID]--; p.claiming[clientID] == 0 {
		delete(p.claiming, clientID)
	}
	if err == nil {
		// Two connects with one client id may store their claims in
		// either order: the later claim is the higher epoch.
		p.epochs[clientID] = max(p.epochs[clientID], e)
	}
	p.mu.Unlock()
	if err != nil {
		return err
	}
	p.claims.Add(1)
	return nil
}

// keepEpoch sets a session's epoch again after its old state was dropped.
func (p *persistence) keepEpoch(clientID string, epoch uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.epochs[clientID] = epoch
}

// needsClaim reports whether a connection with this client id must claim
// its session: it will keep one, or there is one stored to discard.
func (p *persistence) needsClaim(clientID string, keeps bool) bool {
	if keeps {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stored[clientID]
}

// failed logs a store write for a session that failed. Refused as fenced,
// the session has a new owner: this broker lets go of it and ends its
// connection here, if any, with 0x8E (session taken over); what is queued
// stays in the store for the new owner, and messages published here are
// still queued for it. A write made under an epoch this
// broker has since replaced by a claim of its own (a reconnection here)
// was only late: the session is still this broker's.
func (p *persistence) failed(clientID string, epoch uint64, what string, err error) {
	if !errors.Is(err, store.ErrFenced) {
		p.log.Error(what, "client_id", clientID, "err", err)
		return
	}
	p.host.fenced()
	p.mu.Lock()
	if p.epochs[clientID] != epoch || p.claiming[clientID] > 0 {
		p.mu.Unlock()
		p.log.Debug(what+": refused for a claim this broker made since", "client_id", clientID)
		return
	}
	p.letGo(clientID)
	p.mu.Unlock()
	p.log.Warn(what+": the session has a new owner; let go of it here", "client_id", clientID)
	if cl, ok := p.server.Clients.Get(clientID); ok && cl.Net.Conn != nil && !cl.Closed() {
		endConn(p.server, cl, packets.ErrSessionTakenOver)
	}
}

func (p *persistence) sessionRecord(cl *mqtt.Client, disconnected time.Time) store.Session {
	s := store.Session{ClientID: cl.ID, ProtocolVersion: cl.Properties.ProtocolVersion, DisconnectedAt: disconnected}
	if dc, ok := cl.Net.Conn.(*deviceConn); ok {
		s.Device = dc.id.device
	} else {
		s.Device = p.deviceOf(cl.ID)
	}
	if cl.Properties.ProtocolVersion == 5 {
		s.Expiry = cl.Properties.Props.SessionExpiryInterval
	} else {
		s.Expiry = uint32(clamp(p.host.quotas().MaxSessionExpiry, 0, math.MaxUint32))
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		s.Subscriptions = append(s.Subscriptions, store.Subscription{
			Filter: sub.Filter, QoS: sub.Qos, NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished,
			RetainHandling: sub.RetainHandling, Identifier: sub.Identifier,
		})
	}
	slices.SortFunc(s.Subscriptions, func(a, b store.Subscription) int {
		return strings.Compare(a.Filter, b.Filter)
	})
	s.Will = p.host.heldWill(cl.ID)
	return s
}

func (p *persistence) deviceOf(clientID string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.devices[clientID]
}

// save writes a persistent client's session record; a clean one's is
// deleted with its queue.
func (p *persistence) save(cl *mqtt.Client, disconnected time.Time) {
	ctx, cancel := storeCtx()
	defer cancel()
	var err error
	epoch := p.epoch(cl.ID)
	if epoch == 0 && persistent(cl) {
		// Every connection that keeps a session claimed it: this broker
		// has let go of it since (see failed).
		return
	}
	if persistent(cl) {
		rec := p.sessionRecord(cl, disconnected)
		rec.Epoch = epoch
		if err = p.st.SaveSession(ctx, p.tenant, rec); err == nil {
			p.mu.Lock()
			p.stored[cl.ID] = true
			p.storedN.Store(int64(len(p.stored)))
			p.devices[cl.ID] = rec.Device
			p.mu.Unlock()
		}
	} else {
		err = p.drop(cl.ID)
	}
	if err != nil {
		p.failed(cl.ID, epoch, "save session", err)
	}
}

// drop forgets a session: its record, its queue and what is tracked for it.
// A client id with nothing stored costs no store write, nor a timer for
// one (every clean connect drops its session twice).
func (p *persistence) drop(clientID string) error {
	epoch := p.epoch(clientID)
	if !p.forget(clientID) {
		return nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	return p.st.DeleteSession(ctx, p.tenant, clientID, epoch)
}

// letGo forgets what this broker tracks as a session's owner: its
// connection, what it sends and its epoch. Called with p.mu held.
func (p *persistence) letGo(clientID string) {
	delete(p.live, clientID)
	delete(p.recheck, clientID)
	delete(p.inflight, clientID)
	delete(p.outstanding, clientID)
	delete(p.epochs, clientID)
	delete(p.marks, clientID)
	delete(p.received, clientID)
	delete(p.acking, clientID)
	delete(p.resent, clientID)
	cl, _ := p.server.Clients.Get(clientID)
	p.forgetWithheld(cl, clientID)
	p.unhold(clientID)
}

// forget forgets everything tracked for a session here, and reports
// whether it had a record in the store.
func (p *persistence) forget(clientID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.letGo(clientID)
	delete(p.devices, clientID)
	delete(p.dropped, clientID)
	stored := p.stored[clientID]
	delete(p.stored, clientID)
	p.storedN.Store(int64(len(p.stored)))
	return stored
}

// restore returns what mochi needs to bring back the tenant's sessions,
// their unacknowledged messages and the retained messages.
func (p *persistence) restore() ([]storage.Client, []storage.Subscription, []storage.Message, []storage.Message, error) {
	ctx, cancel := storeCtx()
	defer cancel()
	var sessions []store.Session
	var err error
	if !p.retainedOnly {
		if sessions, err = p.st.Sessions(ctx, p.tenant); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	maxQueued := p.maxQueued()
	var clients []storage.Client
	var subs []storage.Subscription
	var inflight []storage.Message
	// Numbers for Created such that mochi, which resends a session's
	// inflight messages sorted by uint16(Created), resends them in queue
	// order.
	now := time.Now()
	base := now.Unix() &^ 0xffff
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range sessions {
		if s.Will != nil {
			p.wills = append(p.wills, restoredWill{device: s.Device, clientID: s.ClientID, will: s.Will, left: s.DisconnectedAt})
		}
		c, ss, in, ok, err := p.restoreSession(ctx, s, now, base, maxQueued)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		if ok {
			clients = append(clients, c)
			subs = append(subs, ss...)
			inflight = append(inflight, in...)
		}
	}
	retained, err := p.st.Retained(ctx, p.tenant)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var kept []storage.Message
	for _, m := range retained {
		sm := fromStore(m, "", 0, m.Created.Unix())
		sm.FixedHeader.Retain = true
		sm.T = storage.RetainedKey
		kept = append(kept, sm)
	}
	return clients, subs, inflight, kept, nil
}

// restoreSession brings back one stored session for mochi: its client,
// subscriptions and waiting messages; ok is false if it expired (and was
// deleted). Called with p.mu held.
func (p *persistence) restoreSession(ctx context.Context, s store.Session, now time.Time, base int64, maxQueued int) (c storage.Client, subs []storage.Subscription, inflight []storage.Message, ok bool, err error) {
	// A session whose client stayed away past its expiry is gone,
	// with its queue.
	if !s.DisconnectedAt.IsZero() && now.After(s.DisconnectedAt.Add(time.Duration(s.Expiry)*time.Second)) {
		switch err := p.st.DeleteSession(ctx, p.tenant, s.ClientID, s.Epoch); {
		case errors.Is(err, store.ErrFenced):
			// Claimed meanwhile: the session lives elsewhere.
		case err != nil:
			return c, nil, nil, false, err
		}
		return c, nil, nil, false, nil
	}
	p.epochs[s.ClientID] = s.Epoch
	c = storage.Client{ID: s.ClientID, T: storage.ClientKey, Listener: listenerID, ProtocolVersion: s.ProtocolVersion,
		Username: []byte(tenants.Username(p.tenant, s.Device))}
	if s.ProtocolVersion == 5 {
		c.Properties.SessionExpiryInterval, c.Properties.SessionExpiryIntervalFlag = s.Expiry, true
	}
	p.devices[s.ClientID] = s.Device
	p.stored[s.ClientID] = true
	p.storedN.Store(int64(len(p.stored)))
	for _, sub := range s.Subscriptions {
		subs = append(subs, storage.Subscription{T: storage.SubscriptionKey, Client: s.ClientID, Filter: sub.Filter, Qos: sub.QoS,
			NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling, Identifier: sub.Identifier})
	}
	queued, err := p.st.Read(ctx, p.tenant, s.ClientID, 0, maxQueued)
	if err != nil {
		return c, nil, nil, false, err
	}
	// Messages past their expiry are not delivered, unless they were
	// sent already: the client may hold them by their packet id.
	live := queued[:0:0]
	var expired []uint64
	for _, q := range queued {
		if q.PacketID != 0 || q.Expires.IsZero() || now.Before(q.Expires) {
			live = append(live, q)
		} else {
			expired = append(expired, q.Seq)
		}
	}
	if len(expired) > 0 {
		if err := p.st.Ack(ctx, p.tenant, s.ClientID, s.Epoch, expired); err != nil && !errors.Is(err, store.ErrFenced) {
			return c, nil, nil, false, err
		}
	}
	queued = live
	if len(s.PendingRelease) > 0 {
		p.received[s.ClientID] = map[uint16]bool{}
		for _, id := range s.PendingRelease {
			p.received[s.ClientID][id] = true
		}
	}
	ids := map[uint16]uint64{}
	marks := map[uint64]mark{}
	for _, q := range queued {
		if q.PacketID != 0 {
			ids[q.PacketID] = q.Seq
			marks[q.Seq] = mark{packetID: q.PacketID, released: q.Released}
		}
	}
	// Messages never sent get packet ids from the top of the range:
	// mochi refuses a client's SUBSCRIBE whose id equals an outbound
	// inflight id, and clients number their packets from 1.
	free := uint16(0xffff)
	for i, q := range queued {
		p.outstanding[s.ClientID] = append(p.outstanding[s.ClientID], q.Seq)
		id := q.PacketID
		if id == 0 {
			for ids[free] != 0 {
				free--
			}
			id = free
			ids[id] = q.Seq
		}
		m := fromStore(q.Message, s.ClientID, id, base+int64(i))
		if q.Released {
			// Only the PUBREL is left to send.
			m = storage.Message{T: storage.InflightKey, Client: s.ClientID, PacketID: id, Created: base + int64(i),
				FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}}
		}
		inflight = append(inflight, m)
	}
	p.marks[s.ClientID] = marks
	p.inflight[s.ClientID] = ids
	return c, subs, inflight, true, nil
}

func toStore(pk packets.Packet) store.Message {
	m := store.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Created: time.Unix(pk.Created, 0).UTC()}
	if pk.Expiry > 0 {
		m.Expires = time.Unix(pk.Expiry, 0).UTC()
	}
	m.Properties = encodeProps(pk.Properties)
	return m
}

func fromStore(m store.Message, clientID string, packetID uint16, created int64) storage.Message {
	sm := storage.Message{
		T: storage.InflightKey, Client: clientID, PacketID: packetID, TopicName: m.Topic, Payload: m.Payload, Created: created,
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS},
	}
	decodeProps(m.Properties, &sm.Properties)
	return sm
}

// encodeProps keeps the publish properties a subscriber should get, without
// the internal tag.
func encodeProps(p packets.Properties) []byte {
	mp := storage.MessageProperties{
		CorrelationData: p.CorrelationData, ContentType: p.ContentType, ResponseTopic: p.ResponseTopic,
		PayloadFormat: p.PayloadFormat, PayloadFormatFlag: p.PayloadFormatFlag, MessageExpiryInterval: p.MessageExpiryInterval,
	}
	for _, u := range p.User {
		if !internalProperty(u.Key) {
			mp.User = append(mp.User, u)
		}
	}
	if mp.CorrelationData == nil && mp.ContentType == "" && mp.ResponseTopic == "" && !mp.PayloadFormatFlag &&
		mp.MessageExpiryInterval == 0 && len(mp.User) == 0 {
		return nil
	}
	b, _ := json.Marshal(mp)
	return b
}

func decodeProps(b []byte, mp *storage.MessageProperties) {
	if len(b) > 0 {
		json.Unmarshal(b, mp)
	}
}

// internalProperty reports whether a user property is one of the hub's
// own tags (seqProperty, remoteProperty): MQTT strings cannot hold U+0000,
// so no client's property can be taken for one.
func internalProperty(key string) bool { return strings.HasPrefix(key, "\x00roost-") }

// untagRetained puts the message retained on pk's topic back without the
// hub's internal tags, as mochi has just retained pk. mochi retains a
// publish as the OnPublish hooks return it, tagged (see tag; a message
// from another node also carries remoteProperty), and sends that copy to
// every later subscriber of the topic, to which its publish tag would
// make it one of the publish's own deliveries while the tag is still
// kept (see handedOver): mapped to a stored copy, withheld or skipped.
// It strips what the retained messages hold for the topic, not pk: a
// publish retained since pk stays, whether its own strip came before or
// comes after. A change to the topic's retained message between the read
// here and the write (another publish's, or a delete: an empty retained
// publish, the API's, the expiry sweep's) is undone by the write; pk's
// publish, not yet acknowledged, then counts as the later of the two,
// which it may, being concurrent with the other. The store, which
// ordered the two in its own SetRetained, may then hold the other until
// a restart reads it back: a divergence open before this function too,
// as mochi retains after the store writes. The caller runs one at a
// time, in mochi's OnRetainMessage: a subscriber may still get the tagged
// copy in the moment between mochi's retaining and the hook. Restored
// retained messages carry no tag: the store's encoding leaves them out
// (see encodeProps).
func untagRetained(topics *mqtt.TopicsIndex, pk packets.Packet) {
	if len(pk.Payload) == 0 || !tagged(pk.Properties.User) {
		return
	}
	cur, ok := topics.Retained.Get(pk.TopicName)
	if !ok || !tagged(cur.Properties.User) {
		return
	}
	topics.RetainMessage(withoutTag(cur))
}

// tagged reports whether a packet's user properties hold an internal tag.
func tagged(user []packets.UserProperty) bool {
	return slices.ContainsFunc(user, func(u packets.UserProperty) bool { return internalProperty(u.Key) })
}

// withoutTag returns a packet without the internal tags.
func withoutTag(pk packets.Packet) packets.Packet {
	untag(&pk)
	return pk
}

// untag takes the internal tags off a packet in place (see withoutTag).
func untag(pk *packets.Packet) {
	if !tagged(pk.Properties.User) {
		return
	}
	var user []packets.UserProperty
	for _, u := range pk.Properties.User {
		if !internalProperty(u.Key) {
			user = append(user, u)
		}
	}
	pk.Properties.User = user
}
