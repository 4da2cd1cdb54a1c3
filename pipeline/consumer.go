package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ConsumerConfig is the durable consumer of a flow, starting at seq (0 for
// the start of the stream).
func consumerConfig(cfg ApplierConfig, seq uint64) jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.Flow,
		Description:   "duplex flow " + cfg.Flow,
		FilterSubject: SourceFilter(cfg.Source),
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       cfg.AckWait,
		MaxAckPending: 100_000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if seq > 0 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = seq
	}
	return cc
}

// ensureConsumer returns the flow's consumer. A consumer left with
// delivered but unacknowledged messages (the previous process died) is
// rewound to its acknowledgement floor, so they come again at once instead
// of after AckWait.
func (a *Applier) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := a.js.Consumer(ctx, StreamName, a.cfg.Flow)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		cons, err = a.js.CreateConsumer(ctx, StreamName, consumerConfig(a.cfg, 0))
		if err != nil {
			return nil, fmt.Errorf("flow %s: create consumer: %w", a.cfg.Flow, err)
		}
		return cons, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flow %s: consumer: %w", a.cfg.Flow, err)
	}
	info := cons.CachedInfo()
	if info.NumAckPending == 0 && info.Delivered.Stream == info.AckFloor.Stream {
		return cons, nil
	}
	return resetConsumer(ctx, a.js, a.cfg, info.AckFloor.Stream+1)
}

func resetConsumer(ctx context.Context, js jetstream.JetStream, cfg ApplierConfig, seq uint64) (jetstream.Consumer, error) {
	if err := js.DeleteConsumer(ctx, StreamName, cfg.Flow); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("flow %s: delete consumer: %w", cfg.Flow, err)
	}
	cons, err := js.CreateConsumer(ctx, StreamName, consumerConfig(cfg, seq))
	if err != nil {
		return nil, fmt.Errorf("flow %s: create consumer at %d: %w", cfg.Flow, seq, err)
	}
	return cons, nil
}

// ResetFlowFrom points a flow's durable consumer at stream sequence seq,
// or (seq 0) at the first message stored at or after since. The flow must
// not be running.
func ResetFlowFrom(ctx context.Context, js jetstream.JetStream, flow, source string, seq uint64, since time.Time) error {
	if seq > 0 || since.IsZero() {
		return ResetFlow(ctx, js, flow, source, max(seq, 1))
	}
	cfg := ApplierConfig{Flow: flow, Source: source, AckWait: 30 * time.Second}
	if err := js.DeleteConsumer(ctx, StreamName, flow); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("flow %s: delete consumer: %w", flow, err)
	}
	cc := consumerConfig(cfg, 0)
	cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	if _, err := js.CreateConsumer(ctx, StreamName, cc); err != nil {
		return fmt.Errorf("flow %s: create consumer at %s: %w", flow, since.Format(time.RFC3339), err)
	}
	return nil
}

// ResetFlow points a flow's durable consumer at stream sequence seq (1 =
// the first retained message). The flow must not be running.
func ResetFlow(ctx context.Context, js jetstream.JetStream, flow, source string, seq uint64) error {
	_, err := resetConsumer(ctx, js, ApplierConfig{Flow: flow, Source: source, AckWait: 30 * time.Second}, seq)
	return err
}

// ack acknowledges m and, the policy being ack-all, everything before it.
// A flow whose lease was lost acknowledges nothing more: another instance
// may already have rewound the consumer, and an ack-all from here would
// acknowledge what it has not applied. (What this one applied comes again
// and is skipped by the sink.)
func (a *Applier) ack(ctx context.Context, m jetstream.Msg) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrLeaseLost) {
		return fmt.Errorf("flow %s: ack: %w", a.cfg.Flow, cause)
	}
	if err := m.Ack(); err != nil {
		return fmt.Errorf("flow %s: ack: %w", a.cfg.Flow, err)
	}
	if md, _ := m.Metadata(); md != nil {
		a.cfg.Stats.update(func(s *FlowCounts) { s.StreamSeq = md.Sequence.Stream })
	}
	return nil
}

// fetch returns what is available now, or waits up to a second for the
// first message.
func (a *Applier) fetch(ctx context.Context, cons jetstream.Consumer) ([]jetstream.Msg, error) {
	collect := func(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
		if err != nil {
			return nil, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
		var out []jetstream.Msg
		for m := range b.Messages() {
			out = append(out, m)
		}
		if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return out, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
		return out, nil
	}
	// What is there now, at most Batch messages or 8 MiB: a backlog of
	// large messages must not flood the connection.
	msgs, err := collect(cons.Fetch(a.cfg.Batch, jetstream.FetchMaxBytes(fetchMaxBytes), jetstream.FetchMaxWait(5*time.Millisecond)))
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	msgs, err = collect(cons.Fetch(1, jetstream.FetchMaxWait(time.Second)))
	if err != nil || len(msgs) == 0 {
		return msgs, err
	}
	more, err := collect(cons.Fetch(a.cfg.Batch-1, jetstream.FetchMaxBytes(fetchMaxBytes), jetstream.FetchMaxWait(5*time.Millisecond)))
	return append(msgs, more...), err
}

func seqOf(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}
