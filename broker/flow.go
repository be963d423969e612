package broker

import (
	"math"
	"slices"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// An MQTT 5 client's Receive Maximum is kept by the hub, not by mochi
// v2.7.9, whose send quota fails in two ways.
//
// It loses a place for good with each QoS 1 or 2 message it holds back.
// mochi holds one back, at a quota of 0, among the client's inflight
// messages (expiry -1, Server.publishToClient); after each packet of the
// client's it processes, with quota to spare, it writes the first held
// back and deletes it from the inflight messages (Server.processPacket).
// The client's PUBACK then finds nothing and gives no quota back
// (processPuback); a QoS 2 one's PUBREC is answered with a PUBREL 0x92
// (packet id not found), and no PUBCOMP follows. A subscriber with a
// Receive Maximum of 2 that acknowledged everything stalled after 4 of 200
// messages, at QoS 1 and 2 (TestReceiveMaximumNoStall). Meanwhile the
// message's packet id was free to be given to another while the client
// held it, a connection taking the session over was not resent it (and
// one resent at the CONNACK was written twice, TestReceiveMaximumResumed),
// the held messages went out in no order (by their creation in seconds,
// sorted unstably), and a QoS 0 message written while the one that
// announced its topic alias was held back named an alias the client had
// not learned (TestReceiveMaximumHeldAliasAnnounced).
//
// And it can deadlock the connection. That step after each packet, taken
// whenever the client has messages in flight and quota to spare, calls
// Inflight.NextImmediate, which read-locks the inflight messages and then
// again in GetAll: with a delivery waiting to write-lock them in between
// (Inflight.Set, on a publisher's goroutine), the second read lock waits
// for the writer, which waits for the first. It happened in
// TestReceiveMaximumNoStall once held back messages were moved to new
// packet ids (a fix tried first, which made the step frequent): the
// connection and its publishers stopped for good. Any MQTT 5 client that
// gives a Receive Maximum, 65,535 included, was exposed to it with each
// packet it sent while it had messages in flight.
//
// So mochi's send quota is switched off for every client (startFlow: at a
// maximum of 0 mochi holds nothing back and never takes that step), and
// each connection's flowControl keeps the Receive Maximum in the encoder,
// where every PUBLISH passes on its way out.
//
// The upstream fixes are mochi's: in processPacket, keep the message
// written among the inflight messages (with the expiry publishToClient
// gave it) instead of deleting it, and write held back messages in the
// order they came; in NextImmediate, call GetAll without read-locking
// first.

// flowControl keeps one connection to its client's Receive Maximum: at
// most max QoS 1 and 2 PUBLISH packets written and not completed (by a
// PUBACK, a PUBCOMP, or a PUBREC refusing the message) [MQTT-4.9.0-2]. A
// PUBLISH past it, or behind one held back, is not written when mochi
// writes it (see unwrite): it stays among the client's inflight messages,
// its packet id taken (and counted against max_queued, see overQueued),
// and is written from there, in the order it came, as the client
// completes others (release).
type flowControl struct {
	max int // the client's Receive Maximum

	mu   sync.Mutex
	sent map[uint16]struct{} // packet ids written and not completed
	// waiting holds the packet ids held back, in order; held is the
	// same, as a set.
	waiting []heldPublish
	held    map[uint16]bool
	// releasing is set while release writes one held back (writing, its
	// packet id): a new PUBLISH meanwhile waits behind those still held,
	// so that none overtakes them.
	releasing bool
	writing   uint16
	// unannounced holds the outbound topic aliases whose announcing
	// PUBLISH (with topic and alias) is held back, with their topic: a
	// QoS 0 PUBLISH written meanwhile under such an alias without its
	// topic would name an alias the client does not know [MQTT-3.3.2-7],
	// so it carries the topic again [MQTT-3.3.2-12] (see announce).
	unannounced map[uint16]string
}

type heldPublish struct {
	id  uint16
	dup bool
}

// startFlow takes a connecting client's Receive Maximum over from mochi,
// before mochi lists the client (so before any delivery): mochi's send
// quota is switched off, and a client with a Receive Maximum to keep is
// given a flowControl. Without one (MQTT 3.1.1, none given, or 65,535, as
// many as there are packet ids) nothing is held back. mochi sets the
// quota again from Properties.Props.ReceiveMaximum when the connection
// takes a session over (inheritClientSession): it reads 0 there.
func startFlow(cl *mqtt.Client, dc *deviceConn) {
	if rm := cl.Properties.Props.ReceiveMaximum; cl.Properties.ProtocolVersion == 5 && rm > 0 && rm < math.MaxUint16 {
		dc.flow = &flowControl{max: int(rm), sent: map[uint16]struct{}{}, held: map[uint16]bool{}}
	}
	cl.Properties.Props.ReceiveMaximum = 0
	cl.State.Inflight.ResetSendQuota(0)
}

// encode (see encodeHook; after the session's, which may have kept the
// delivery from being written already) holds back a QoS 1 or 2 PUBLISH
// past the Receive Maximum or behind one held back, and counts one
// written.
func (f *flowControl) encode(cl *mqtt.Client, pk *packets.Packet) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if pk.FixedHeader.Qos == 0 {
		if pk.Properties.TopicAliasFlag {
			f.mu.Lock()
			f.announce(pk)
			f.mu.Unlock()
		}
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	_, counted := f.sent[pk.PacketID]
	switch {
	case f.releasing && pk.PacketID == f.writing:
		f.writing = 0
	case counted:
		// Its packet id is counted already: written again under it (mochi
		// gave the id again after the message was dropped from the
		// inflight messages unacknowledged, in the moment before a
		// reservation could keep it: see persistence.expired), it takes
		// no second place.
	case f.releasing || len(f.waiting) > 0 || len(f.sent) >= f.max:
		if !f.held[pk.PacketID] {
			f.held[pk.PacketID] = true
			f.waiting = append(f.waiting, heldPublish{id: pk.PacketID, dup: pk.FixedHeader.Dup})
		}
		if pk.Properties.TopicAliasFlag && pk.TopicName != "" {
			if f.unannounced == nil {
				f.unannounced = map[uint16]string{}
			}
			f.unannounced[pk.Properties.TopicAlias] = pk.TopicName
		}
		unwrite(cl, pk)
		return
	}
	f.sent[pk.PacketID] = struct{}{}
	f.announce(pk)
}

// announce gives a PUBLISH about to be written the topic of its alias if
// the alias's announcing PUBLISH is held back. Called with f.mu held.
func (f *flowControl) announce(pk *packets.Packet) {
	if len(f.unannounced) == 0 || !pk.Properties.TopicAliasFlag {
		return
	}
	topic, ok := f.unannounced[pk.Properties.TopicAlias]
	if !ok {
		return
	}
	if pk.TopicName == "" {
		pk.TopicName = topic
	}
	delete(f.unannounced, pk.Properties.TopicAlias)
}

// dropHeld forgets a PUBLISH held back, never written, as its message is
// dropped: release will not write it. It reports whether it was held (not
// written, nor being written by release).
func (f *flowControl) dropHeld(packetID uint16) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.held[packetID] {
		return false
	}
	delete(f.held, packetID)
	f.waiting = slices.DeleteFunc(f.waiting, func(h heldPublish) bool { return h.id == packetID })
	return true
}

