package broker

import (
	"maps"
	"math"
	"slices"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/store"
)

// Shared subscriptions ($share/<group>/<filter>): each message goes to one
// member of each group. mochi v2.7.9 takes the first member its map
// iteration yields, connected or not, and whether or not the member may
// read the topic: a message could wait in the memory of a session whose
// client is away while another member was connected, or be refused by
// the ACL and reach no member at all. And a turn given to a persistent
// session was held in mochi's memory only, never in the session store:
// a restart lost it, though its publisher had been acknowledged.
//
// Here a group's turn goes to a member that may read the topic and is
// connected; failing that, to a persistent session that may read it (the
// message waits in its queue until its client is back); failing that, to
// any member, as mochi would. A turn given to a persistent session is
// stored with the message's other copies before the publisher's
// acknowledgement (persistence.storeCopies), and the store hook's choice
// is the one the message is delivered by (shareHook).
//
// A spread tenant's group has members on several nodes. A node serves a
// group's turn for a message published there if a member there takes it
// (is connected and may read the topic, or is a persistent session that
// may read it); else the fabric sends the turn to another owner of the
// group (a node with members, or a persistent session's own route, where
// the turn is queued for the session). Where sessions live on any node,
// a node that receives a group's turn and has no member to take it (the
// members it had left, or may not read the topic) passes it on the same
// way, once (fabric.Local.Turn), rather than lose it; and a turn it gives
// a persistent session here is stored in the session's queue before the
// message leaves its inbox (arrivedTurns).

// shareHook chooses each shared group's member for a message mochi is
// about to deliver. It comes last, after a spread tenant's routes, as the
// one hook providing OnSelectSubscribers.
type shareHook struct {
	mqtt.HookBase
	inst *instance
}

func (h *shareHook) ID() string { return "roost-share" }

func (h *shareHook) Provides(b byte) bool { return b == mqtt.OnSelectSubscribers }

// OnSelectSubscribers serves a remote message only to the shared groups it
// was sent here for (another node serves the others), and chooses each
// group's member: the one the store hook chose, if it still belongs to the
// group; else as chooser does. A group whose chosen member left it
// after its copy was stored gets nothing more: the stored copy is its
// turn, sent from the member's queue.
func (h *shareHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	servedGroups(subs, pk)
	var chose pubCopies
	if h.inst.persist != nil {
		chose = h.inst.persist.choicesOf(pk)
	}
	c := h.inst.chooser(pk)
	selected := make(map[string]packets.Subscription, len(subs.Shared))
	for group, members := range subs.Shared {
		id, chosen := chose.turns[group]
		sub, member := members[id]
		if chosen && !member {
			if _, stored := chose.seqs[id]; stored {
				// Left out of subs: mochi chooses for groups left
				// with none selected.
				delete(subs.Shared, group)
				continue
			}
		}
		if !chosen || !member {
			if id, sub = c.choose(members, subs.Subscriptions, pk); id == "" {
				delete(subs.Shared, group)
				continue
			}
		}
		if cur, ok := selected[id]; ok {
			sub = cur.Merge(sub)
		}
		selected[id] = sub
	}
	subs.SharedSelected = selected
	return subs
}

// servedGroups leaves in subs only the shared groups this node serves a
// message to: all of them for one published here, those the sending node
// named for one from another node.
func servedGroups(subs *mqtt.Subscribers, pk packets.Packet) {
	groups, ok := remoteGroups(pk)
	if !ok {
		return
	}
	for g := range subs.Shared {
		if !slices.Contains(groups, g) {
			delete(subs.Shared, g)
		}
	}
}

// chooser chooses the member of a shared group a message goes to: a
// connected one that may read the topic and take the message; else a
// persistent session that may, whose queue has room (it waits there); else
// a persistent session that may; else any (as mochi would). mochi's map
// iteration starts at a random member, which spreads the turns. A member
// that would not take the message (the publisher itself under No Local,
// or subscribed at QoS 0 while away) is passed over.
//
// A message from another node, where sessions live anywhere, goes to a
// connected member without a persistent session first: this node serves
// the group for its clean members (the sending node queued a turn for a
// persistent session itself, through the session's own route); a turn
// given to a persistent session here is stored here (arrivedTurns), after
// the sender's acknowledgement.
//
// With passOn, a group no member here takes (none connected that may read
// the topic, nor a persistent session that may) gets no member here: the
// fabric serves it elsewhere. Without, it goes to any member, as mochi
// would.
type chooser struct {
	clients *mqtt.Clients
	acl     reader
	p       *persistence // nil without a session store
	passOn  bool
	// maxQueued, if not 0, is where a connected clean member is full: it
	// holds so many QoS 1 and 2 messages unacknowledged, and the delivery
	// would be refused (overQueued) while another member could take it.
	maxQueued int64
}

