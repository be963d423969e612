package dataplane

import "time"

// Retained is one retained message, with a preview of its payload.
type Retained struct {
	Topic string `json:"topic"`
	// Payload is the payload's first PreviewBytes, as text when they are
	// UTF-8, else base64 (Encoding says which).
	Payload   string `json:"payload_preview"`
	Encoding  string `json:"encoding"`
	Truncated bool   `json:"truncated"`
	QoS       byte   `json:"qos"`
	Size      int    `json:"size"`
}

// PreviewBytes is how much of a retained payload a listing shows.
const PreviewBytes = 256

// RetainedMessage is one retained message with its whole payload.
type RetainedMessage struct {
	Topic   string `json:"topic"`
	Payload []byte `json:"payload"`
	QoS     byte   `json:"qos"`
}

// Session is what a tenant's broker holds for one device: each of its
// client ids' sessions, connected or waiting for their client.
type Session struct {
	Device   string          `json:"device"`
	Sessions []ClientSession `json:"sessions"`
}

// ClientSession is one client id's session.
type ClientSession struct {
	ClientID  string `json:"client_id"`
	Connected bool   `json:"connected"`
	// Persistent is true when the session outlives its connection (and
	// so has a queue).
	Persistent    bool           `json:"persistent"`
	Subscriptions []Subscription `json:"subscriptions"`
	Queue         SessionQueue   `json:"queue"`
}

// Subscription is one of a session's subscriptions with its options.
type Subscription struct {
	Filter            string `json:"filter"`
	QoS               byte   `json:"qos"`
	NoLocal           bool   `json:"no_local"`
	RetainAsPublished bool   `json:"retain_as_published"`
	RetainHandling    byte   `json:"retain_handling"`
}

// SessionQueue is what a persistent session's queue holds.
type SessionQueue struct {
	Queued int        `json:"queued"`
	Oldest *time.Time `json:"oldest_queued_at"`
	Newest *time.Time `json:"newest_queued_at"`
}