// completed notes the client's PUBACK or PUBCOMP (or PUBREC refusing the
// message) for a packet id, on the connection's reader before mochi
// processes it, and writes what the place it frees lets through.
func (f *flowControl) completed(cl *mqtt.Client, packetID uint16) {
	f.mu.Lock()
	_, ok := f.sent[packetID]
	delete(f.sent, packetID)
	f.mu.Unlock()
	if ok {
		f.release(cl)
	}
}

// release writes the PUBLISH packets held back, in order, from the
// client's inflight messages, while the Receive Maximum allows; one no
// longer there (acknowledged, dropped or expired meanwhile) is passed
// over. It runs on the connection's reader.
func (f *flowControl) release(cl *mqtt.Client) {
	for {
		f.mu.Lock()
		if f.releasing || len(f.waiting) == 0 || len(f.sent) >= f.max {
			f.mu.Unlock()
			return
		}
		h := f.waiting[0]
		f.waiting = f.waiting[1:]
		delete(f.held, h.id)
		pk, ok := cl.State.Inflight.Get(h.id)
		if !ok || pk.FixedHeader.Type != packets.Publish {
			f.mu.Unlock()
			continue
		}
		f.releasing, f.writing = true, h.id
		f.mu.Unlock()
		pk.FixedHeader.Dup = h.dup
		err := cl.WritePacket(pk)
		f.mu.Lock()
		f.releasing = false
		if err != nil && f.writing == 0 {
			// Counted and not written (larger than the client takes):
			// it takes no place. mochi keeps it among the inflight
			// messages, as one its write loop could not write.
			delete(f.sent, h.id)
		}
		f.writing = 0
		f.mu.Unlock()
		if err != nil && cl.Closed() {
			return
		}
	}
}
