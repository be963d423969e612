package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/roosthub/roost/broker/fabric"
	"github.com/roosthub/roost/broker/store"
)

// A spread tenant is served by every node of the fleet at once (see
// Config.Fabric). Its clean sessions connect to any node and stay there;
// its persistent sessions are forwarded to its home, which holds them as a
// single node would. The brokers of one tenant on different nodes are
// joined by the fabric: each writes a route for every filter its
// subscribers hold before their SUBACK, and a publish is added to the inbox
// of every other broker with a matching route before its PUBACK. A message
// from another node is published here through the inline client, tagged as
// remote: it was checked, counted, exported and stored where it arrived,
// so here it is only delivered (and, at the home, queued for the
// persistent sessions it is for).

// remoteProperty tags a message from another node, until it is delivered;
// its value lists the shared groups this node serves it to.
const remoteProperty = "\x00roost-remote"

// passedProperty tags a message from another node that passed a shared
// group's turn on to this one (fabric.Message.Passed).
const passedProperty = "\x00roost-passed"

// passed reports whether a message from another node is a shared group's
// turn it passed on, to be served here however it can.
func passed(pk packets.Packet) bool {
	return slices.ContainsFunc(pk.Properties.User, func(u packets.UserProperty) bool { return u.Key == passedProperty })
}

// errNotForwarded refuses a publish the fabric could not take.
var errNotForwarded = errors.New("message not forwarded to the tenant's other nodes")

// remoteGroups reports whether a packet came from another node, and the
// shared groups it is for here.
func remoteGroups(pk packets.Packet) ([]string, bool) {
	for _, u := range pk.Properties.User {
		if u.Key == remoteProperty {
			if u.Val == "" {
				return nil, true
			}
			return strings.Split(u.Val, "\x00"), true
		}
	}
	return nil, false
}

func remote(pk packets.Packet) bool {
	_, ok := remoteGroups(pk)
	return ok
}

// spreadRoutes is what a tenant's broker holds of its routes: which of its
// clients subscribe to each filter, so that a route is written with the
// first and removed with the last.
type spreadRoutes struct {
	fab fabric.Owner
	// sess is the fabric's part for persistent sessions living on any
	// node (nil: they live at the home); attached holds the sessions whose
	// client is connected here.
	sess     fabric.SessionOwner
	attached map[string]bool

	mu       sync.Mutex
	byFilter map[string]map[string]bool // filter → client ids
	byClient map[string]map[string]bool // client id → filters
}

func newSpreadRoutes(fab fabric.Owner) *spreadRoutes {
	r := &spreadRoutes{fab: fab, byFilter: map[string]map[string]bool{}, byClient: map[string]map[string]bool{}, attached: map[string]bool{}}
	r.sess, _ = fab.(fabric.SessionOwner)
	return r
}

// hold notes a client's subscription and reports whether it is the
// filter's first here.
func (r *spreadRoutes) hold(filter, clientID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := len(r.byFilter[filter]) == 0
	if r.byFilter[filter] == nil {
		r.byFilter[filter] = map[string]bool{}
	}
	r.byFilter[filter][clientID] = true
	if r.byClient[clientID] == nil {
		r.byClient[clientID] = map[string]bool{}
	}
	r.byClient[clientID][filter] = true
	return first
}

// drop forgets a client's subscription and reports whether it was the
// filter's last here.
func (r *spreadRoutes) drop(filter, clientID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	subs, ok := r.byFilter[filter]
	if !ok || !subs[clientID] {
		return false
	}
	delete(subs, clientID)
	delete(r.byClient[clientID], filter)
	if len(r.byClient[clientID]) == 0 {
		delete(r.byClient, clientID)
	}
	if len(subs) == 0 {
		delete(r.byFilter, filter)
		return true
	}
	return false
}

func (r *spreadRoutes) filtersOf(clientID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.byClient[clientID]))
	for f := range r.byClient[clientID] {
		out = append(out, f)
	}
	return out
}

func (r *spreadRoutes) filters() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.byFilter))
	for f := range r.byFilter {
		out = append(out, f)
	}
	slices.Sort(out)
	return out
}

func routeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// joinFabric makes the instance one of its tenant's brokers in the fabric,
// with a route for every subscription it restored (a home's sessions).
func (inst *instance) joinFabric(fab fabric.Node, home bool) error {
	ctx, cancel := routeCtx()
	defer cancel()
	// Where sessions live anywhere the home holds none: it is one of the
	// tenant's nodes like the others (swept if it dies, its inbox capped).
	t, err := fab.Join(ctx, inst.tenant, home && !inst.anywhere, inst.deliverRemote)
	if err != nil {
		return err
	}
	r := newSpreadRoutes(t)
	if !inst.anywhere {
		r.sess = nil
	}
	for id, cl := range inst.server.Clients.GetAll() {
		for filter := range cl.State.Subscriptions.GetAll() {
			r.hold(filter, id)
		}
	}
	if err := t.Replace(ctx, r.filters()); err != nil {
		t.Leave()
		return err
	}
	inst.routes = r
	if l, ok := t.(interface{ OnLapse(func()) }); ok {
		l.OnLapse(inst.fabricLapsed)
	}
	if c, ok := t.(interface{ CaughtUp() <-chan struct{} }); ok && home {
		inst.caughtUp = c.CaughtUp()
	}
	return nil
}

// catchUpWait bounds how long a publish at a home waits for the home to
// catch up (see awaitCatchUp); past it the publish is refused (0x89).
const catchUpWait = 5 * time.Second

// errCatchingUp refuses a publish at a home still catching up (MQTT 5:
// PUBACK 0x80; 3.1.1: the connection ends).
var errCatchingUp = errors.New("the tenant's home is still catching up with its log")

// awaitCatchUp holds a device's publish at a tenant's home until the home
// delivered what its fabric held for it when it joined (the Kafka
// fabric's new home reading what the home before it left uncommitted):
// delivered at once, the publish would reach a persistent session before
// older messages of the same publisher still being read for it.
func (inst *instance) awaitCatchUp() error {
	if inst.caughtUp == nil {
		return nil
	}
	select {
	case <-inst.caughtUp:
		return nil
	default:
	}
	t := time.NewTimer(catchUpWait)
	defer t.Stop()
	select {
	case <-inst.caughtUp:
		return nil
	case <-t.C:
		return errCatchingUp
	}
}

// fabricLapsed runs when this node's membership of the tenant lapsed: the
// other nodes may have swept its routes, and acknowledged messages they
// then sent nowhere. The connections whose subscriptions are those routes
// (clean sessions) are ended (0x89, server busy): they may have missed
// messages, and start afresh. So are persistent sessions' (0x89): their
// messages were queued all along, but the node their client is connected
// to, as the others know it, may have been swept with this node, and the
// session may have moved meanwhile (its client connected through another
// node; the kick that node sent here went with the sweep): they resume
// from the store, wherever their client connects. The routes still held
// (live views) are written again.
func (inst *instance) fabricLapsed() {
	r := inst.routes
	if r == nil {
		return
	}
	kicked := map[string]bool{}
	sessions := 0
	for id, cl := range inst.server.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() {
			continue
		}
		if r.sessionRouted(cl) {
			sessions++
		} else {
			kicked[id] = true
		}
		inst.end(cl, packets.ErrServerBusy)
	}
	r.mu.Lock()
	keep := map[string]bool{}
	for id, filters := range r.byClient {
		if kicked[id] {
			continue
		}
		for f := range filters {
			keep[f] = true
		}
	}
	r.mu.Unlock()
	filters := make([]string, 0, len(keep))
	for f := range keep {
		filters = append(filters, f)
	}
	ctx, cancel := routeCtx()
	defer cancel()
	if err := r.fab.Replace(ctx, filters); err != nil {
		inst.log.Warn("write the routes again after this node's membership lapsed", "err", err)
	}
	inst.log.Warn("this node's membership of the tenant lapsed: its connections were ended, clean sessions to start afresh, persistent ones to resume from the store",
		"clean", len(kicked), "persistent", sessions)
}

