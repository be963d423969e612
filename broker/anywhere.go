package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/fabric"
	"github.com/roosthub/roost/broker/store"
	"github.com/roosthub/roost/events"
	"github.com/roosthub/roost/tenants"
)

// A spread tenant's persistent sessions live on any node when its fabric
// can route to them (fabric.SessionOwner): no broker holds the sessions of
// clients that are away. A session is read from the store when its client
// connects (adopt), claimed, and handed to mochi as the session the
// connection takes over; its subscriptions are routes of its own, which a
// publisher on any node matches to queue the message in the session's
// queue before its acknowledgement, then send it to the node the client is
// connected to with the copy's number (spread.go, fabric/sessions.go).
// When the client leaves, its session is stored and let go (evict).

// look reads a connecting client's stored session, if it has one, and
// notes it as stored here (so that the connection claims it: to keep it,
// or to discard it for a clean start).
func (p *persistence) look(ctx context.Context, clientID string) (store.Session, bool, error) {
	s, found, err := p.st.Session(ctx, p.tenant, clientID)
	if err != nil || !found {
		return s, false, err
	}
	p.mu.Lock()
	p.stored[clientID] = true
	p.storedN.Store(int64(len(p.stored)))
	p.mu.Unlock()
	return s, true, nil
}

// adopt hands a stored session to mochi as the session a connection with
// its client id takes over: its subscriptions and waiting messages, in
// queue order, as a restart would restore them.
func (p *persistence) adopt(ctx context.Context, s store.Session) (resumed bool, err error) {
	now := time.Now()
	base := now.Unix() &^ 0xffff
	p.mu.Lock()
	claimed := p.epochs[s.ClientID]
	c, subs, inflight, ok, err := p.restoreSession(ctx, s, now, base, p.maxQueued())
	if err == nil && ok {
		// The claim made at connect is the session's epoch now.
		p.epochs[s.ClientID] = max(claimed, s.Epoch)
	}
	p.mu.Unlock()
	if err != nil || !ok {
		return false, err // an error, or expired (and deleted)
	}
	if prev, ok := p.server.Clients.Get(c.ID); ok && !prev.Net.Inline {
		return true, nil // a session here already: the connection takes it over
	}
	cl := p.server.NewClient(nil, c.Listener, c.ID, false)
	cl.Properties.Username = c.Username
	cl.Properties.ProtocolVersion = c.ProtocolVersion
	cl.Properties.Props.SessionExpiryInterval = c.Properties.SessionExpiryInterval
	cl.Properties.Props.SessionExpiryIntervalFlag = c.Properties.SessionExpiryIntervalFlag
	cl.Stop(packets.ErrSessionTakenOver) // a session waiting for its client, as mochi restores one
	for _, sub := range subs {
		ps := packets.Subscription{Filter: sub.Filter, Qos: sub.Qos, NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished,
			RetainHandling: sub.RetainHandling, Identifier: sub.Identifier}
		if p.server.Topics.Subscribe(c.ID, ps) {
			atomic.AddInt64(&p.server.Info.Subscriptions, 1)
		}
		cl.State.Subscriptions.Add(sub.Filter, ps)
	}
	for _, m := range inflight {
		if cl.State.Inflight.Set(m.ToPacket()) {
			atomic.AddInt64(&p.server.Info.Inflight, 1)
		}
	}
	p.server.Clients.Add(cl)
	return true, nil
}

// evict lets a session go once its client left and its record was
// stored: it lives in the store, and in its routes, until the client
// connects again, on any node.
func (p *persistence) evict(cl *mqtt.Client) {
	if cur, ok := p.server.Clients.Get(cl.ID); ok && cur == cl {
		// Not mochi's UnsubscribeClient: its OnUnsubscribed would take the
		// session's subscriptions away, in the store and in its routes.
		for filter := range cl.State.Subscriptions.GetAll() {
			if p.server.Topics.Unsubscribe(filter, cl.ID) {
				atomic.AddInt64(&p.server.Info.Subscriptions, -1)
			}
			cl.State.Subscriptions.Delete(filter)
		}
		// Nor ClearInflights: its OnQosDropped would delete the messages
		// from the session's queue, as if expired.
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if cl.State.Inflight.Delete(pk.PacketID) {
				atomic.AddInt64(&p.server.Info.Inflight, -1)
			}
		}
		p.server.Clients.Delete(cl.ID)
	}
	p.forget(cl.ID)
}

