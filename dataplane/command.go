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
	// MaxPendingCommands bounds the commands of one tenant waiting for
	// their replies on one node, so that one tenant cannot hold the
	// node's memory.
	MaxPendingCommands = 100
)

// Command is a command for one device.
type Command struct {
	Name    string        `json:"name"`
	Payload []byte        `json:"payload"`
	Timeout time.Duration `json:"timeout"`
	// Queue publishes the command even if the device is offline (its
	// persistent session queues it) and does not wait for a reply.
	Queue bool `json:"queue,omitempty"`
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
}