// fabricFigures are the tenant's routes held here and the messages waiting
// in its inbox here (if the fabric tells).
func (inst *instance) fabricFigures() (routes, lag int64) {
	r := inst.routes
	if r == nil {
		return 0, 0
	}
	r.mu.Lock()
	routes = int64(len(r.byFilter))
	r.mu.Unlock()
	if l, ok := r.fab.(interface{ Lag() int64 }); ok {
		lag = l.Lag()
	}
	return routes, lag
}

// leaveFabric stops the instance's part in the fabric.
func (inst *instance) leaveFabric() {
	if inst.routes != nil {
		inst.routes.fab.Leave()
	}
}

// watchRouteKey names a live view among the holders of a route: no client
// id holds U+0000.
func watchRouteKey(id int) string { return fmt.Sprintf("\x00watch-%d", id) }

// routeWatch writes the route of a live view's filter, if it is the
// filter's first holder here.
func (inst *instance) routeWatch(filter, key string) error {
	if inst.routes == nil || !inst.routes.hold(filter, key) {
		return nil
	}
	ctx, cancel := routeCtx()
	defer cancel()
	if err := inst.routes.fab.Add(ctx, filter); err != nil {
		inst.routes.drop(filter, key)
		return err
	}
	return nil
}

// resyncRoutes drops the routes of subscriptions mochi no longer holds (a
// clean start took a session's subscriptions away without telling the
// hooks).
func (inst *instance) resyncRoutes() {
	r := inst.routes
	if r == nil {
		return
	}
	r.mu.Lock()
	var stale [][2]string
	for id, filters := range r.byClient {
		if strings.HasPrefix(id, "\x00watch-") {
			continue // a live view's, dropped as the view ends
		}
		cl, ok := inst.server.Clients.Get(id)
		for f := range filters {
			if !ok {
				stale = append(stale, [2]string{f, id})
			} else if _, held := cl.State.Subscriptions.Get(f); !held {
				stale = append(stale, [2]string{f, id})
			}
		}
	}
	r.mu.Unlock()
	for _, s := range stale {
		inst.unroute(s[0], s[1])
	}
}

// unroute forgets a subscription, and the route with the filter's last one.
func (inst *instance) unroute(filter, clientID string) {
	if !inst.routes.drop(filter, clientID) {
		return
	}
	ctx, cancel := routeCtx()
	defer cancel()
	if err := inst.routes.fab.Remove(ctx, filter); err != nil {
		// A route left behind costs messages sent here for nobody, until
		// this node leaves.
		inst.log.Warn("remove a route", "filter", filter, "err", err)
	}
}

// deliverRemote publishes a message from another node here.
func (inst *instance) deliverRemote(m fabric.Message) error {
	if m.Kick != "" {
		inst.kicked(m.Kick, m.Epoch)
		return nil
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:   m.Topic, Payload: m.Payload, Created: time.Now().Unix(),
	}
	var mp storage.MessageProperties
	decodeProps(m.Props, &mp)
	pk.Properties = packets.Properties{
		CorrelationData: mp.CorrelationData, ContentType: mp.ContentType, ResponseTopic: mp.ResponseTopic,
		PayloadFormat: mp.PayloadFormat, PayloadFormatFlag: mp.PayloadFormatFlag, MessageExpiryInterval: mp.MessageExpiryInterval,
		User: append(mp.User, packets.UserProperty{Key: remoteProperty, Val: strings.Join(m.Groups, "\x00")}),
	}
	if m.Passed {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: passedProperty})
	}
	if m.QoS > 0 {
		pk.PacketID = 1 // mochi's validation wants one; the inline client is never acknowledged
	}
	// The copies are found and the message handed to mochi with no
	// catch-up in between (inlineMu, see routeHook.OnSessionEstablished):
	// one would skip a copy noted here and send newer ones before it.
	inst.inlineMu.Lock()
	after := func() {}
	if inst.persist != nil {
		// Copies queued by the sender for sessions connected here: their
		// deliveries map to these numbers, as for a publish stored here.
		pk, after = inst.persist.arrived(pk, m)
	}
	err := inst.injectRemote(pk)
	inst.inlineMu.Unlock()
	after()
	return err
}

