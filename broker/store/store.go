// Package store defines what the data plane keeps for persistent sessions
// (session records, per-session message queues, retained messages) and how
// it is encoded; its subpackages are the back-ends that keep it: memory,
// pebble (embedded), redis and hbase. Every key a back-end writes carries the
// tenant, so two tenants' sessions with the same client id never meet.
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Message is a publish kept for later: in a session's queue, or retained.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	Created time.Time
	// Expires is when the message stops being worth delivering; zero is
	// never.
	Expires time.Time
	// Properties are the MQTT 5 publish properties as the broker encodes
	// them; opaque to the store.
	Properties []byte
}

// Queued is a message in a session's queue with its sequence number.
// Sequence numbers of one queue increase strictly and are never reused.
type Queued struct {
	Seq uint64
	Message
	// PacketID is the packet id a QoS 2 message was sent with, recorded by
	// Mark before it was sent; 0 if it never was. A resend after a restart
	// must use the same id, so that the client recognises it.
	PacketID uint16
	// Released is true once the client acknowledged the message with
	// PUBREC: what is left is to release its packet id with PUBREL.
	Released bool
}

// Receipt names a QoS 2 PUBLISH taken from a persistent publisher. Until
// its PUBREL, a PUBLISH with the same packet id from that client is the same
// message, also after a restart, and is not delivered again.
type Receipt struct {
	ClientID string
	PacketID uint16
}

// Item is one message for one session's queue.
type Item struct {
	ClientID string
	Message  Message
}

// QueueInfo describes a session's queue.
type QueueInfo struct {
	Len    int
	MinSeq uint64 // 0 when empty
	MaxSeq uint64 // the last sequence number ever given, even if acknowledged since
	Oldest time.Time
}

// Subscription is one of a session's subscriptions with its options.
type Subscription struct {
	Filter            string `json:"filter"`
	QoS               byte   `json:"qos"`
	NoLocal           bool   `json:"no_local,omitempty"`
	RetainAsPublished bool   `json:"retain_as_published,omitempty"`
	RetainHandling    byte   `json:"retain_handling,omitempty"`
	Identifier        int    `json:"identifier,omitempty"`
}

// Session is what a persistent session needs to be restored.
type Session struct {
	ClientID        string `json:"client_id"`
	Device          string `json:"device"`
	ProtocolVersion byte   `json:"protocol_version"`
	// Expiry is how long the session outlives its connection, in seconds.
	Expiry uint32 `json:"expiry"`
	// DisconnectedAt is zero while the client is connected.
	DisconnectedAt time.Time      `json:"disconnected_at,omitzero"`
	Subscriptions  []Subscription `json:"subscriptions"`
	// PendingRelease holds the packet ids of the client's QoS 2 publishes
	// that were stored (with their Receipt) but not yet released by PUBREL,
	// so that a PUBLISH resent after a restart is not delivered twice.
	// Sessions fills it in; SaveSession ignores it.
	PendingRelease []uint16 `json:"-"`
	// Will is the session's Will while it waits out its delay after the
	// client went away; nil if there is none.
	Will *Will `json:"will,omitempty"`
	// Epoch is the session's epoch as Sessions read it (see Claim):
	// SaveSession writes the record only while it is still the session's.
	Epoch uint64 `json:"-"`
}

// Will is a Will message waiting to be published at Due, unless the
// session's client connects again first.
type Will struct {
	Topic   string `json:"topic"`
	Payload []byte `json:"payload"`
	QoS     byte   `json:"qos"`
	Retain  bool   `json:"retain,omitempty"`
	// Properties are its user properties as the broker encodes them;
	// opaque to the store.
	Properties []byte    `json:"properties,omitempty"`
	Due        time.Time `json:"due"`
}

// ErrClosed is returned by a back-end after Close.
var ErrClosed = errors.New("session store closed")

