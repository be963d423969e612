package main

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// The spread fleet's fault tests (spread_fault_test.go) with Kafka as the
// fabric (ROOST_FLEET_FABRIC=kafka): a kfake cluster in the test process,
// which the fleet's processes reach on a loopback port. Persistent
// sessions live at the tenant's home there (see broker/fabric/kafka).

// TestSpreadFleetKafkaKill is TestSpreadFleetKill on the Kafka fabric:
// the node killed ROOST_SPREAD_KILLS times (default 3) under QoS 1 load is
// the tenant's home, which holds the persistent subscriber's session; a
// new home resumes it from the home's consumer group, and the subscriber
// gets every acknowledged message (duplicates counted: a home redelivers
// what it did not commit).
func TestSpreadFleetKafkaKill(t *testing.T) { spreadKillTest(t, fabricKafka) }

// TestSpreadFleetKafkaPause is TestSpreadFleetRedisPause with Kafka
// stopped instead of Redis, for 6 s (ROOST_SPREAD_PAUSE), past the
// fabric's send timeout (5 s): every QoS 1 publish crosses Kafka, so
// those sent meanwhile are refused or wait, none is acknowledged unless
// Kafka took it, nobody is disconnected, every acknowledged message
// arrives, and PUBACKs come again by themselves once Kafka continues.
func TestSpreadFleetKafkaPause(t *testing.T) {
	spreadPauseTest(t, fabricKafka, pauseFabric, envDuration(t, "ROOST_SPREAD_PAUSE", 6*time.Second))
}

// TestSpreadFleetKafkaNodePause is TestSpreadFleetNodePause on the Kafka
// fabric: node 3 stopped with SIGSTOP for 6 s (ROOST_SPREAD_NODE_PAUSE),
// past its lease. Its publisher's publish read when it continues is
// refused; the persistent subscriber that connected through it (to the
// home) and moved to node 1 meanwhile is served by node 1 alone; nobody
// else loses anything.
func TestSpreadFleetKafkaNodePause(t *testing.T) {
	spreadPauseTest(t, fabricKafka, 3, envDuration(t, "ROOST_SPREAD_NODE_PAUSE", 6*time.Second))
}

// kafkaGate is a kfake cluster that can be stopped as SIGSTOP stops a
// process: connections are still accepted (the kernel would), but
// nothing is read from them or written to them, so every request waits
// unanswered until it continues. (kfake runs in the test process: it
// cannot be sent SIGSTOP itself.)
type kafkaGate struct {
	*kfake.Cluster
	mu      sync.Mutex
	stopped chan struct{} // closed when it continues; nil while it runs
}

func startKafka(t *testing.T) *kafkaGate {
	t.Helper()
	k := &kafkaGate{}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "roost.events"),
		kfake.ListenFn(func(network, addr string) (net.Listener, error) {
			ln, err := net.Listen(network, addr)
			if err != nil {
				return nil, err
			}
			return &gateListener{Listener: ln, k: k}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	k.Cluster = c
	t.Cleanup(func() {
		k.pause(false)
		c.Close()
	})
	return k
}

func (k *kafkaGate) addr() string { return k.ListenAddrs()[0] }

// pause stops (true) or continues (false) the cluster's connections.
func (k *kafkaGate) pause(stop bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case stop && k.stopped == nil:
		k.stopped = make(chan struct{})
	case !stop && k.stopped != nil:
		close(k.stopped)
		k.stopped = nil
	}
}

// wait returns once the cluster runs.
func (k *kafkaGate) wait() {
	k.mu.Lock()
	ch := k.stopped
	k.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

type gateListener struct {
	net.Listener
	k *kafkaGate
}

func (l *gateListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &gateConn{Conn: c, k: l.k}, nil
}

// gateConn hands kfake nothing it read, and writes nothing, while the
// cluster is stopped.
type gateConn struct {
	net.Conn
	k *kafkaGate
}

func (c *gateConn) Read(b []byte) (int, error) {
	c.k.wait()
	n, err := c.Conn.Read(b)
	c.k.wait()
	return n, err
}

func (c *gateConn) Write(b []byte) (int, error) {
	c.k.wait()
	return c.Conn.Write(b)
}