// chooser is the chooser for a message's shared groups here.
func (inst *instance) chooser(pk packets.Packet) chooser {
	c := chooser{clients: inst.server.Clients, acl: inst, p: inst.persist, passOn: passesOn(inst.spread, inst.anywhere, pk)}
	if inst.boundsInflight {
		c.maxQueued = inst.q.Load().MaxQueued
	}
	return c
}

// passesOn reports whether a shared group's turn no member here takes is
// left to the fabric: for a message published here, on a spread tenant;
// for one from another node, where sessions live anywhere, unless that
// node passed it on already.
func passesOn(spread, anywhere bool, pk packets.Packet) bool {
	groups, from := remoteGroups(pk)
	switch {
	case !spread:
		return false
	case !from:
		return true
	}
	return anywhere && len(groups) > 0 && !passed(pk)
}

// cleanFirst reports whether a message's turns go to clean members first
// (see chooser).
func (c chooser) cleanFirst(pk packets.Packet) bool {
	return c.p != nil && c.p.anywhere && remote(pk)
}

// choose returns the member chosen, "" if the group has none here (or
// none that takes the message, with passOn); direct are the message's
// subscribers outside groups (whose No Local a member's delivery merges
// with).
func (c chooser) choose(members, direct map[string]packets.Subscription, pk packets.Packet) (string, packets.Subscription) {
	var anyID, storedID, roomID, connectedID, fullID string
	var anySub, storedSub, roomSub, connectedSub, fullSub packets.Subscription
	cleanFirst := c.cleanFirst(pk)
	for id, sub := range members {
		cl, ok := c.clients.Get(id)
		if !ok {
			continue
		}
		if id == pk.Origin && (sub.NoLocal || direct[id].NoLocal) {
			continue // [MQTT-3.8.3-3]
		}
		if anyID == "" {
			anyID, anySub = id, sub
		}
		if !c.acl.mayRead(cl, pk.TopicName) {
			continue
		}
		if cl.Net.Conn != nil && !cl.Closed() && !cl.IsTakenOver() {
			if c.full(cl, sub, pk) {
				if fullID == "" {
					fullID, fullSub = id, sub
				}
				continue
			}
			if !cleanFirst || !persistent(cl) {
				return id, sub
			}
			if connectedID == "" {
				connectedID, connectedSub = id, sub
			}
			continue
		}
		if !persistent(cl) || (pk.FixedHeader.Qos > 0 && sub.Qos == 0) {
			continue
		}
		if storedID == "" {
			storedID, storedSub = id, sub
		}
		if roomID == "" && c.p != nil && c.p.hasRoom(id) {
			roomID, roomSub = id, sub
		}
	}
	switch {
	case connectedID != "":
		return connectedID, connectedSub
	case roomID != "":
		return roomID, roomSub
	case storedID != "":
		return storedID, storedSub
	case c.passOn:
		return "", packets.Subscription{}
	case fullID != "":
		return fullID, fullSub // refused there, and counted
	}
	return anyID, anySub
}

// full reports whether a connected member would have the message refused
// for holding max_queued unacknowledged (see overQueued).
func (c chooser) full(cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) bool {
	if c.maxQueued <= 0 || pk.FixedHeader.Qos == 0 || sub.Qos == 0 || persistent(cl) {
		return false
	}
	if _, device := cl.Net.Conn.(*deviceConn); !device {
		return false
	}
	return holdsAtLeast(cl, int(min(c.maxQueued, math.MaxUint16)))
}

// takes reports whether a member here takes a shared group's turn of a
// message (see chooser).
func (c chooser) takes(group string, subs *mqtt.Subscribers, pk packets.Packet) bool {
	c.passOn = true
	id, _ := c.choose(subs.Shared[group], subs.Subscriptions, pk)
	return id != ""
}

// reader is what may read a topic (the tenant's ACL).
type reader interface {
	mayRead(cl *mqtt.Client, topic string) bool
}

