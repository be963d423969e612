package dataout_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/roosthub/roost/dataout"
)

// TestKafkaRefusesOperatorBrokers: with the hub's own Kafka named
// (ROOST_KAFKA_BROKERS), a tenant's destination may not reach it, though
// its address is allowed (tests allow loopback): not by the same
// host:port, not by another name resolving to it (checked before saving
// and again at every connection), while another cluster on the same
// address is reached.
func TestKafkaRefusesOperatorBrokers(t *testing.T) {
	_, own := newKafka(t, "")
	_, theirs := newKafka(t, "")
	_, port, _ := net.SplitHostPort(own[0])
	g, err := dataout.NewGuard("127.0.0.1,localhost", true)
	if err != nil {
		t.Fatal(err)
	}
	g.DenyKafkaBrokers(own)
	ctx := context.Background()

	if err := g.CheckBrokers(own, false); !errors.Is(err, dataout.ErrOperatorKafka) {
		t.Errorf("CheckBrokers(the hub's own %v) = %v, want ErrOperatorKafka", own, err)
	}
	byName := []string{"localhost:" + port}
	// The hub's broker's address is the hub's: no answer names it.
	if err := g.CheckNotOperatorKafka(ctx, byName); !errors.Is(err, dataout.ErrOperatorKafka) || strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("CheckNotOperatorKafka(%v, resolving to the hub's own) = %v, want ErrOperatorKafka, naming no address", byName, err)
	}
	if err := g.CheckNotOperatorKafka(ctx, theirs); err != nil {
		t.Errorf("CheckNotOperatorKafka(another cluster %v) = %v, want nil", theirs, err)
	}
	if err := g.CheckBrokers(theirs, false); err != nil {
		t.Errorf("CheckBrokers(another cluster %v) = %v, want nil", theirs, err)
	}

	s, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// At connection time: the name saved may resolve elsewhere later (DNS
	// rebinding), and a cluster may advertise any address.
	a := s.Send(ctx, kafkaWebhook(byName, "", ""), batchOf(1))
	if a.OK() || a.Kind != dataout.ErrorRefused || !errors.Is(a.Err, dataout.ErrOperatorKafka) || strings.Contains(a.Err.Error(), "127.0.0.1") {
		t.Errorf("send to %v: ok %v, kind %q, err %v; want refused as the hub's own, naming no address", byName, a.OK(), a.Kind, a.Err)
	}
	if _, err := g.DialKafka(ctx, "tcp", "localhost:"+port); !errors.Is(err, dataout.ErrOperatorKafka) || strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("DialKafka(localhost:%s) = %v, want ErrOperatorKafka, naming no address", port, err)
	}
	if a := s.Send(ctx, kafkaWebhook(theirs, "", ""), batchOf(3)); !a.OK() {
		t.Errorf("send to another cluster: %s %v", a.Kind, a.Err)
	}
}

// TestKafkaBoundsResponseSize: a hostile broker announcing a 64 MiB
// answer is cut off at once (franz-go would allocate up to 100 MiB per
// answer by default), not read or waited for.
func TestKafkaBoundsResponseSize(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var size [4]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(size[:])))
				binary.BigEndian.PutUint32(size[:], 64<<20)
				c.Write(size[:])
				io.Copy(io.Discard, c) // hold the connection, send nothing more
			}()
		}
	}()
	g, err := dataout.NewGuard("127.0.0.1", true)
	if err != nil {
		t.Fatal(err)
	}
	s, err := dataout.NewSender(dataout.SenderConfig{Guard: g, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := s.Send(context.Background(), kafkaWebhook([]string{ln.Addr().String()}, "", ""), batchOf(1))
	if a.OK() || a.Err == nil || !strings.Contains(a.Err.Error(), "invalid large response size 67108864 > limit 1048576") {
		t.Errorf("send to a broker announcing 64 MiB: ok %v, kind %q, err %v; want refused as too large for the 1 MiB bound", a.OK(), a.Kind, a.Err)
	}
}

// TestKafkaOwnBrokersUnresolved: when the hub cannot resolve its own
// brokers, a tenant's connection is refused (no broker can be told apart
// from them) and the tenant is not told their names or the resolver's
// answer.
func TestKafkaOwnBrokersUnresolved(t *testing.T) {
	g, err := dataout.NewGuard("", true)
	if err != nil {
		t.Fatal(err)
	}
	g.DenyKafkaBrokers([]string{"hub-kafka.invalid:9092"})
	_, err = g.DialKafka(context.Background(), "tcp", "kafka.example.com:9092")
	if err == nil {
		t.Fatal("DialKafka with the hub's own brokers unresolved: connected, want refused")
	}
	for _, leak := range []string{"hub-kafka", "lookup", "no such host"} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("DialKafka with the hub's own brokers unresolved = %q, which says %q", err, leak)
		}
	}
}