// injectRemote hands a message from another node to mochi. Called with
// inlineMu held.
func (inst *instance) injectRemote(pk packets.Packet) error {
	cl, ok := inst.server.Clients.Get(mqtt.InlineClientId)
	if !ok {
		return serverUnavailable
	}
	inst.inlineErr = nil
	if err := inst.server.InjectPacket(cl, pk); err != nil {
		return err
	}
	if inst.inlineErr != nil {
		return fmt.Errorf("the message could not be stored: %w", inst.inlineErr)
	}
	return nil
}

// routeHook joins a spread tenant's broker to its others on other nodes:
// routes before SUBACK, messages across before PUBACK (shareHook serves a
// remote message only to the shared groups it is for). It comes after the
// store: a publish is sent across only once everything here let it
// through.
type routeHook struct {
	mqtt.HookBase
	inst *instance
}

var routeHookEvents = provides(mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnDisconnect, mqtt.OnClientExpired,
	mqtt.OnPublish, mqtt.OnSessionEstablished)

// sessionRouted reports whether a client's subscriptions are its session's
// own routes (a persistent session, living on any node).
func (r *spreadRoutes) sessionRouted(cl *mqtt.Client) bool {
	return r.sess != nil && !cl.Net.Inline && persistent(cl)
}

// OnSessionEstablished, for a persistent session living on any node: the
// session is attached here (messages for it come here; a connection
// another node still has for it is ended there). A stored session the
// connection discards lost its routes before the CONNACK (see discard).
func (h *routeHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	r := h.inst.routes
	if r == nil || r.sess == nil || cl.Net.Inline {
		return
	}
	ctx, cancel := routeCtx()
	defer cancel()
	if !persistent(cl) {
		if !pk.Connect.Clean {
			// It may have taken over a session still here, subscriptions
			// and all, which ends with this connection: they become this
			// node's routes, and the session's own go.
			for filter := range cl.State.Subscriptions.GetAll() {
				if r.hold(filter, cl.ID) {
					if err := r.fab.Add(ctx, filter); err != nil {
						r.drop(filter, cl.ID)
						h.inst.log.Warn("route a resumed subscription", "client_id", cl.ID, "filter", filter, "err", err)
					}
				}
			}
			// Under the claim made at connect: the routes are this
			// connection's to end, wherever its client was before.
			if err := r.sess.DropSession(ctx, cl.ID, h.inst.persist.epoch(cl.ID)); err != nil {
				h.inst.log.Warn("drop an ending session's routes", "client_id", cl.ID, "err", err)
			}
		}
		return
	}
	// From the attach on, other nodes send its messages here, with their
	// copies' numbers; none is handed to mochi (inlineMu) before the
	// catch-up below sent the older ones, queued between the read of its
	// queue at connect and the attach, and sent nowhere: they are in the
	// queue, read now.
	h.inst.inlineMu.Lock()
	err := r.sess.Attach(ctx, cl.ID, h.inst.persist.epoch(cl.ID))
	if err == nil {
		r.mu.Lock()
		r.attached[cl.ID] = true
		r.mu.Unlock()
		h.inst.persist.catchUp(cl)
	}
	h.inst.inlineMu.Unlock()
	if err != nil {
		// Messages for it would not come here: the client connects again.
		h.inst.log.Warn("attach a session here (its client is disconnected, to connect again)", "client_id", cl.ID, "err", err)
		h.inst.end(cl, packets.ErrServerUnavailable)
	}
}

// catchUp has a connected session's broker send what its queue holds that
// it does not know of (persistence.catchUp), with no message from another
// node being handed to mochi meanwhile (they hold inlineMu): one handed
// over as the catch-up reads would be skipped by it (it is being routed)
// and written after the newer copies the catch-up sends.
func (inst *instance) catchUp(cl *mqtt.Client) {
	inst.inlineMu.Lock()
	defer inst.inlineMu.Unlock()
	inst.persist.catchUp(cl)
}