// queueCopies appends a message's copies for persistent sessions connected
// elsewhere or nowhere (see fabric.Local.Queue); a 0 is a copy not queued.
// A full queue (max_queued) drops the new copy whatever the tenant's
// policy: only the session's owner may delete from its queue.
func (p *persistence) queueCopies(ctx context.Context, pk packets.Packet, copies []fabric.Copy) ([]uint64, error) {
	limit := p.maxQueued()
	seqs := make([]uint64, len(copies))
	var items []store.Item
	var at []int
	for i, c := range copies {
		info, err := p.st.QueueInfo(ctx, p.tenant, c.ClientID)
		if err != nil {
			return nil, err
		}
		if info.Len >= limit {
			p.mu.Lock()
			p.dropped[c.ClientID]++
			p.mu.Unlock()
			p.host.raise(events.Event{Tenant: p.tenant, Type: events.QueueDropped, ClientID: c.ClientID,
				Device: p.deviceOf(c.ClientID), Quota: "max_queued", Limit: int64(limit), Reason: string(tenants.DropNewest)})
			continue
		}
		m := toStore(pk)
		m.QoS = c.QoS
		items = append(items, store.Item{ClientID: c.ClientID, Message: m})
		at = append(at, i)
	}
	if len(items) == 0 {
		return seqs, nil
	}
	got, err := p.st.Append(ctx, p.tenant, items, store.Receipt{})
	if err != nil {
		return nil, err
	}
	for k, i := range at {
		seqs[i] = got[k]
	}
	return seqs, nil
}

// queuedHere notes the copies the fabric queued for a publish made here
// (copies, numbered seqs; 0 is one not queued) for the sessions whose
// client object this broker holds: a session it adopted after the store
// hook looked for subscribers, which mochi's routing may reach all the
// same. The delivery then maps to its copy (see handedOver), as for a
// copy the store hook queued; a connected session's copy is outstanding
// from now, as arrived notes one from another node.
func (p *persistence) queuedHere(pk packets.Packet, copies []fabric.Copy, seqs []uint64) {
	pubID, ok := pubIDOf(pk)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.pubs[pubID]
	if !ok {
		return
	}
	for i, cp := range copies {
		if i >= len(seqs) || seqs[i] == 0 {
			continue
		}
		cl, held := p.server.Clients.Get(cp.ClientID)
		if !held || cl.Net.Inline {
			continue
		}
		if c.seqs == nil {
			c.seqs = map[string]uint64{}
		}
		c.seqs[cp.ClientID] = seqs[i]
		if p.live[cp.ClientID] != nil && !slices.Contains(p.outstanding[cp.ClientID], seqs[i]) {
			p.outstanding[cp.ClientID] = insertSeq(p.outstanding[cp.ClientID], seqs[i])
		}
	}
	p.pubs[pubID] = c
}

// queuedFor reports whether the store hook queued a copy of the publish
// for the session (its client was connected here then).
func (p *persistence) queuedFor(pk packets.Packet, clientID string) bool {
	pubID, ok := pubIDOf(pk)
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, queued := p.pubs[pubID].seqs[clientID]
	return queued
}

// arrived readies a message from another node for mochi. Its sender
// queued a copy for each persistent session here it knew of (seqs), and
// copiesLacking finds the copies it queued for those here it did not know
// of. The packet is tagged with their numbers, which are noted
// outstanding before mochi delivers it; the returned function, run after,
// has each session send whatever it lacks (the message itself, when mochi
// did not hand it to the session: a shared group's turn). Noted before, a
// copy the client acknowledges at once is not noted again after.
//
// The message must not reach a session whose copy went another way: one a
// catchUp read from the queue and sent first (its inbox entry was still on
// its way: the attach, or the inbox, lagged), or one not to be found. The
// tag tells handedOver to withhold mochi's delivery to it.
func (p *persistence) arrived(pk packets.Packet, m fabric.Message) (packets.Packet, func()) {
	seqs, skip := p.copiesLacking(m, m.Seqs)
	if len(seqs) == 0 && len(skip) == 0 {
		return pk, func() {}
	}
	var check []*mqtt.Client
	p.mu.Lock()
	for cid, seq := range seqs {
		if _, sent := p.resent[cid][seq]; sent {
			if skip == nil {
				skip = map[string]bool{}
			}
			skip[cid] = true
			continue
		}
		cl := p.live[cid]
		if cl == nil {
			continue // gone meanwhile: the copy waits in its queue
		}
		if !slices.Contains(p.outstanding[cid], seq) {
			p.outstanding[cid] = insertSeq(p.outstanding[cid], seq)
		}
		check = append(check, cl)
	}
	for cid := range skip {
		delete(seqs, cid)
	}
	pk = p.tagSkipping(pk, seqs, skip)
	p.mu.Unlock()
	return pk, func() {
		for _, cl := range check {
			p.reconcile(cl)
		}
	}
}

