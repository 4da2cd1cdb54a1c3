package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
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
		if _, err := a.manage().CreateConsumer(ctx, StreamName, consumerConfig(a.cfg, 0)); err != nil {
			return nil, fmt.Errorf("flow %s: create consumer: %w", a.cfg.Flow, err)
		}
		if cons, err = a.js.Consumer(ctx, StreamName, a.cfg.Flow); err != nil {
			return nil, fmt.Errorf("flow %s: consumer: %w", a.cfg.Flow, err)
		}
		a.nextDelivery = 1
		return cons, nil
	}
	if err != nil {
		return nil, fmt.Errorf("flow %s: consumer: %w", a.cfg.Flow, err)
	}
	info := cons.CachedInfo()
	if info.NumAckPending == 0 && info.Delivered.Stream == info.AckFloor.Stream {
		a.log.Info("flow consumer resumed", slog.Uint64("delivered_stream_seq", info.Delivered.Stream),
			slog.Uint64("delivered_consumer_seq", info.Delivered.Consumer), slog.Uint64("ack_floor_stream_seq", info.AckFloor.Stream))
		a.nextDelivery = info.Delivered.Consumer + 1
		return cons, nil
	}
	a.log.Info("flow consumer rewound to its ack floor", slog.Uint64("delivered_stream_seq", info.Delivered.Stream),
		slog.Uint64("ack_floor_stream_seq", info.AckFloor.Stream), slog.Int("ack_pending", info.NumAckPending))
	if _, err = resetConsumer(ctx, a.manage(), a.cfg, info.AckFloor.Stream+1); err != nil {
		return nil, err
	}
	if cons, err = a.js.Consumer(ctx, StreamName, a.cfg.Flow); err != nil {
		return nil, fmt.Errorf("flow %s: consumer: %w", a.cfg.Flow, err)
	}
	a.nextDelivery = 1
	return cons, nil
}

// manage is the JetStream context that creates and rewinds the consumer.
func (a *Applier) manage() jetstream.JetStream {
	if a.cfg.Manage != nil {
		return a.cfg.Manage
	}
	return a.js
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

// pullExpiry is how long one pull request of a flow's subscription waits
// on the server; pullIdle is how long a subscription may bring nothing
// before it is replaced. A pull request parked on a consumer leader that
// died (SIGKILL: no "409 Leadership Change" comes) is never answered, and
// the client would wait for it forever; a new subscription sends a new
// request, which reaches the new leader.
const (
	pullExpiry = 5 * time.Second
	pullIdle   = 2 * pullExpiry
)

// puller is a flow session's one long-lived pull subscription. A pull
// request per fetch (jetstream's Fetch) subscribes a new inbox each time
// and sends the request at once: in a cluster the consumer leader can
// deliver before interest in that inbox reached it over the routes, and
// the whole response is dropped while the consumer counts it delivered.
// One subscription for the session has its interest known everywhere
// long before its later requests are answered.
type puller struct {
	flow  string
	cons  jetstream.Consumer
	batch int
	it    jetstream.MessagesContext
	idle  time.Duration // waited in vain since the last message (or the subscription's start)
	next  jetstream.Msg // taken from the subscription but left for the next fetch
}

func (a *Applier) openPuller(cons jetstream.Consumer) (*puller, error) {
	p := &puller{flow: a.cfg.Flow, cons: cons, batch: a.cfg.Batch}
	if err := p.open(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *puller) open() error {
	// At most batch messages outstanding (buffered or asked for), each
	// request at most fetchMaxBytes: a backlog of large messages must not
	// flood the connection. No message is larger (see fetchMaxBytes). A
	// new request only once the last one is used up or over (threshold 1),
	// so the flow has one pull request waiting at a time, as before.
	it, err := p.cons.Messages(
		jetstream.PullMaxMessagesWithBytesLimit(p.batch, fetchMaxBytes),
		jetstream.PullThresholdMessages(1),
		jetstream.PullExpiry(pullExpiry),
	)
	if err != nil {
		return fmt.Errorf("flow %s: subscribe: %w", p.flow, err)
	}
	p.it, p.idle, p.next = it, 0, nil
	return nil
}

// close ends the subscription and waits (briefly) until the library's
// goroutines let it go. What it had buffered is dropped unacknowledged;
// the next session rewinds to the ack floor.
func (p *puller) close() {
	if p.it == nil {
		return
	}
	p.it.Drain()
	deadline := time.Now().Add(2 * time.Second)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			break
		}
		if _, err := p.it.Next(jetstream.NextMaxWait(wait)); errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, nats.ErrTimeout) {
			break
		}
	}
	p.it.Stop()
	p.it, p.next = nil, nil
}