// routeEndingSession readies the routes of a stored session that a
// connection resumes without keeping it (it ends with the connection),
// before its queue is read (adopt) and the CONNACK goes out: its filters
// become this node's routes, and its own routes go. From then on a
// message for it is sent here, to mochi's subscriptions, not queued; one
// queued before is in the queue adopt reads. (Left to the session's
// start, a message published right after the CONNACK would have been
// queued for a session about to end, and lost with it.)
func (inst *instance) routeEndingSession(ctx context.Context, clientID string, s store.Session) error {
	r := inst.routes
	if r == nil || r.sess == nil {
		return nil
	}
	for _, sub := range s.Subscriptions {
		if r.hold(sub.Filter, clientID) {
			if err := r.fab.Add(ctx, sub.Filter); err != nil {
				r.drop(sub.Filter, clientID)
				return err
			}
		}
	}
	return r.sess.DropSession(ctx, clientID, inst.persist.epoch(clientID)) // under the claim made at connect
}

func (h *routeHook) ID() string { return "roost-routes" }

func (h *routeHook) Provides(b byte) bool { return routeHookEvents.has(b) }

// OnSubscribed writes the route of a filter's first subscriber here before
// the SUBACK goes out; a route that cannot be written fails the
// subscription (0x80), which mochi then neither keeps nor answers with
// retained messages.
func (h *routeHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	r := h.inst.routes
	if r == nil {
		return
	}
	for i, sub := range pk.Filters {
		if i >= len(reasonCodes) || reasonCodes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		var err error
		ctx, cancel := routeCtx()
		switch {
		case r.sessionRouted(cl):
			err = r.sess.AddSession(ctx, cl.ID, sub.Filter, reasonCodes[i], sub.NoLocal)
		case r.hold(sub.Filter, cl.ID):
			if err = r.fab.Add(ctx, sub.Filter); err != nil {
				r.drop(sub.Filter, cl.ID)
			}
		}
		cancel()
		if err == nil {
			continue
		}
		h.inst.log.Warn("subscription refused: its route could not be written", "client_id", cl.ID, "filter", sub.Filter, "err", err)
		reasonCodes[i] = packets.ErrUnspecifiedError.Code
		if h.inst.server.Topics.Unsubscribe(sub.Filter, cl.ID) {
			atomic.AddInt64(&h.inst.server.Info.Subscriptions, -1)
		}
		cl.State.Subscriptions.Delete(sub.Filter)
	}
}

func (h *routeHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	r := h.inst.routes
	if r == nil {
		return
	}
	if r.sessionRouted(cl) {
		ctx, cancel := routeCtx()
		defer cancel()
		for _, sub := range pk.Filters {
			if err := r.sess.RemoveSession(ctx, cl.ID, sub.Filter); err != nil {
				h.inst.log.Warn("remove a session's route (messages for it are queued until it ends)", "client_id", cl.ID, "filter", sub.Filter, "err", err)
			}
		}
		return
	}
	for _, sub := range pk.Filters {
		h.inst.unroute(sub.Filter, cl.ID)
	}
}

// OnDisconnect removes a clean session's routes; a persistent session
// keeps them while it waits for its client.
func (h *routeHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	r := h.inst.routes
	if r == nil || cl.IsTakenOver() || cl.Net.Inline {
		return
	}
	r.mu.Lock()
	attached := r.attached[cl.ID]
	delete(r.attached, cl.ID)
	r.mu.Unlock()
	if attached {
		// A session living on any node: it keeps its routes while it
		// lasts, and nothing is sent here for it any more.
		ctx, cancel := routeCtx()
		defer cancel()
		op, do := "detach a session", r.sess.Detach
		if expire {
			op, do = "drop an ended session's routes", func(ctx context.Context, id string) error { return r.sess.DropSession(ctx, id, 0) }
		}
		if err := do(ctx, cl.ID); err != nil {
			h.inst.log.Warn(op, "client_id", cl.ID, "err", err)
		}
	}
	if expire {
		for _, f := range h.inst.routes.filtersOf(cl.ID) {
			h.inst.unroute(f, cl.ID)
		}
	}
}

func (h *routeHook) OnClientExpired(cl *mqtt.Client) {
	if h.inst.routes == nil {
		return
	}
	for _, f := range h.inst.routes.filtersOf(cl.ID) {
		h.inst.unroute(f, cl.ID)
	}
}