// copiesLacking adds to a message another node sent here the numbers of
// the copies its sender queued for persistent sessions here without
// knowing they were here: it sent the message for other subscribers here,
// before such a session's attach (its subscriptions are live here from its
// CONNECT, the attach comes after its CONNACK). mochi hands the message
// to the session all the same; unmapped to its copy, the client's PUBACK
// would not delete the copy, and catchUp would read it and send it again.
// A session's copy is the first in its queue not known here with the
// message's topic, payload and QoS (any such copy is the same message to
// the client); each found is noted outstanding. A session with no such
// copy is skipped: a catchUp sent its copy already, or the client
// acknowledged it already, or its queue was full (its sender dropped it),
// or its queue could not be read (the copy waits there for its next
// connect). The seqs given are not changed.
func (p *persistence) copiesLacking(m fabric.Message, seqs map[string]uint64) (map[string]uint64, map[string]bool) {
	if m.QoS == 0 || !p.anywhere || p.storedN.Load() == 0 {
		return seqs, nil
	}
	type lack struct {
		clientID string
		qos      byte
	}
	var lacking []lack
	for id, sub := range p.server.Topics.Subscribers(m.Topic).Subscriptions {
		if _, ok := seqs[id]; ok || min(m.QoS, sub.Qos) == 0 {
			continue
		}
		if cl, ok := p.server.Clients.Get(id); ok && !cl.Net.Inline && persistent(cl) {
			lacking = append(lacking, lack{id, min(m.QoS, sub.Qos)})
		}
	}
	if len(lacking) == 0 {
		return seqs, nil
	}
	out := maps.Clone(seqs)
	if out == nil {
		out = map[string]uint64{}
	}
	skip := map[string]bool{}
	limit := p.maxQueued()
	ctx, cancel := storeCtx()
	defer cancel()
	for _, l := range lacking {
		skip[l.clientID] = true
		p.mu.Lock()
		known := len(p.outstanding[l.clientID])
		if known >= limit {
			p.mu.Unlock()
			continue
		}
		p.reading[l.clientID]++ // see catchUp
		p.mu.Unlock()
		queued, err := p.st.Read(ctx, p.tenant, l.clientID, 0, limit+known)
		if err != nil {
			p.log.Warn("read a session's queue for the copy of a message sent here", "client_id", l.clientID, "err", err)
		}
		p.mu.Lock()
		for _, q := range queued {
			if _, gone := p.acking[l.clientID][q.Seq]; gone || slices.Contains(p.outstanding[l.clientID], q.Seq) ||
				q.Topic != m.Topic || q.QoS != l.qos || !bytes.Equal(q.Payload, m.Payload) {
				continue
			}
			p.outstanding[l.clientID] = insertSeq(p.outstanding[l.clientID], q.Seq)
			out[l.clientID] = q.Seq
			delete(skip, l.clientID)
			break
		}
		p.doneReading(l.clientID)
		p.mu.Unlock()
	}
	return out, skip
}

// resentMemory is how long a copy reconcile sent is remembered, against
// an inbox entry bringing it again (see arrived): far longer than a
// sender takes from queueing a copy to sending it, and than an inbox lags.
const resentMemory = 2 * time.Minute