// fetchLinger is the longest a batch waits for more messages after its
// first one; fetchPoll how long it waits for a message once that time is
// over, which takes what the subscription already buffered. A batch is
// what arrived while the last one was applied, plus at most fetchLinger:
// a fixed wait per message (it was 5 ms) let a steady trickle of one
// message every few milliseconds grow a batch for as long as Batch
// messages took to arrive, and every transaction in it waited that long.
const (
	fetchLinger = 2 * time.Millisecond
	fetchPoll   = 100 * time.Microsecond
)

// batchMaxBytes bounds the messages of one batch (their bodies and
// headers); a single larger message (up to fetchMaxBytes) is a batch of
// its own. Decoded, folded and turned into statement arguments, a batch
// takes several times its size in memory, and Go's collector lets the
// heap grow to twice what is live: 8 MiB batches of snapshot chunks
// (40,000 rows in one target transaction) made the flow's batch most of
// duplex's peak RSS during an initial snapshot (366 MB for 1,000,000
// rows).
const batchMaxBytes = 4 << 20

// fetch returns what the flow's subscription has now, at most Batch
// messages or batchMaxBytes, or waits up to a second for the first message
// (then at most fetchLinger for more).
//
// Deliveries are checked to be contiguous (the consumer sequence of each
// message is the one after the last): a message the consumer delivered
// but that never arrived (lost on a route while a cluster node died, or
// dropped with the subscription replaced) would otherwise be acknowledged
// unapplied by the ack-all of a later one. On a gap fetch returns an error
// wrapping errDeliveryGap and nothing of the batch; the session ends and
// the next one rewinds the consumer to its ack floor. An iterator that
// ends (consumer deleted, heartbeats missed, connection closed) ends the
// session the same way.
func (a *Applier) fetch(ctx context.Context, p *puller) ([]jetstream.Msg, error) {
	if p.next == nil && p.idle >= pullIdle {
		p.close()
		if err := p.open(); err != nil {
			return nil, err
		}
	}
	first := p.next
	p.next = nil
	if first == nil {
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		m, err := p.it.Next(jetstream.NextContext(wctx))
		cancel()
		p.idle += time.Since(start)
		switch {
		case err == nil:
			first = m
		case ctx.Err() != nil:
			return nil, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, context.Cause(ctx))
		case errors.Is(err, context.DeadlineExceeded):
			return nil, nil
		default:
			return nil, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
	}
	p.idle = 0
	if err := a.delivered(first); err != nil {
		return nil, err
	}
	out, size := []jetstream.Msg{first}, msgBytes(first)
	linger := time.Now().Add(fetchLinger)
	for len(out) < a.cfg.Batch {
		m, err := p.it.Next(jetstream.NextMaxWait(max(time.Until(linger), fetchPoll)))
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("flow %s: fetch: %w", a.cfg.Flow, err)
		}
		if err := a.delivered(m); err != nil {
			return nil, err
		}
		if size+msgBytes(m) > batchMaxBytes {
			p.next = m
			break
		}
		out, size = append(out, m), size+msgBytes(m)
	}
	return out, nil
}

func msgBytes(m jetstream.Msg) int {
	n := len(m.Data())
	for k, vs := range m.Headers() {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
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
