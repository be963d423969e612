package dataplane

import "time"

// Commands sent to a device through the control plane (docs/commands.md).
// The hub publishes a command on the device's command topic
//
//	$roost/commands/<device>/<name>/<id>
//
// with the MQTT 5 response topic $roost/commands/<device>/reply/<id> and
// the id as correlation data; a 3.1.1 device reads the id from the topic's
// last level and replies to the same reply topic.
const (
	// CommandPrefix starts every command topic.
	CommandPrefix = "$roost/commands/"
	// DefaultCommandTimeout is how long a command waits for its reply
	// when the caller does not say.
	DefaultCommandTimeout = 10 * time.Second
	// MaxCommandTimeout bounds how long a command may wait.
	MaxCommandTimeout = 60 * time.Second
	// DefaultCommandTTL is how long a queued command stays deliverable
	// and waits for its reply when the caller does not say;
	// MaxCommandTTL bounds it.
	DefaultCommandTTL = time.Hour
	MaxCommandTTL     = 24 * time.Hour
)

// Command is a command for one device.
type Command struct {
	Name    string        `json:"name"`
	Payload []byte        `json:"payload"`
	Timeout time.Duration `json:"timeout"`
	// Queue publishes the command even if the device is offline (its
	// persistent session queues it) and does not wait for a reply: the
	// command is recorded, with the reply when it comes.
	Queue bool `json:"queue,omitempty"`
	// TTL is how long a queued command may be delivered and replied to
	// (DefaultCommandTTL if 0, at most MaxCommandTTL); it is the MQTT 5
	// message expiry of its publish. Only for queued commands: one that
	// waits expires at its Timeout.
	TTL time.Duration `json:"ttl,omitempty"`
}

// The outcomes of a command.
const (
	CommandReplied = "replied"
	CommandTimeout = "timeout"
	CommandOffline = "offline"
	CommandQueued  = "queued"
)

// CommandResult is what became of a command: replied (Reply holds the
// reply's payload), timeout, offline (nothing was published) or queued.
type CommandResult struct {
	ID      string `json:"id"`
	Topic   string `json:"topic"`
	Outcome string `json:"outcome"`
	Reply   []byte `json:"reply,omitempty"`
	// ReplyContentType is the reply's MQTT 5 content type, if it had one.
	ReplyContentType string `json:"reply_content_type,omitempty"`
	// Took is how long the reply took to come, from the publish.
	Took time.Duration `json:"took,omitempty"`
	// ExpiresAt is when a queued command expires.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}