// ErrFenced refuses a write to a session made under an epoch that is no
// longer the session's: another owner claimed it since (a connection on
// another node took it over, or this node was taken for dead). The writer
// has lost the session and must not touch it again.
//
// Every session has an epoch, 0 until its first claim. Claim raises it and
// returns the new value; the writes that belong to the session's owner
// (its record, its deletion, acknowledging and marking its queued
// messages, releasing its receipts) carry the epoch their writer claimed
// and are refused, atomically with the check where the back-end allows it,
// once it is stale. Appending to a session's queue is not fenced: any node
// may queue a message for any session, and a message queued twice is
// delivered twice (at least once), never lost.
var ErrFenced = errors.New("session claimed by another owner")

// messageVersion tags the binary encoding of a Message.
const messageVersion = 1

// MarshalBinary encodes a message compactly: the payload is stored as is.
func (m Message) MarshalBinary() ([]byte, error) {
	return m.AppendBinary(make([]byte, 0, 1+1+1+8+8+2+len(m.Topic)+4+len(m.Properties)+len(m.Payload)))
}

// AppendBinary appends what MarshalBinary returns to b, so that a store
// writing many messages encodes them into one buffer of its own.
func (m Message) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Topic) > 0xffff {
		return nil, fmt.Errorf("topic of %d bytes", len(m.Topic))
	}
	b = append(b, messageVersion, m.QoS, boolByte(m.Retain))
	b = binary.BigEndian.AppendUint64(b, uint64(unixNano(m.Created)))
	b = binary.BigEndian.AppendUint64(b, uint64(unixNano(m.Expires)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Topic)))
	b = append(b, m.Topic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Properties)))
	b = append(b, m.Properties...)
	return append(b, m.Payload...), nil
}

// UnmarshalBinary decodes what MarshalBinary encoded.
func (m *Message) UnmarshalBinary(b []byte) error {
	const fixed = 1 + 1 + 1 + 8 + 8 + 2
	if len(b) < fixed || b[0] != messageVersion {
		return errors.New("not an encoded message")
	}
	m.QoS, m.Retain = b[1], b[2] == 1
	m.Created = fromUnixNano(int64(binary.BigEndian.Uint64(b[3:])))
	m.Expires = fromUnixNano(int64(binary.BigEndian.Uint64(b[11:])))
	n := int(binary.BigEndian.Uint16(b[19:]))
	b = b[fixed:]
	if len(b) < n+4 {
		return errors.New("truncated message")
	}
	m.Topic, b = string(b[:n]), b[n:]
	p := int(binary.BigEndian.Uint32(b))
	b = b[4:]
	if len(b) < p {
		return errors.New("truncated message")
	}
	m.Properties = clone(b[:p])
	m.Payload = clone(b[p:])
	return nil
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// Purgeable is the part of a back-end a tenant's purge uses.
type Purgeable interface {
	Sessions(ctx context.Context, tenant string) ([]Session, error)
	Claim(ctx context.Context, tenant, clientID string) (uint64, error)
	DeleteSession(ctx context.Context, tenant, clientID string, epoch uint64) error
	Retained(ctx context.Context, tenant string) ([]Message, error)
	SetRetained(ctx context.Context, tenant string, m Message) error
}

// PurgeTenant deletes everything a back-end keeps for a tenant: its
// sessions with their queues and receipts, and its retained messages. It
// works through the operations every back-end has, so it needs nothing
// new from them; running it twice (two data-plane nodes) does no harm. Each
// session is claimed before it is deleted: the purge wins over whoever
// owned it, whose later writes are fenced.
func PurgeTenant(ctx context.Context, s Purgeable, tenant string) (sessions, retained int, err error) {
	ss, err := s.Sessions(ctx, tenant)
	if err != nil {
		return 0, 0, err
	}
	for _, sess := range ss {
		epoch, err := s.Claim(ctx, tenant, sess.ClientID)
		if err != nil {
			return sessions, 0, err
		}
		if err := s.DeleteSession(ctx, tenant, sess.ClientID, epoch); err != nil {
			return sessions, 0, err
		}
		sessions++
	}
	rs, err := s.Retained(ctx, tenant)
	if err != nil {
		return sessions, 0, err
	}
	for _, m := range rs {
		if err := s.SetRetained(ctx, tenant, Message{Topic: m.Topic}); err != nil {
			return sessions, retained, err
		}
		retained++
	}
	return sessions, retained, nil
}