// noteResent notes a copy reconcile is sending. Called with p.mu held.
func (p *persistence) noteResent(clientID string, seq uint64) {
	sent := p.resent[clientID]
	if sent == nil {
		sent = map[uint64]time.Time{}
		p.resent[clientID] = sent
	}
	now := time.Now()
	if len(sent) >= 256 {
		for s, at := range sent {
			if now.Sub(at) > resentMemory {
				delete(sent, s)
			}
		}
	}
	sent[seq] = now
}

// withheldCopy is a delivery withheld from a client (see withhold): the
// packet id it still takes, the copy it carries (0: one sent another way),
// whether the encoder has dropped its first write, and whether it was
// taken out of the inflight messages already (see orderResend).
type withheldCopy struct {
	id      uint16
	seq     uint64
	dropped bool
	out     bool
}

// withhold takes a delivery mochi just made (it is in the client's
// inflight messages, and on its way to be written) back: unsent tells the
// encoder not to write it. Its packet id stays taken in the inflight
// messages, mapped to no copy, until no write of it can come any more
// (releaseWithheld): mochi may write it from two places, its write queue
// and its resend at the CONNACK (whose snapshot of the inflight messages
// may hold it), and an id given to another message meanwhile would have
// the client's acknowledgement of one taken for the other. A copy noted
// under this id for a client object taken over is forgotten for the same
// reason. Called with p.mu held.
func (p *persistence) withhold(cl *mqtt.Client, pubID string, packetID uint16, seq uint64) {
	delete(p.inflight[cl.ID], packetID)
	if p.unsend[cl.ID] == nil {
		p.unsend[cl.ID] = map[string]*withheldCopy{}
	}
	if _, ok := p.unsend[cl.ID][pubID]; !ok {
		p.unsend[cl.ID][pubID] = &withheldCopy{id: packetID, seq: seq}
		p.unsending.Add(1)
	}
	p.log.Debug("a delivery withheld", "client_id", cl.ID)
}

// unsent reports whether a PUBLISH about to be written to a client was
// withheld: the caller keeps it from being written. The first write (from
// mochi's write queue) is dropped; its id is released once the
// connection is established, when no resend is to come. A resend of it
// (DUP, at the CONNACK) comes only for one withheld in the moment between
// the CONNACK's encoding, when orderResend takes the withheld deliveries
// out of the inflight messages, and mochi's resend reading them. It
// cannot be dropped without failing the resend: it is written, and the
// client acknowledges it under its id, mapped now to its copy (which
// reconcile then does not send again).
func (p *persistence) unsent(cl *mqtt.Client, pk *packets.Packet) bool {
	if p.unsending.Load() == 0 {
		return false
	}
	pubID, ok := pubIDOf(*pk)
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	w, withheld := p.unsend[cl.ID][pubID]
	switch {
	case !withheld:
		return false
	case pk.FixedHeader.Dup:
		if w.seq != 0 {
			if p.inflight[cl.ID] == nil {
				p.inflight[cl.ID] = map[uint16]uint64{}
			}
			p.inflight[cl.ID][pk.PacketID] = w.seq
			delete(p.heldPk[cl.ID], w.seq)
		}
		p.forgetWithheldCopy(cl.ID, pubID)
		return false
	}
	w.dropped = true
	if pk.Properties.TopicAliasFlag && pk.TopicName != "" {
		// It announced an outbound topic alias to the client: announced
		// by the next delivery under that alias instead.
		if p.unannounced[cl] == nil {
			p.unannounced[cl] = map[uint16]string{}
		}
		if _, ok := p.unannounced[cl][pk.Properties.TopicAlias]; !ok {
			p.unannouncedN.Add(1)
		}
		p.unannounced[cl][pk.Properties.TopicAlias] = pk.TopicName
	}
	if p.live[cl.ID] == cl {
		p.releaseWithheld(cl, pubID)
	}
	return true
}

