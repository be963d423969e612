package broker

import (
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
// Where sessions live on any node, a message that came from another node
// was queued there, for the sessions it knew; a shared turn taken here
// for it is not queued (the sending node could not know which member
// would take it).

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
// group's member: the one the store hook chose and stored a copy for, if
// it still belongs to the group; else as chooseMember does.
func (h *shareHook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	servedGroups(subs, pk)
	var turns map[string]string
	if h.inst.persist != nil {
		turns = h.inst.persist.turnsOf(pk)
	}
	selected := make(map[string]packets.Subscription, len(subs.Shared))
	for group, members := range subs.Shared {
		id, ok := turns[group]
		sub, member := members[id]
		if !ok || !member {
			if id, sub = chooseMember(h.inst.server.Clients, h.inst, members, pk.TopicName); id == "" {
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

// chooseMember chooses the member of a shared group a message on topic
// goes to: a connected one that may read the topic; else a persistent
// session that may (it waits in its queue); else any. mochi's map
// iteration starts at a random member, which spreads the turns. "" if
// the group has no member here.
func chooseMember(clients *mqtt.Clients, acl reader, members map[string]packets.Subscription, topic string) (string, packets.Subscription) {
	var anyID, storedID string
	var anySub, storedSub packets.Subscription
	for id, sub := range members {
		cl, ok := clients.Get(id)
		if !ok {
			continue
		}
		if anyID == "" {
			anyID, anySub = id, sub
		}
		if !acl.mayRead(cl, topic) {
			continue
		}
		if cl.Net.Inline || (cl.Net.Conn != nil && !cl.Closed() && !cl.IsTakenOver()) {
			return id, sub
		}
		if storedID == "" && persistent(cl) {
			storedID, storedSub = id, sub
		}
	}
	if storedID != "" {
		return storedID, storedSub
	}
	return anyID, anySub
}

// reader is what may read a topic (the tenant's ACL).
type reader interface {
	mayRead(cl *mqtt.Client, topic string) bool
}

// turnsOf returns the shared groups' members the store hook chose for a
// publish (group → client id), if it did.
func (p *persistence) turnsOf(pk packets.Packet) map[string]string {
	pubID, ok := pubIDOf(pk)
	if !ok {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pubs[pubID].turns
}

// sharedTurns chooses each shared group's member for a publish being
// stored (see chooseMember), and adds a copy to items for a persistent
// session chosen that has none: its turn is stored like any copy. It
// returns the choices (group → client id), for shareHook to deliver by.
func (p *persistence) sharedTurns(subs *mqtt.Subscribers, pk packets.Packet, items []store.Item) (map[string]string, []store.Item) {
	servedGroups(subs, pk)
	if len(subs.Shared) == 0 {
		return nil, items
	}
	turns := make(map[string]string, len(subs.Shared))
	for group, members := range subs.Shared {
		id, sub := chooseMember(p.server.Clients, p.host, members, pk.TopicName)
		if id == "" {
			continue
		}
		turns[group] = id
		target, ok := p.server.Clients.Get(id)
		if !ok || target.Net.Inline || !persistent(target) || min(pk.FixedHeader.Qos, sub.Qos) == 0 ||
			slices.ContainsFunc(items, func(it store.Item) bool { return it.ClientID == id }) ||
			!p.host.mayRead(target, pk.TopicName) {
			continue
		}
		m := toStore(pk)
		m.QoS = min(pk.FixedHeader.Qos, sub.Qos)
		items = append(items, store.Item{ClientID: id, Message: m})
	}
	return turns, items
}