// OnPublish sends a publish to the tenant's other brokers with matching
// routes. A QoS 1 or 2 publish the fabric did not take is refused, never
// acknowledged; a QoS 0 one is delivered here only.
func (h *routeHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.inst.routes == nil {
		return pk, nil
	}
	if remote(pk) {
		return h.arrived(pk), nil
	}
	m := fabric.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain, Props: encodeProps(pk.Properties)}
	var local *mqtt.Subscribers
	servedHere := func(group string) bool {
		if local == nil {
			local = h.inst.server.Topics.Subscribers(pk.TopicName)
		}
		return h.inst.chooser(pk).takes(group, local, pk)
	}
	ctx, cancel := routeCtx()
	defer cancel()
	var err error
	if r := h.inst.routes; r.sess != nil {
		local := fabric.Local{Group: servedHere, Queue: func(ctx context.Context, copies []fabric.Copy) ([]uint64, error) {
			seqs, err := h.inst.persist.queueCopies(ctx, pk, copies)
			if err == nil {
				h.inst.persist.queuedHere(pk, copies, seqs)
			}
			return seqs, err
		}, Connected: func(clientID string) bool {
			// Queued here already: the store hook queued a copy for each
			// session whose subscription this broker holds. Whatever it
			// did not queue the fabric does, even for a client leaving
			// here as the message came (its subscriptions were going).
			return h.inst.persist.queuedFor(pk, clientID)
		}}
		if !cl.Net.Inline {
			local.Publisher = cl.ID
		}
		_, err = r.sess.SendQueued(ctx, m, local)
	} else {
		_, err = r.fab.Send(ctx, m, servedHere)
	}
	if err != nil {
		h.inst.log.Error("send a message to the tenant's other nodes", "topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "err", err)
		if pk.FixedHeader.Qos > 0 {
			return h.inst.refusePublish(cl, pk, errNotForwarded)
		}
	}
	return h.inst.ackStillServing(cl, pk)
}

// arrived, for a message from another node where sessions live anywhere,
// stores the turns of its shared groups that fall to persistent sessions
// here, and passes on, through the fabric, those no member here takes
// (see arrivedTurns): each to another owner of its group. A turn that can
// be neither stored nor passed on is logged, and the message is delivered
// here all the same (its other subscribers here are not made to miss it:
// a node's inbox entry is not read again).
func (h *routeHook) arrived(pk packets.Packet) packets.Packet {
	r := h.inst.routes
	if r.sess == nil || h.inst.persist == nil {
		return pk
	}
	pk, pass, err := h.inst.persist.arrivedTurns(pk)
	if err != nil {
		return pk // logged by arrivedTurns
	}
	if len(pass) == 0 {
		return pk
	}
	m := fabric.Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Props: encodeProps(pk.Properties)}
	ctx, cancel := routeCtx()
	defer cancel()
	for _, group := range pass {
		local := fabric.Local{Turn: group, Group: func(string) bool { return false }, Queue: func(ctx context.Context, copies []fabric.Copy) ([]uint64, error) {
			return h.inst.persist.queueCopies(ctx, pk, copies)
		}}
		if _, err := r.sess.SendQueued(ctx, m, local); err != nil {
			h.inst.log.Error("pass a shared group's turn on to another node; the group misses the message", "topic", pk.TopicName, "group", group, "err", err)
		}
	}
	return pk
}

// ackStillServing refuses to acknowledge a publish if this node's lease
// may have lapsed while the publish was being stored and sent (the quota
// hook checked before): the publisher sends it again, perhaps elsewhere.
func (inst *instance) ackStillServing(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 || remote(pk) || inst.env.serving() {
		return pk, nil
	}
	inst.env.refusedForLease()
	return inst.refusePublish(cl, pk, errLeaseLapsed)
}

// encode takes the remote tag off what is sent (see encodeHook).
func (h *routeHook) encode(cl *mqtt.Client, pk *packets.Packet) {
	if pk.FixedHeader.Type == packets.Publish {
		untag(pk)
	}
}
