package kafka

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/roosthub/roost/broker/fabric"
)

// The tests run on kfake, an in-process Kafka speaking the real protocol.

// cluster is a kfake cluster whose listener can be cut: every connection
// ended and new ones closed at once, as if Kafka were unreachable.
type cluster struct {
	*kfake.Cluster
	mu    sync.Mutex
	off   bool
	conns []net.Conn
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{}
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		return &cutListener{Listener: ln, c: c}, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	c.Cluster = kc
	t.Cleanup(kc.Close)
	return c
}

type cutListener struct {
	net.Listener
	c *cluster
}

func (l *cutListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.c.mu.Lock()
		if l.c.off {
			l.c.mu.Unlock()
			conn.Close()
			continue
		}
		l.c.conns = append(l.c.conns, conn)
		l.c.mu.Unlock()
		return conn, nil
	}
}

func (c *cluster) cut(off bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off = off
	if off {
		for _, conn := range c.conns {
			conn.Close()
		}
		c.conns = nil
	}
}

// open starts a node's fabric on the cluster.
func open(t *testing.T, c *cluster, node string, mod ...func(*Config)) *Fabric {
	t.Helper()
	cfg := Config{Brokers: c.ListenAddrs(), Topic: "fabric-test", Partitions: 4, Node: node, Lease: time.Second,
		CommitEvery: 50 * time.Millisecond, SendTimeout: 2 * time.Second}
	for _, m := range mod {
		m(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// crash stops a fabric as a dead node would: no commit, no withdrawal.
func crash(f *Fabric) {
	f.mu.Lock()
	ts := make([]*Tenant, 0, len(f.tenants))
	for _, t := range f.tenants {
		ts = append(ts, t)
	}
	f.tenants = map[string]*Tenant{}
	f.mu.Unlock()
	for _, t := range ts {
		t.once.Do(func() {})
		t.stop()
		<-t.done
	}
	f.stop()
	<-f.stopped
	<-f.beats
	f.cl.Close()
}

// inbox collects what an owner is given.
type inbox struct {
	ch   chan fabric.Message
	fail func(fabric.Message) error
}

func newInbox() *inbox { return &inbox{ch: make(chan fabric.Message, 1000)} }

func (in *inbox) deliver(m fabric.Message) error {
	if in.fail != nil {
		if err := in.fail(m); err != nil {
			return err
		}
	}
	in.ch <- m
	return nil
}

func (in *inbox) expect(t *testing.T, topic, payload string) fabric.Message {
	t.Helper()
	select {
	case m := <-in.ch:
		if m.Topic != topic || string(m.Payload) != payload {
			t.Fatalf("got %s %q, want %s %q", m.Topic, m.Payload, topic, payload)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatalf("no message %s %q within 5s", topic, payload)
	}
	return fabric.Message{}
}

func (in *inbox) quiet(t *testing.T, d time.Duration, what string) {
	t.Helper()
	select {
	case m := <-in.ch:
		t.Fatalf("%s: got %s %q (groups %q), want nothing", what, m.Topic, m.Payload, m.Groups)
	case <-time.After(d):
	}
}

func join(t *testing.T, f *Fabric, tenant string, home bool, in *inbox, filters ...string) fabric.Owner {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	deliver := func(fabric.Message) error { return nil }
	if in != nil {
		deliver = in.deliver
	}
	o, err := f.Join(ctx, tenant, home, deliver)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Replace(ctx, filters); err != nil {
		t.Fatal(err)
	}
	return o
}

func send(t *testing.T, o fabric.Owner, topic, payload string, qos byte, retain bool, servedHere func(string) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := o.Send(ctx, fabric.Message{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain}, servedHere); err != nil {
		t.Fatal(err)
	}
}

func add(t *testing.T, o fabric.Owner, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.Add(ctx, filter); err != nil {
		t.Fatal(err)
	}
}

func eventually(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMessagesCross: what one node sends reaches the other's matching
// filter, in order, at every QoS and both ways; a filter added just
// before a send gets it (no route to wait for); nothing else crosses, and
// an owner is not given its own messages.
func TestMessagesCross(t *testing.T) {
	c := newCluster(t)
	fa, fb := open(t, c, "a"), open(t, c, "b")
	inA, inB := newInbox(), newInbox()
	a := join(t, fa, "acme", true, inA)
	b := join(t, fb, "acme", false, inB, "t/#")
	for qos := range byte(3) {
		for i := range 20 {
			send(t, a, fmt.Sprintf("t/%d", qos), fmt.Sprint(i), qos, false, nil)
		}
		for i := range 20 {
			if m := inB.expect(t, fmt.Sprintf("t/%d", qos), fmt.Sprint(i)); m.QoS != qos || m.Retain {
				t.Errorf("sent at QoS %d, delivered %+v", qos, m)
			}
		}
	}
	add(t, a, "back/#")
	send(t, b, "back/x", "to the home", 1, false, nil)
	inA.expect(t, "back/x", "to the home")
	for i := range 20 {
		filter := fmt.Sprintf("fresh/%d", i)
		add(t, b, filter)
		send(t, a, filter, "right after", 1, false, nil)
		inB.expect(t, filter, "right after")
	}
	send(t, a, "other/x", "for nobody", 1, false, nil)
	inB.quiet(t, 300*time.Millisecond, "a message no filter matches")
	inA.quiet(t, 0, "the home's own message")
	eventually(t, 5*time.Second, "the counters", func() bool {
		sa, sb := fa.Stats(), fb.Stats()
		return sa.Sent == 81 && sa.Received == 1 && sb.Sent == 1 && sb.Received == 80 && sa.Failed == 0 && sa.Tenants == 1 && sb.Routes == 21
	})
}

// TestRejoin: a broker that leaves and comes back on the same node (as a
// node's broker becomes the tenant's home) reads its partition again.
func TestRejoin(t *testing.T) {
	c := newCluster(t)
	fa, fb := open(t, c, "a"), open(t, c, "b")
	a := join(t, fa, "acme", false, nil)
	inB := newInbox()
	b := join(t, fb, "acme", false, inB, "t/#")
	send(t, a, "t/x", "first", 1, false, nil)
	inB.expect(t, "t/x", "first")
	b.Leave()
	b.Leave()
	send(t, a, "t/x", "while away", 1, false, nil)
	inHome := newInbox()
	join(t, fb, "acme", true, inHome, "t/#")
	send(t, a, "t/x", "back as the home", 1, false, nil)
	inHome.expect(t, "t/x", "back as the home")
	inB.quiet(t, 200*time.Millisecond, "a message for the owner that left")
	if st := fb.Stats(); st.Tenants != 1 {
		t.Errorf("stats %+v; want 1 tenant", st)
	}
}

// TestSharedOnce: a shared group with members on two nodes gets each
// message published on a third once, on one of them, both taking a part;
// a member joined just before the messages takes its part at once. A
// group served where the message was published is served nowhere else.
func TestSharedOnce(t *testing.T) {
	c := newCluster(t)
	fa, fb, fc := open(t, c, "a"), open(t, c, "b"), open(t, c, "c")
	inB, inC := newInbox(), newInbox()
	a := join(t, fa, "acme", false, nil)
	join(t, fb, "acme", false, inB, "$share/g/jobs/#")
	cc := join(t, fc, "acme", false, inC)
	add(t, cc, "$share/g/jobs/#")
	servedOnce(t, a, inB, inC, 60)
	add(t, a, "$share/g/jobs/#")
	for i := range 10 {
		send(t, a, "jobs/x", fmt.Sprint("here ", i), 1, false, func(string) bool { return true })
	}
	inB.quiet(t, 300*time.Millisecond, "a job served where it was published")
	inC.quiet(t, 0, "a job served where it was published")
}

// servedOnce sends n jobs from a and checks that each reaches one of b
// and c, both taking a part.
func servedOnce(t *testing.T, a fabric.Owner, inB, inC *inbox, n int) {
	t.Helper()
	for i := range n {
		send(t, a, "jobs/x", fmt.Sprint(i), 1, false, func(string) bool { return false })
	}
	got := map[string]string{}
	for len(got) < n {
		select {
		case m := <-inB.ch:
			if prev, dup := got[string(m.Payload)]; dup || !slices.Equal(m.Groups, []string{"$share/g/jobs/#"}) {
				t.Fatalf("b: %q groups %q (also at %q)", m.Payload, m.Groups, prev)
			}
			got[string(m.Payload)] = "b"
		case m := <-inC.ch:
			if prev, dup := got[string(m.Payload)]; dup || !slices.Equal(m.Groups, []string{"$share/g/jobs/#"}) {
				t.Fatalf("c: %q groups %q (also at %q)", m.Payload, m.Groups, prev)
			}
			got[string(m.Payload)] = "c"
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d jobs delivered", len(got), n)
		}
	}
	inB.quiet(t, 300*time.Millisecond, "a job twice")
	inC.quiet(t, 0, "a job twice")
	counts := map[string]int{}
	for _, at := range got {
		counts[at]++
	}
	if counts["b"] < n/6 || counts["c"] < n/6 {
		t.Errorf("jobs served: %v; want both members to take a part", counts)
	}
}

// TestSharedOnceJoinedLater: an owner that joins a partition its node
// already reads (another tenant's) learns the others' shared routes from
// what the node's reader kept: the group is still served once.
func TestSharedOnceJoinedLater(t *testing.T) {
	c := newCluster(t)
	one := func(cfg *Config) { cfg.Partitions = 1 }
	fa, fb, fc := open(t, c, "a", one), open(t, c, "b", one), open(t, c, "c", one)
	join(t, fc, "other", false, nil, "x/#")
	inB, inC := newInbox(), newInbox()
	a := join(t, fa, "acme", false, nil)
	join(t, fb, "acme", false, inB, "$share/g/jobs/#")
	time.Sleep(2 * fa.cfg.Lease) // b's first state is long gone from a new reader's start
	join(t, fc, "acme", false, inC, "$share/g/jobs/#")
	servedOnce(t, a, inB, inC, 60)
}

// TestSharedMemberLapses: once a node with a member died, its part goes
// to the others after Lease.
func TestSharedMemberLapses(t *testing.T) {
	c := newCluster(t)
	fa, fb, fc := open(t, c, "a"), open(t, c, "b"), open(t, c, "c")
	inC := newInbox()
	a := join(t, fa, "acme", false, nil)
	join(t, fb, "acme", false, nil, "$share/g/jobs/#")
	join(t, fc, "acme", false, inC, "$share/g/jobs/#")
	crash(fb)
	time.Sleep(fa.cfg.Lease + 300*time.Millisecond)
	for i := range 20 {
		send(t, a, "jobs/x", fmt.Sprint(i), 1, false, nil)
	}
	for i := range 20 {
		inC.expect(t, "jobs/x", fmt.Sprint(i))
	}
}

// TestRetainedEveryOwner: a retained message reaches every other owner,
// whatever their filters; a plain one with no filter reaches none.
func TestRetainedEveryOwner(t *testing.T) {
	c := newCluster(t)
	fa, fb, fc := open(t, c, "a"), open(t, c, "b"), open(t, c, "c")
	inA, inC := newInbox(), newInbox()
	join(t, fa, "acme", true, inA)
	b := join(t, fb, "acme", false, nil)
	join(t, fc, "acme", false, inC)
	send(t, b, "cfg/led", "on", 1, true, nil)
	send(t, b, "cfg/led", "not retained", 1, false, nil)
	for _, in := range []*inbox{inA, inC} {
		if m := in.expect(t, "cfg/led", "on"); !m.Retain {
			t.Errorf("delivered %+v, not retained", m)
		}
		in.quiet(t, 200*time.Millisecond, "a message for nobody")
	}
}

// TestHomeResumes: a new home reads from where the old one left: after a
// clean handover exactly what it had not delivered; after a crash (no
// commit since) at least that, in order, nothing skipped. The first home
// of a tenant commits where it started, so a message sent while no home
// reads waits for the next.
func TestHomeResumes(t *testing.T) {
	c := newCluster(t)
	fb := open(t, c, "b")
	b := join(t, fb, "acme", false, nil)

	fa := open(t, c, "a")
	inA := newInbox()
	a := join(t, fa, "acme", true, inA, "q/#")
	for i := range 5 {
		send(t, b, "q/x", fmt.Sprint(i), 1, false, nil)
	}
	for i := range 5 {
		inA.expect(t, "q/x", fmt.Sprint(i))
	}
	a.Leave()
	for i := 5; i < 10; i++ {
		send(t, b, "q/x", fmt.Sprint(i), 1, false, nil)
	}
	fc := open(t, c, "c")
	inC := newInbox()
	// From here on c's broker takes 10 and 11 and then nothing.
	var took atomic.Int64
	inC.fail = func(m fabric.Message) error {
		if took.Load() >= 7 {
			return fmt.Errorf("the broker cannot take %s", m.Payload)
		}
		took.Add(1)
		return nil
	}
	join(t, fc, "acme", true, inC, "q/#")
	for i := 5; i < 10; i++ {
		inC.expect(t, "q/x", fmt.Sprint(i))
	}
	for i := 10; i < 15; i++ {
		send(t, b, "q/x", fmt.Sprint(i), 1, false, nil)
	}
	inC.expect(t, "q/x", "10")
	inC.expect(t, "q/x", "11")
	time.Sleep(200 * time.Millisecond) // its place is committed (CommitEvery 50ms)
	crash(fc)

	fd := open(t, c, "d")
	inD := newInbox()
	join(t, fd, "acme", true, inD, "q/#")
	var n int
	select {
	case m := <-inD.ch:
		if _, err := fmt.Sscan(string(m.Payload), &n); err != nil || m.Topic != "q/x" {
			t.Fatalf("the new home got %s %q first", m.Topic, m.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the new home got nothing")
	}
	if n > 12 {
		t.Fatalf("the new home starts at %d: 12 was never delivered", n)
	}
	for i := n + 1; i < 15; i++ {
		inD.expect(t, "q/x", fmt.Sprint(i))
	}
	inD.quiet(t, 200*time.Millisecond, "more than was sent")
}

// TestHomeCaughtUp: a node, and a home with nothing left behind, are
// caught up as they join; a home taking over a backlog is caught up only
// once it delivered all of it (its broker holds what is published at it
// until then).
func TestHomeCaughtUp(t *testing.T) {
	c := newCluster(t)
	fb := open(t, c, "b")
	b := join(t, fb, "acme", false, nil)
	caught := func(o fabric.Owner) bool {
		select {
		case <-o.(*Tenant).CaughtUp():
			return true
		default:
			return false
		}
	}
	if !caught(b) {
		t.Error("a node is not caught up as it joins")
	}
	fa := open(t, c, "a")
	a := join(t, fa, "acme", true, newInbox(), "q/#")
	if !caught(a) {
		t.Error("the first home is not caught up as it joins")
	}
	a.Leave()
	for i := range 20 {
		send(t, b, "q/x", fmt.Sprint(i), 1, false, nil)
	}
	fc := open(t, c, "c")
	inC := newInbox()
	release := make(chan struct{})
	var delivered atomic.Int64
	inC.fail = func(fabric.Message) error {
		<-release // the broker takes the backlog slowly
		delivered.Add(1)
		return nil
	}
	home := join(t, fc, "acme", true, inC, "q/#")
	for i := range 20 {
		if caught(home) {
			t.Fatalf("the new home was caught up with %d of the 20 messages left behind delivered", i)
		}
		release <- struct{}{}
		inC.expect(t, "q/x", fmt.Sprint(i))
	}
	close(release)
	eventually(t, 5*time.Second, "the new home caught up", func() bool { return caught(home) })
	if n := delivered.Load(); n != 20 {
		t.Errorf("%d delivered, want 20", n)
	}
}

// TestDeliverErrorRedelivers: a home's broker that cannot take a message
// gets it again, and the next ones after it, in order; a node's drops it
// (its clean subscribers miss it) and goes on.
func TestDeliverErrorRedelivers(t *testing.T) {
	c := newCluster(t)
	fa, fb, fc := open(t, c, "a"), open(t, c, "b"), open(t, c, "c")
	a := join(t, fa, "acme", false, nil)
	var tries atomic.Int64
	failing := func(m fabric.Message) error {
		if string(m.Payload) == "1" && tries.Add(1) <= 3 {
			return fmt.Errorf("not now")
		}
		return nil
	}
	inB, inC := newInbox(), newInbox()
	inB.fail, inC.fail = failing, func(m fabric.Message) error {
		if string(m.Payload) == "1" {
			return fmt.Errorf("not now")
		}
		return nil
	}
	join(t, fb, "acme", true, inB, "x/#")
	join(t, fc, "acme", false, inC, "x/#")
	for i := range 3 {
		send(t, a, "x/y", fmt.Sprint(i), 1, false, nil)
	}
	for i := range 3 {
		inB.expect(t, "x/y", fmt.Sprint(i))
	}
	if tries.Load() != 4 {
		t.Errorf("the home tried message 1 %d times; want 4", tries.Load())
	}
	inC.expect(t, "x/y", "0")
	inC.expect(t, "x/y", "2")
	if fc.Dropped() != 1 {
		t.Errorf("node c dropped %d; want 1", fc.Dropped())
	}
}

// TestTenantsApart: what one tenant sends reaches its own owners only,
// even with every tenant on one partition.
func TestTenantsApart(t *testing.T) {
	c := newCluster(t)
	one := func(cfg *Config) { cfg.Partitions = 1 }
	fa, fb := open(t, c, "a", one), open(t, c, "b", one)
	acmeA := join(t, fa, "acme", false, nil)
	join(t, fa, "umbrella", false, nil)
	inAcme, inUmb := newInbox(), newInbox()
	join(t, fb, "acme", false, inAcme, "#", "$share/g/#")
	join(t, fb, "umbrella", false, inUmb, "#", "$share/g/#")
	send(t, acmeA, "secret/plans", "acme only", 1, true, nil)
	inAcme.expect(t, "secret/plans", "acme only")
	inUmb.quiet(t, 300*time.Millisecond, "another tenant's message")
	if _, err := fa.Join(context.Background(), "acme", true, nil); err == nil {
		t.Error("a tenant joined twice on one node")
	}
}

// TestKafkaUnreachable: with Kafka out of reach a QoS 1 send fails (and a
// shared route cannot be written), and is never delivered; once Kafka is
// back, sends go through again by themselves.
func TestKafkaUnreachable(t *testing.T) {
	c := newCluster(t)
	fa, fb := open(t, c, "a"), open(t, c, "b")
	a := join(t, fa, "acme", false, nil)
	inB := newInbox()
	join(t, fb, "acme", false, inB, "t/#")
	send(t, a, "t/x", "before", 1, false, nil)
	inB.expect(t, "t/x", "before")

	c.cut(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	start := time.Now()
	_, err := a.Send(ctx, fabric.Message{Topic: "t/x", Payload: []byte("during"), QoS: 1}, nil)
	cancel()
	if err == nil {
		t.Fatal("a QoS 1 send Kafka could not take succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the send failed after %v", d)
	}
	if fa.Stats().Failed == 0 {
		t.Error("the failure is not counted")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	if err := a.Add(ctx, "$share/g/t/#"); err == nil {
		t.Error("a shared route Kafka could not take was written")
	}
	cancel()
	c.cut(false)
	eventually(t, 15*time.Second, "a send going through again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err := a.Send(ctx, fabric.Message{Topic: "t/x", Payload: []byte("after"), QoS: 1}, nil)
		return err == nil
	})
	for {
		select {
		case m := <-inB.ch:
			if string(m.Payload) == "during" {
				t.Fatal("the failed send was delivered")
			}
			if string(m.Payload) == "after" {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the message sent after Kafka came back did not arrive")
		}
	}
}

// TestSlowOwnerPassedOver: an owner whose broker is slow does not hold
// up another tenant on the same partition; it gets everything, in order,
// once it catches up.
func TestSlowOwnerPassedOver(t *testing.T) {
	c := newCluster(t)
	small := func(cfg *Config) { cfg.Partitions, cfg.Queue = 1, 4 }
	fa, fb := open(t, c, "a", small), open(t, c, "b", small)
	slowA, fastA := join(t, fa, "slow", false, nil), join(t, fa, "fast", false, nil)
	release := make(chan struct{})
	inSlow, inFast := newInbox(), newInbox()
	inSlow.fail = func(fabric.Message) error { <-release; return nil }
	join(t, fb, "slow", true, inSlow, "#")
	join(t, fb, "fast", false, inFast, "#")
	const n = 50
	for i := range n {
		send(t, slowA, "s", fmt.Sprint(i), 1, false, nil)
		send(t, fastA, "f", fmt.Sprint(i), 0, false, nil)
	}
	for i := range n {
		inFast.expect(t, "f", fmt.Sprint(i))
	}
	close(release)
	for i := range n {
		inSlow.expect(t, "s", fmt.Sprint(i))
	}
	inSlow.quiet(t, 200*time.Millisecond, "a message twice")
	inFast.quiet(t, 0, "a message twice")
	if fb.Rewinds() == 0 {
		t.Error("the slow owner was never passed over")
	}
}

func TestRecordRoundTrip(t *testing.T) {
	in := fabric.Message{Topic: "a/b", Payload: []byte{0, 1, 2}, QoS: 2, Retain: true, Props: []byte(`{"x":1}`)}
	rec, err := decode(encodeMessage("node-a", in, []string{"$share/g/a/#", "$share/h/#"}))
	if err != nil || rec.state || rec.origin != "node-a" || rec.msg.Topic != in.Topic || string(rec.msg.Payload) != string(in.Payload) ||
		rec.msg.QoS != 2 || !rec.msg.Retain || string(rec.msg.Props) != string(in.Props) || !slices.Equal(rec.served, []string{"$share/g/a/#", "$share/h/#"}) {
		t.Fatalf("message round trip: %+v, %v", rec, err)
	}
	rec, err = decode(encodeState(fabric.Home, []string{"$share/g/#"}))
	if err != nil || !rec.state || rec.origin != fabric.Home || !slices.Equal(rec.filters, []string{"$share/g/#"}) {
		t.Fatalf("state round trip: %+v, %v", rec, err)
	}
	for _, bad := range []string{"", "\x02\x01", "\x01\x03\x00", "\x01\x01\x01a", "\x01\x02\x00\x05", "\x01\x01\x00\x00\x09abc"} {
		if _, err := decode([]byte(bad)); err == nil {
			t.Errorf("decode(%q): no error", bad)
		}
	}
}