// announceAlias gives a PUBLISH about to be written its topic back if it
// carries only an outbound topic alias whose announcing delivery was
// withheld and dropped (see unsent): mochi gives a delivery its alias
// before any hook can refuse it, and leaves the topic out of every later
// one under that alias, which the client could not resolve [MQTT-3.3.2-7].
// A PUBLISH with both topic and alias announces it again [MQTT-3.3.2-12].
// The upstream fix is mochi's: a hook before a delivery, able to refuse
// it before its alias is given.
func (p *persistence) announceAlias(cl *mqtt.Client, pk *packets.Packet) {
	// A resend (DUP) is of a packet an older connection was sent, its
	// alias that connection's.
	if p.unannouncedN.Load() == 0 || !pk.Properties.TopicAliasFlag || pk.FixedHeader.Dup {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	topic, ok := p.unannounced[cl][pk.Properties.TopicAlias]
	if !ok {
		return
	}
	if pk.TopicName == "" {
		pk.TopicName = topic
	}
	delete(p.unannounced[cl], pk.Properties.TopicAlias)
	if len(p.unannounced[cl]) == 0 {
		delete(p.unannounced, cl)
	}
	p.unannouncedN.Add(-1)
}

// releaseWithheld frees a withheld delivery's packet id and forgets it.
// It takes no place of the client's Receive Maximum (see flowControl,
// which never sees it written). Called with p.mu held.
func (p *persistence) releaseWithheld(cl *mqtt.Client, pubID string) {
	w := p.unsend[cl.ID][pubID]
	if w == nil {
		return
	}
	if cur, ok := cl.State.Inflight.Get(w.id); ok && !w.out {
		if got, _ := pubIDOf(cur); got == pubID && cl.State.Inflight.Delete(w.id) {
			atomic.AddInt64(&p.server.Info.Inflight, -1)
		}
	}
	p.forgetWithheldCopy(cl.ID, pubID)
}

// forgetWithheldCopy forgets one withheld delivery. Called with p.mu held.
func (p *persistence) forgetWithheldCopy(clientID, pubID string) {
	if _, ok := p.unsend[clientID][pubID]; !ok {
		return
	}
	delete(p.unsend[clientID], pubID)
	if len(p.unsend[clientID]) == 0 {
		delete(p.unsend, clientID)
	}
	p.unsending.Add(-1)
}

// releaseDropped, as a connection is established (its resend at the
// CONNACK done), releases the withheld deliveries whose write was
// dropped already: none of them can be written now. Called with p.mu held.
func (p *persistence) releaseDropped(cl *mqtt.Client) {
	for pubID, w := range p.unsend[cl.ID] {
		if w.dropped {
			p.releaseWithheld(cl, pubID)
		}
	}
}

// forgetWithheld forgets the deliveries withheld from a client that
// were never to be written: its connection ended. Their ids are taken
// out of the client object's inflight messages: left there, they would
// be resent to the next connection as messages the client has. cl may be
// nil. Called with p.mu held.
func (p *persistence) forgetWithheld(cl *mqtt.Client, clientID string) {
	if cl != nil {
		for pubID := range p.unsend[clientID] {
			p.releaseWithheld(cl, pubID)
		}
	}
	p.unsending.Add(-int64(len(p.unsend[clientID])))
	delete(p.unsend, clientID)
}

// catchUp reads what a connected session's queue holds that this broker
// does not know of, and sends it: copies queued by a node that sent them to
// a node the client had left (a notice lost in a takeover) arrive this way.
//
// The store and what this broker notes do not change together: a publish
// queued here is in the store a moment before its copy is noted (mochi
// then delivers it), and a copy acknowledged or dropped leaves outstanding
// a moment before the store deletes it. A read in either moment must not
// take the copy for one sent nowhere: it would be sent twice. So the
// appends in flight as the read returns are waited for (they note their
// own copies), and the copies taken from outstanding are left out
// (acking).
func (p *persistence) catchUp(cl *mqtt.Client) {
	p.mu.Lock()
	known := len(p.outstanding[cl.ID])
	p.reading[cl.ID]++
	p.mu.Unlock()
	ctx, cancel := storeCtx()
	defer cancel()
	// The whole queue: what is known of it here may have been noted out
	// of order (copiesLacking notes copies queued before the attach).
	queued, err := p.st.Read(ctx, p.tenant, cl.ID, 0, p.maxQueued()+known)
	p.mu.Lock()
	for last := p.nextAppend; p.appendingUpTo(last); {
		p.appended.Wait()
	}
	if p.live[cl.ID] == nil {
		queued = nil // gone meanwhile: the copies wait in its queue
	}
	for _, q := range queued {
		if _, gone := p.acking[cl.ID][q.Seq]; !gone && !slices.Contains(p.outstanding[cl.ID], q.Seq) {
			p.outstanding[cl.ID] = insertSeq(p.outstanding[cl.ID], q.Seq)
		}
	}
	p.doneReading(cl.ID)
	p.mu.Unlock()
	if err != nil {
		p.log.Warn("read a session's queue to catch up", "client_id", cl.ID, "err", err)
	}
	// Also with nothing read: the reconcile ends a hold (see established).
	p.reconcile(cl)
}

// appendingUpTo reports whether an append with a ticket up to last is in
// flight. Called with p.mu held.
func (p *persistence) appendingUpTo(last uint64) bool {
	for ticket := range p.appending {
		if ticket <= last {
			return true
		}
	}
	return false
}

// unqueued notes a copy taken from a session's outstanding ones
// (acknowledged, or dropped), which the store still holds until its delete
// returns. Called with p.mu held.
func (p *persistence) unqueued(clientID string, seq uint64) {
	if p.acking[clientID] == nil {
		p.acking[clientID] = map[uint64]bool{}
	}
	p.acking[clientID][seq] = false
}

// deleted notes that the store's delete of an unqueued copy returned (or
// failed): a read from now on does not return it, but a catchUp reading
// now may have, so it is kept until the session's reads end.
func (p *persistence) deleted(clientID string, seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.acking[clientID][seq]; !ok {
		return // let go meanwhile
	}
	if p.reading[clientID] > 0 {
		p.acking[clientID][seq] = true
		return
	}
	delete(p.acking[clientID], seq)
	if len(p.acking[clientID]) == 0 {
		delete(p.acking, clientID)
	}
}

// doneReading ends a catchUp's read, and with the session's last one
// forgets the copies whose delete returned. Called with p.mu held.
func (p *persistence) doneReading(clientID string) {
	if p.reading[clientID]--; p.reading[clientID] > 0 {
		return
	}
	delete(p.reading, clientID)
	for seq, deleted := range p.acking[clientID] {
		if deleted {
			delete(p.acking[clientID], seq)
		}
	}
	if len(p.acking[clientID]) == 0 {
		delete(p.acking, clientID)
	}
}

// kicked ends the connection of a session claimed on another node, if its
// claim here is older, and drops the Will this node holds back for it: its
// client is back [MQTT-3.1.3-9].
func (inst *instance) kicked(clientID string, epoch uint64) {
	p := inst.persist
	if p == nil {
		inst.cancelWill(clientID)
		return
	}
	p.mu.Lock()
	cl := p.live[clientID]
	mine := p.epochs[clientID]
	p.mu.Unlock()
	if mine >= epoch && epoch != 0 {
		return // claimed here since: the kick is late
	}
	if c, ok := inst.server.Clients.Get(clientID); cl == nil && ok && !c.Net.Inline && c.Net.Conn != nil && !c.Closed() {
		cl = c // connected, not yet established: let go of it all the same
	}
	inst.cancelWill(clientID)
	if cl != nil {
		inst.log.Info("session taken over on another node", "client_id", clientID)
		// Let go first: a publish here that takes its append ticket from
		// now on queues nothing for the session (see appendStartsFor);
		// those that took one before are waited for.
		p.mu.Lock()
		p.letGo(clientID)
		for last := p.nextAppend; p.appendingUpTo(last); {
			p.appended.Wait()
		}
		p.mu.Unlock()
		endConn(inst.server, cl, packets.ErrSessionTakenOver)
	}
	if r := inst.routes; r != nil && r.sess != nil {
		ctx, cancel := routeCtx()
		defer cancel()
		if err := r.sess.Release(ctx, clientID, epoch); err != nil {
			inst.log.Warn("release a session taken over on another node", "client_id", clientID, "err", err)
		}
	}
}

// handOver, for a stored session a connection resumes, tells the node its
// client was last connected to, if another, to end that connection
// (fabric.Tenant.Kick), and waits (up to handOverWait) until that node
// released it: only then is the session's queue read (adopt) and the
// CONNACK sent. So that node serves the old connection nothing published
// after the CONNACK, and whatever it queued for the session from its own
// publishers while it held the session is in the queue before the read:
// delivered first, in order. A node that has not renewed its membership
// for two renewals (dead, or cut off) is not waited for at all, and one
// that does not answer in time (just killed, or paused: its lease fences
// it) not longer; an error is logged, and the attach kicks again.
func (inst *instance) handOver(ctx context.Context, clientID string) {
	r := inst.routes
	if r == nil || r.sess == nil {
		return
	}
	epoch := inst.persist.epoch(clientID)
	told, err := r.sess.Kick(ctx, clientID, epoch)
	if err != nil {
		inst.log.Warn("end a resumed session's connection on another node before the CONNACK", "client_id", clientID, "err", err)
		return
	}
	if !told {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, handOverWait)
	defer cancel()
	if !r.sess.AwaitRelease(wctx, clientID, epoch) {
		inst.log.Warn("the node a resumed session was on did not release it in time; resumed all the same", "client_id", clientID, "waited", handOverWait)
	}
}

// handOverWait bounds how long a resuming connection waits for the node
// its session was on to release it: a node that answers releases within
// milliseconds; one just killed holds its clients' reconnections up this
// long, until its membership shows it stopped renewing.
const handOverWait = 500 * time.Millisecond

// discard ends the stored session a connection does not resume (a clean
// start, a connection that keeps none, or expired) before the connection
// is accepted, under the claim made at connect: first its routes, so that
// no node queues anything for it once its client has the CONNACK (and the
// node its client was last on ends that connection), then its record and
// queue, with the copies queued for it while the routes stood. An error
// leaves the record, so that the client's next connection discards it.
func (inst *instance) discard(ctx context.Context, clientID string) error {
	p, r := inst.persist, inst.routes
	epoch := p.epoch(clientID)
	if r != nil && r.sess != nil {
		if err := r.sess.DropSession(ctx, clientID, epoch); err != nil {
			return fmt.Errorf("drop its routes: %w", err)
		}
	}
	switch err := p.st.DeleteSession(ctx, p.tenant, clientID, epoch); {
	case errors.Is(err, store.ErrFenced):
		// Claimed since, elsewhere: that connection keeps it, and ends
		// this one.
		p.host.fenced()
		inst.log.Info("discard a session: it has a new owner, who keeps it", "client_id", clientID)
		return nil
	case err != nil:
		return fmt.Errorf("delete it: %w", err)
	}
	p.discarding(clientID)
	return nil
}

// discarding notes that a connection discarded the client's stored
// session (see discard); discarded reports it once, as the new session
// starts.
func (p *persistence) discarding(clientID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.discard == nil {
		p.discard = map[string]bool{}
	}
	p.discard[clientID] = true
}

func (p *persistence) discarded(clientID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ok := p.discard[clientID]
	delete(p.discard, clientID)
	return ok
}

// expireAway ends the sessions whose clients stayed away past their
// expiry: where sessions live anywhere no broker holds them meanwhile, so
// the tenant's home looks for them (at each of the hub's sweeps; the hub
// calls it at the home only). A client
// that came back meanwhile claimed its session: the delete is fenced.
func (inst *instance) expireAway(now time.Time) {
	p, r := inst.persist, inst.routes
	if !inst.anywhere || p == nil || r == nil || r.sess == nil {
		return
	}
	ctx, cancel := storeCtx()
	defer cancel()
	sessions, err := p.st.Sessions(ctx, p.tenant)
	if err != nil {
		inst.log.Warn("read sessions to expire", "err", err)
		return
	}
	for _, s := range sessions {
		if s.DisconnectedAt.IsZero() || !now.After(s.DisconnectedAt.Add(time.Duration(s.Expiry)*time.Second)) {
			continue
		}
		switch err := p.st.DeleteSession(ctx, p.tenant, s.ClientID, s.Epoch); {
		case errors.Is(err, store.ErrFenced):
			continue // its client came back
		case err != nil:
			inst.log.Warn("delete an expired session", "client_id", s.ClientID, "err", err)
			continue
		}
		if err := r.sess.ExpireSession(ctx, s.ClientID); err != nil {
			inst.log.Warn("drop an expired session's routes", "client_id", s.ClientID, "err", err)
		}
		inst.log.Info("session expired", "client_id", s.ClientID)
	}
}
