package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/demo"
	"github.com/duplex-cdc/duplex/internal/pgstate"
	"github.com/duplex-cdc/duplex/pipeline"
	pgsink "github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

// StageFigure is one stage of the pipeline measured alone on the same
// backlog (the large shape's CRM transactions).
type StageFigure struct {
	Stage string
	// Rows are the rows handled after the first chunk (or batch), Took
	// the time from the first to the last.
	Rows int
	Took time.Duration
}

// RowsPerSec is Rows over Took.
func (s StageFigure) RowsPerSec() float64 {
	if s.Took <= 0 {
		return 0
	}
	return float64(s.Rows) / s.Took.Seconds()
}

// Names of the stages, as the table prints them.
const (
	StageCapture = "capture + decode + normalize (to memory)"
	StagePublish = "normalize + publish to JetStream (from memory)"
	StageApply   = "consume + apply (from the filled stream)"
)

// runStages measures each stage alone, in process, on the large shape's
// CRM backlog (at o.Scale): duplex first runs until both flows stream
// (slots, stream and consumers in place) and stops; the backlog is
// committed; then
//   - capture: the CRM's source streams the slot into a handler that
//     normalizes every change with the mapping and keeps the chunks in
//     memory (nothing is confirmed);
//   - publish: the producer (pipeline.RunCapture, as duplex runs it, with
//     the version recorder of the shared fields) publishes those chunks
//     to the stream DUPLEX of the embedded JetStream, until it confirms
//     the last;
//   - apply: the to-erp flow (pipeline.Applier with the PostgreSQL sink,
//     as duplex runs it) consumes the filled stream and applies it to the
//     ERP, with the ERP's capture running as in duplex (the sink waits
//     for it to record the versions of the ERP's writes to shared
//     fields).
//
// Each is timed from its first chunk (or applied batch) to its last.
func runStages(ctx context.Context, o Options) ([]StageFigure, error) {
	env, err := demo.NewEnv(ctx, o.Logger)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	r := &shapeRun{o: o, env: env, shape: ShapeLarge}
	cfg := env.Config
	crm, erp, err := env.Connect(ctx)
	if err != nil {
		return nil, err
	}
	defer crm.Close(context.WithoutCancel(ctx))
	defer erp.Close(context.WithoutCancel(ctx))

	// Slots, stream and consumers in place: a probe goes both ways.
	a, err := app.Start(ctx, app.Options{Config: cfg, DataDir: cfg.DataDir, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	probe := uuid.New()
	_, err = crm.Exec(ctx, `INSERT INTO accounts (id, name, currency) VALUES ($1, 'probe', 'EUR')`, probe)
	if err == nil {
		_, err = waitQuery(ctx, crm, fmt.Sprintf(`SELECT erp_customer_no IS NOT NULL FROM accounts WHERE id = '%s'`, probe), 5*time.Minute)
	}
	cancel()
	<-done
	a.Close()
	if err != nil {
		return nil, fmt.Errorf("stages: duplex did not stream: %w", err)
	}

	fmt.Fprintf(o.Out, "stages: the large shape's CRM backlog (scale %g), each stage alone …\n", o.Scale)
	c, err := r.large(ctx, crm)
	if err != nil {
		return nil, err
	}
	total := c.rows + largeTxAccounts // the first transaction too

	a, err = app.Start(ctx, app.Options{Config: cfg, DataDir: cfg.DataDir, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	defer a.Close()
	var out []StageFigure

	// Capture + decode + normalize.
	mem := &memHandler{mapping: env.Mapping, system: "crm", want: total, done: make(chan struct{})}
	sctx, scancel := context.WithCancel(ctx)
	serr := make(chan error, 1)
	go func() { serr <- a.Sources["crm"].Stream(sctx, mem) }()
	select {
	case <-mem.done:
	case err := <-serr:
		scancel()
		return nil, fmt.Errorf("stages: capture ended before the last change: %w", err)
	case <-ctx.Done():
	case <-time.After(30 * time.Minute):
	}
	scancel()
	<-serr
	if mem.err != nil {
		return nil, fmt.Errorf("stages: normalize: %w", mem.err)
	}
	if mem.seen < total {
		return nil, fmt.Errorf("stages: captured %d of %d changes (in 30 minutes, or before the bench was stopped)", mem.seen, total)
	}
	out = append(out, StageFigure{Stage: StageCapture, Rows: mem.seen - mem.firstRows, Took: mem.lastAt.Sub(mem.firstAt)})
	fmt.Fprintf(o.Out, "  %s: %d rows in %s\n", StageCapture, out[0].Rows, out[0].Took.Round(time.Millisecond))

	// Normalize + publish.
	rec := pgstate.NewVersionRecorder("crm", cfg.Systems["crm"].DSN, env.Mapping)
	defer rec.Close(context.WithoutCancel(ctx))
	replay := &memSource{system: "crm", chunks: mem.chunks, confirmed: make(chan struct{})}
	pctx, pcancel := context.WithCancel(ctx)
	perr := make(chan error, 1)
	t0 := time.Now()
	go func() {
		perr <- pipeline.RunCapture(pctx, a.CaptureJetStream("crm"), replay, pipeline.ProducerConfig{Mapping: env.Mapping, Logger: o.Logger,
			Stats: new(pipeline.SourceStats), Versions: rec, MaxChangeBytes: int(cfg.Stream.MaxChangeBytes)})
	}()
	select {
	case <-replay.confirmed:
	case <-ctx.Done():
		pcancel()
		<-perr
		return nil, ctx.Err()
	case <-time.After(30 * time.Minute):
		pcancel()
		<-perr
		return nil, fmt.Errorf("stages: the publish of %d chunks was not confirmed within 30 minutes", len(mem.chunks))
	}
	took := time.Since(t0)
	pcancel()
	if err := <-perr; err != nil {
		return nil, fmt.Errorf("stages: publish: %w", err)
	}
	out = append(out, StageFigure{Stage: StagePublish, Rows: total, Took: took})
	fmt.Fprintf(o.Out, "  %s: %d rows in %s\n", StagePublish, total, took.Round(time.Millisecond))

	// Consume + apply.
	flow := cfg.Flows[0]
	for _, f := range cfg.Flows {
		if f.From == "crm" {
			flow = f
		}
	}
	sink, err := pgsink.New(pgsink.Config{Flow: flow.Name, Source: flow.From, System: flow.To, DSN: cfg.Systems[flow.To].DSN, Origin: flow.Origin,
		Mapping: env.Mapping, Logger: o.Logger, Slot: cfg.Systems[flow.To].Slot})
	if err != nil {
		return nil, err
	}
	defer sink.Close(context.WithoutCancel(ctx))
	ap, err := pipeline.NewApplier(a.FlowJetStream(flow.Name), pipeline.ApplierConfig{Flow: flow.Name, Source: flow.From, Sink: sink, Batch: flow.Batch,
		MaxWaitAttempts: flow.MaxWaitAttempts, MaxWait: flow.MaxWait, Manage: a.JetStream(), LargeTxChunks: flow.LargeTxChunks,
		Logger: o.Logger, Stats: new(pipeline.FlowStats)})
	if err != nil {
		return nil, err
	}
	actx, acancel := context.WithCancel(ctx)
	// The target's own capture runs too, as in duplex: the sink waits
	// for it to record the versions of local writes to shared fields.
	target := pgstate.NewVersionRecorder(flow.To, cfg.Systems[flow.To].DSN, env.Mapping)
	defer target.Close(context.WithoutCancel(ctx))
	cerr := make(chan error, 1)
	go func() {
		cerr <- pipeline.RunCapture(actx, a.CaptureJetStream(flow.To), a.Sources[flow.To], pipeline.ProducerConfig{Mapping: env.Mapping, Logger: o.Logger,
			Stats: new(pipeline.SourceStats), Versions: target, MaxChangeBytes: int(cfg.Stream.MaxChangeBytes)})
	}()
	defer func() { <-cerr }()
	aerr := make(chan error, 1)
	go func() { aerr <- ap.Run(actx) }()
	// Timed as the shapes are: from the first marker account visible in
	// the ERP to the last (a large transaction applied in parts is not
	// reported batch by batch).
	stopped := make(chan struct{})
	go func() {
		select {
		case err := <-aerr:
			aerr <- err
			close(stopped)
		case <-actx.Done():
		}
	}()
	tr := []track{{name: StageApply, dsn: env.ERP.DSN("erp"), first: duplexAccountSeen, last: duplexAccountSeen, firstArg: c.first, lastArg: c.last, rows: c.rows, interval: markerPoll}}
	ws, werr := r.watch(actx, tr, false, stopped, 30*time.Minute)
	acancel()
	if err := <-aerr; err != nil && werr != nil {
		werr = fmt.Errorf("%w (the flow ended: %w)", werr, err)
	}
	if werr != nil {
		return nil, fmt.Errorf("stages: %w", werr)
	}
	took = ws[0].lastAt.Sub(ws[0].firstAt)
	out = append(out, StageFigure{Stage: StageApply, Rows: c.rows, Took: took})
	fmt.Fprintf(o.Out, "  %s: %d rows in %s\n", StageApply, c.rows, took.Round(time.Millisecond))
	return out, nil
}

// memHandler is the in-memory sink of the capture stage: it normalizes
// every change, keeps the chunks (for the publish stage) and closes done
// once want changes came.
type memHandler struct {
	mapping *transform.Mapping
	system  string
	want    int

	chunks          []*capture.Chunk
	seen, firstRows int
	firstAt, lastAt time.Time
	err             error
	done            chan struct{}
}

func (h *memHandler) Chunk(_ context.Context, c *capture.Chunk) error {
	if c.Tx.Snapshot || c.Tx.Applied {
		return nil
	}
	for i := range c.Changes {
		if _, err := h.mapping.Normalize(h.system, &c.Tx, c.First+i, &c.Changes[i]); err != nil && h.err == nil {
			h.err = err
		}
	}
	now := time.Now()
	if len(h.chunks) == 0 {
		h.firstAt, h.firstRows = now, len(c.Changes)
	}
	h.chunks = append(h.chunks, c)
	before := h.seen
	h.seen += len(c.Changes)
	if before < h.want && h.seen >= h.want {
		h.lastAt = now
		close(h.done)
	}
	return nil
}

func (h *memHandler) Drain(context.Context) error { return nil }

// memSource hands the captured chunks to the producer once, then waits;
// confirmed closes when the producer confirms the last chunk's end.
type memSource struct {
	system    string
	chunks    []*capture.Chunk
	once      sync.Once
	confirmed chan struct{}
}

func (s *memSource) System() string { return s.system }

func (s *memSource) Stream(ctx context.Context, h capture.Handler) error {
	for _, c := range s.chunks {
		if err := h.Chunk(ctx, c); err != nil {
			return err
		}
	}
	if err := h.Drain(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *memSource) Confirm(lsn capture.LSN) {
	if len(s.chunks) > 0 && lsn >= s.chunks[len(s.chunks)-1].Tx.EndLSN {
		s.once.Do(func() { close(s.confirmed) })
	}
}

var _ pipeline.Source = (*memSource)(nil)

func writeStages(w io.Writer, st []StageFigure) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "stage\trows\ttime\trows/s")
	for _, s := range st {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\n", s.Stage, s.Rows, s.Took.Round(time.Millisecond), s.RowsPerSec())
	}
	tw.Flush()
}
