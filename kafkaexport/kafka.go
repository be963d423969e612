// Package kafkaexport writes the messages that tenants' export rules match
// to Kafka, for applications that consume high-volume fan-in from Kafka
// directly instead of through one MQTT subscriber.
package kafkaexport

import (
	"context"
	"errors"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/roosthub/roost/broker"
)

// Exporter writes exported messages to Kafka, each to its own topic,
// keyed by device so that one device's messages keep their order. Export
// returns once Kafka has acknowledged the messages; concurrent exports are
// batched together by the writer.
type Exporter struct {
	w *kafka.Writer
}

var _ broker.Exporter = (*Exporter)(nil)

// New returns an exporter to the given brokers.
func New(brokers []string) (*Exporter, error) {
	if len(brokers) == 0 {
		return nil, errors.New("kafka: no brokers")
	}
	return &Exporter{w: &kafka.Writer{
		Addr: kafka.TCP(brokers...), Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond, BatchSize: 1000, AllowAutoTopicCreation: true, MaxAttempts: 3,
	}}, nil
}

// Export writes msgs and waits for Kafka.
func (e *Exporter) Export(ctx context.Context, msgs []broker.ExportMessage) error {
	out := make([]kafka.Message, len(msgs))
	for i, m := range msgs {
		out[i] = kafka.Message{Topic: m.Topic, Key: m.Key, Value: m.Value}
		for k, v := range m.Headers {
			out[i].Headers = append(out[i].Headers, kafka.Header{Key: k, Value: []byte(v)})
		}
	}
	return e.w.WriteMessages(ctx, out...)
}

// Close flushes and closes the writer.
func (e *Exporter) Close() error { return e.w.Close() }