// choicesOf returns what the store hook noted of a publish: its stored
// copies and the shared groups' members it chose.
func (p *persistence) choicesOf(pk packets.Packet) pubCopies {
	pubID, ok := pubIDOf(pk)
	if !ok {
		return pubCopies{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pubs[pubID]
}

// hasRoom reports whether a session's queue has room for one more.
func (p *persistence) hasRoom(clientID string) bool {
	p.mu.Lock()
	n := len(p.outstanding[clientID])
	p.mu.Unlock()
	return n < p.maxQueued()
}

// chosen reports whether the store hook chose clientID for one of the
// publish's shared groups (its turn was to be stored).
func (c pubCopies) chosen(clientID string) bool {
	for _, id := range c.turns {
		if id == clientID {
			return true
		}
	}
	return false
}

// sharedTurns chooses each shared group's member for a publish being
// stored (see chooser), and adds a copy to items for a persistent session
// chosen, or raises the QoS of the copy it has to the one the merged
// delivery has: its turn is stored like any copy. It returns the choices
// (group → client id), for shareHook to deliver by.
func (p *persistence) sharedTurns(subs *mqtt.Subscribers, pk packets.Packet, items []store.Item) (map[string]string, []store.Item) {
	servedGroups(subs, pk)
	if len(subs.Shared) == 0 {
		return nil, items
	}
	at := make(map[string]int, len(items))
	for i, it := range items {
		at[it.ClientID] = i
	}
	c := chooser{clients: p.server.Clients, acl: p.host, p: p, passOn: passesOn(p.spread, p.anywhere, pk), maxQueued: p.host.quotas().MaxQueued}
	turns := make(map[string]string, len(subs.Shared))
	for group, members := range subs.Shared {
		id, sub := c.choose(members, subs.Subscriptions, pk)
		if id == "" {
			continue
		}
		turns[group] = id
		target, ok := p.server.Clients.Get(id)
		qos := min(pk.FixedHeader.Qos, sub.Qos)
		if !ok || target.Net.Inline || !persistent(target) || qos == 0 || !p.host.mayRead(target, pk.TopicName) {
			continue
		}
		if i, ok := at[id]; ok {
			items[i].Message.QoS = max(items[i].Message.QoS, qos)
			continue
		}
		m := toStore(pk)
		m.QoS = qos
		at[id] = len(items)
		items = append(items, store.Item{ClientID: id, Message: m})
	}
	return turns, items
}

// arrivedTurns, where sessions live anywhere, chooses the members here of
// the shared groups a message from another node was sent here for. It
// stores a turn that falls to a persistent session here (none of the
// group's clean members here could take it) in the session's queue,
// before the message leaves this node's inbox: the sending node queued a
// turn only where it fell to a persistent session's own route, and sent
// this one here for the group. A session the sender queued a copy for
// already (through a subscription of its own) takes its turn on that
// copy. A turn passed on to this node is stored the same way. It returns
// the groups no member here takes, for the fabric to pass on (unless the
// message was passed on to this node already: then any member here gets
// it, as mochi would choose).
func (p *persistence) arrivedTurns(pk packets.Packet) (packets.Packet, []string, error) {
	groups, _ := remoteGroups(pk)
	if len(groups) == 0 {
		return pk, nil, nil
	}
	prior := p.choicesOf(pk) // the sender's copies, noted by arrived
	turns, items := p.sharedTurns(p.server.Topics.Subscribers(pk.TopicName), pk, nil)
	var pass []string
	for _, g := range groups {
		if _, ok := turns[g]; !ok && !passed(pk) {
			pass = append(pass, g)
		}
	}
	items = slices.DeleteFunc(items, func(it store.Item) bool {
		_, queued := prior.seqs[it.ClientID]
		return queued || prior.skip[it.ClientID]
	})
	if len(items) == 0 {
		return pk, pass, nil
	}
	ctx, cancel := storeCtx()
	defer cancel()
	items, full := p.makeRoom(ctx, items)
	ticket, kept := p.appendStartsFor(items)
	forgetTurns(turns, items, kept)
	items = kept
	var seqs []uint64
	if len(items) > 0 {
		var err error
		if seqs, err = p.st.Append(ctx, p.tenant, items, store.Receipt{}); err != nil {
			p.appendEnds(ticket)
			p.log.Error("queue shared groups' turns for persistent sessions; delivered unstored", "topic", pk.TopicName, "sessions", len(items), "err", err)
			return pk, nil, errNotStored
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c := pubCopies{seqs: map[string]uint64{}}
	pubID, tagged := pubIDOf(pk)
	if tagged {
		c = p.pubs[pubID]
		c.seqs = maps.Clone(c.seqs)
		if c.seqs == nil {
			c.seqs = map[string]uint64{}
		}
	}
	c.turns = turns
	if len(full) > 0 {
		// The turns a full queue did not take must not be delivered
		// either (see makeRoom).
		c.full = maps.Clone(c.full)
		if c.full == nil {
			c.full = map[string]bool{}
		}
		maps.Copy(c.full, full)
	}
	for i, it := range items {
		c.seqs[it.ClientID] = seqs[i]
		p.outstanding[it.ClientID] = insertSeq(p.outstanding[it.ClientID], seqs[i])
	}
	if tagged {
		p.pubs[pubID] = c
	} else {
		pk = p.register(pk, c)
	}
	p.appendEndsLocked(ticket)
	return pk, pass, nil
}

// forgetTurns forgets the turns of members whose copies were among items
// but are not among kept (sessions let go of meanwhile, see
// appendStartsFor): shareHook chooses again for their groups.
func forgetTurns(turns map[string]string, items, kept []store.Item) {
	if len(kept) == len(items) {
		return
	}
	for group, id := range turns {
		had := slices.ContainsFunc(items, func(it store.Item) bool { return it.ClientID == id })
		if had && !slices.ContainsFunc(kept, func(it store.Item) bool { return it.ClientID == id }) {
			delete(turns, group)
		}
	}
}
