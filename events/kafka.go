package events

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// KafkaConfig says where events go.
type KafkaConfig struct {
	Brokers []string
	// Topic receives every tenant's events, keyed by tenant so that one
	// tenant's events keep their order; "roost.events" if empty.
	Topic string
	// Buffer is how many events may wait for Kafka before new ones are
	// dropped (and counted); 10,000 if zero.
	Buffer int
	Log    *slog.Logger
}

// Kafka sends events to a Kafka topic in batches. Emit never blocks: when
// Kafka is slower than the events, the newest are dropped and counted.
type Kafka struct {
	w       *kafka.Writer
	log     *slog.Logger
	queue   chan Event
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
	dropped atomic.Int64
	failed  atomic.Int64
}

// NewKafka starts the sender.
func NewKafka(cfg KafkaConfig) (*Kafka, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafka: no brokers")
	}
	if cfg.Topic == "" {
		cfg.Topic = "roost.events"
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = 10_000
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	k := &Kafka{
		w: &kafka.Writer{
			Addr: kafka.TCP(cfg.Brokers...), Topic: cfg.Topic, Balancer: &kafka.Hash{},
			BatchSize: 500, BatchTimeout: 50 * time.Millisecond, RequiredAcks: kafka.RequireAll,
			AllowAutoTopicCreation: true,
		},
		log: cfg.Log, queue: make(chan Event, cfg.Buffer), done: make(chan struct{}),
	}
	k.wg.Add(1)
	go k.send()
	return k, nil
}

// Emit queues an event for Kafka.
func (k *Kafka) Emit(e Event) {
	select {
	case k.queue <- e:
	default:
		k.dropped.Add(1)
	}
}

// Dropped is the number of events dropped because Kafka could not keep up;
// Failed the number Kafka refused.
func (k *Kafka) Dropped() int64 { return k.dropped.Load() }
func (k *Kafka) Failed() int64  { return k.failed.Load() }

func (k *Kafka) send() {
	defer k.wg.Done()
	batch := make([]kafka.Message, 0, 500)
	for {
		var e Event
		select {
		case e = <-k.queue:
		case <-k.done:
			// Send what is queued, then stop.
			batch = batch[:0]
			for {
				select {
				case e := <-k.queue:
					batch = append(batch, message(e))
				default:
					k.write(batch)
					return
				}
			}
		}
		batch = append(batch[:0], message(e))
	fill:
		for len(batch) < cap(batch) {
			select {
			case e := <-k.queue:
				batch = append(batch, message(e))
			default:
				break fill
			}
		}
		k.write(batch)
	}
}

func message(e Event) kafka.Message {
	v, _ := json.Marshal(e)
	return kafka.Message{Key: []byte(e.Tenant), Value: v, Time: e.Time}
}

func (k *Kafka) write(batch []kafka.Message) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.w.WriteMessages(ctx, batch...); err != nil {
		k.failed.Add(int64(len(batch)))
		k.log.Warn("send events to kafka", "events", len(batch), "err", err)
	}
}

// Close sends what is queued and stops; a second Close does nothing.
func (k *Kafka) Close() error {
	var err error
	k.once.Do(func() {
		close(k.done)
		k.wg.Wait()
		err = k.w.Close()
	})
	return err
}
