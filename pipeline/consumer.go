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
		a.nextDelivery = 1
		return cons, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flow %s: consumer: %w", a.cfg.Flow, err)
	}
	info := cons.CachedInfo()
	if info.NumAckPending == 0 && info.Delivered.Stream == info.AckFloor.Stream {
		a.nextDelivery = info.Delivered.Consumer + 1
		return cons, nil
	}
	if cons, err = resetConsumer(ctx, a.js, a.cfg, info.AckFloor.Stream+1); err != nil {
		return nil, err
	}
	a.nextDelivery = 1
	return cons, nil
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

// errDeliveryGap: a delivery of the consumer never reached this process.
var errDeliveryGap = errors.New("delivery gap")

// fetch returns what is available now, or waits up to a second for the
// first message.
//
// Deliveries are checked to be contiguous (the consumer sequence of each
// message is the one after the last): a message the consumer delivered
// but that never arrived (lost on a route while a cluster node died, or
// dropped by a slow subscription) would otherwise be acknowledged
// unapplied by the ack-all of a later one. On a gap fetch returns an error
// wrapping errDeliveryGap and nothing of the batch; the session ends and
// the next one rewinds the consumer to its ack floor.
func (a *Applier) fetch(ctx context.Context, cons jetstream.Consumer) ([]jetstream.Msg, error) {
	collect := func(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
		if err != nil {
			return nil, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
		var out []jetstream.Msg
		for m := range b.Messages() {
			out = append(out, m)
		}
		if err := b.Error(); err != nil && !fetchEnded(err) {
			return nil, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
		for _, m := range out {
			if err := a.delivered(m); err != nil {
				return nil, err
			}
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
	if err != nil {
		return nil, err
	}
	return append(msgs, more...), nil
}

// fetchEnded tells the statuses that end a pull request normally: nothing
// (more) to deliver, the wait over, or the whole batch sent while bytes
// were left ("409 Batch Completed", which a cluster's route can deliver
// after the batch's last message). A consumer leader that changed also
// ends the request; the next one goes to the new leader.
func fetchEnded(err error) bool {
	return errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, jetstream.ErrBatchCompleted) || errors.Is(err, jetstream.ErrConsumerLeadershipChanged)
}

// delivered checks that m is the consumer's next delivery. A delivery
// sequence lower than expected is a redelivery (a new consumer leader
// that had not heard of the last deliveries) and is taken.
func (a *Applier) delivered(m jetstream.Msg) error {
	md, err := m.Metadata()
	if err != nil {
		return fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
	}
	got := md.Sequence.Consumer
	if a.nextDelivery != 0 && got > a.nextDelivery {
		want := a.nextDelivery
		a.nextDelivery = 0
		return fmt.Errorf("flow %s: fetch: deliveries %d to %d of the consumer never arrived (stream sequence %d came): %w",
			a.cfg.Flow, want, got-1, md.Sequence.Stream, errDeliveryGap)
	}
	a.nextDelivery = got + 1
	return nil
}

func seqOf(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}
