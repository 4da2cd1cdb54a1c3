// Package ops is what the people who run duplex see: Prometheus metrics,
// health and readiness, the status API and the status page, served on one
// listener (--listen, default 127.0.0.1:9464).
package ops

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/transform"
)

// Metrics holds duplex's Prometheus metrics. Gauges and counters are read
// from the running App at each scrape; histograms are fed by OnBatch.
type Metrics struct {
	Registry *prometheus.Registry
	app      *app.App

	latency  *prometheus.HistogramVec
	batch    *prometheus.HistogramVec
	duration *prometheus.HistogramVec
}

// NewMetrics returns the metrics of a; call SetApp once a exists, and
// pass OnBatch to app.Options.
func NewMetrics() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "duplex_flow_latency_seconds",
		Help:    "Time from the source commit to the target commit of each applied source transaction.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900}}, []string{"flow"})
	m.batch = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "duplex_flow_batch_events",
		Help: "Events written per target transaction.", Buckets: prometheus.ExponentialBuckets(1, 4, 9)}, []string{"flow"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "duplex_flow_apply_duration_seconds",
		Help: "Time one target transaction took to apply, retries included.", Buckets: prometheus.ExponentialBuckets(0.001, 3, 10)}, []string{"flow"})
	m.Registry.MustRegister(m.latency, m.batch, m.duration, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetApp makes the metrics read a.
func (m *Metrics) SetApp(a *app.App) {
	m.app = a
	m.Registry.MustRegister(&appCollector{a: a})
}

// OnBatch records a committed batch of a flow.
func (m *Metrics) OnBatch(flow string, txs []*transform.Tx, events int, took time.Duration, committed time.Time) {
	for _, t := range txs {
		if !t.CommitTime.IsZero() && !t.Snapshot {
			m.latency.WithLabelValues(flow).Observe(committed.Sub(t.CommitTime).Seconds())
		}
	}
	m.batch.WithLabelValues(flow).Observe(float64(events))
	m.duration.WithLabelValues(flow).Observe(took.Seconds())
}

var (
	dWALBehind   = prometheus.NewDesc("duplex_source_wal_behind_bytes", "WAL between the source server's current position and the slot's confirmed position.", []string{"source"}, nil)
	dWALRetained = prometheus.NewDesc("duplex_source_wal_retained_bytes", "WAL the source server retains for the slot (from its restart position).", []string{"source"}, nil)
	dSlotActive  = prometheus.NewDesc("duplex_source_slot_active", "1 when duplex is streaming the source's slot.", []string{"source"}, nil)
	dEvents      = prometheus.NewDesc("duplex_source_events_total", "Events captured, by entity and operation.", []string{"source", "entity", "op"}, nil)
	dTxs         = prometheus.NewDesc("duplex_source_transactions_total", "Source transactions published.", []string{"source"}, nil)
	dSinceLast   = prometheus.NewDesc("duplex_source_seconds_since_last_event", "Seconds since the source's last captured event (since start when none yet).", []string{"source"}, nil)
	dInFlight    = prometheus.NewDesc("duplex_source_transactions_in_flight", "Published chunks awaiting JetStream's acknowledgement.", []string{"source"}, nil)
	dSrcDL       = prometheus.NewDesc("duplex_source_dead_letters_total", "Changes dead-lettered at capture.", []string{"source"}, nil)
	dHeld        = prometheus.NewDesc("duplex_source_held_entities", "Entities held because their source table no longer fits the mapping.", []string{"source"}, nil)
	dOwnership   = prometheus.NewDesc("duplex_source_ownership_violations_total", "Local changes of the source to what another system owns, by entity and kind: insert (a row made or re-keyed where another system owns the key; dead-lettered) or field (a field another system owns edited).", []string{"source", "entity", "kind"}, nil)
	dSrcRecon    = prometheus.NewDesc("duplex_source_reconnects_total", "Capture sessions restarted after a failure.", []string{"source"}, nil)
	dUnmapped    = prometheus.NewDesc("duplex_source_unmapped_changes_total", "Changes captured from a table no entity maps (not replicated), by table.", []string{"source", "table"}, nil)

	dFlowUp      = prometheus.NewDesc("duplex_flow_up", "1 when the flow is running (not retrying, waiting or stopped).", []string{"flow"}, nil)
	dFlowState   = prometheus.NewDesc("duplex_flow_state", "The flow's state (1 for the current one).", []string{"flow", "state"}, nil)
	dPending     = prometheus.NewDesc("duplex_flow_pending_messages", "Messages of the flow's source not yet applied (JetStream consumer pending + unacknowledged).", []string{"flow"}, nil)
	dBehind      = prometheus.NewDesc("duplex_flow_seconds_behind", "Now minus the source commit time of the last applied event, while messages are pending (0 when caught up).", []string{"flow"}, nil)
	dApplied     = prometheus.NewDesc("duplex_flow_events_applied_total", "Events applied to the target.", []string{"flow"}, nil)
	dSkipped     = prometheus.NewDesc("duplex_flow_events_skipped_total", "Events skipped as already applied (stale or repeated).", []string{"flow"}, nil)
	dConflicts   = prometheus.NewDesc("duplex_flow_conflicts_total", "Writes of shared fields that lost to a later write.", []string{"flow"}, nil)
	dFlowDL      = prometheus.NewDesc("duplex_flow_dead_letters_total", "Events dead-lettered by the flow.", []string{"flow"}, nil)
	dFlowRefused = prometheus.NewDesc("duplex_flow_refused_total", "Messages and events a flow refused as not produced by its source's capture, by reason (unsigned, unknown key, bad signature, source, mapping); each is a dead letter.", []string{"flow", "reason"}, nil)
	dFlowErrors  = prometheus.NewDesc("duplex_flow_errors_total", "Failed apply attempts, by kind (transient, waiting, permanent).", []string{"flow", "kind"}, nil)
	dDLQ         = prometheus.NewDesc("duplex_dead_letters", "Dead letters now in DUPLEX_DLQ, by flow (capture-<source> for capture).", []string{"flow"}, nil)
	dSrcFull     = prometheus.NewDesc("duplex_source_stream_full_total", "Capture sessions restarted because JetStream refused a message for lack of room.", []string{"source"}, nil)
	dStreamFull  = prometheus.NewDesc("duplex_stream_full", "1 while DUPLEX holds 90% of its ceiling (stream.max_store_bytes) in unapplied changes: publishing waits, the slots keep WAL.", nil, nil)
	dStreamBytes = prometheus.NewDesc("duplex_stream_bytes", "Bytes DUPLEX holds (unapplied changes, and applied ones kept for replay).", nil, nil)
	dStreamFirst = prometheus.NewDesc("duplex_stream_first_sequence", "DUPLEX's first stored sequence: retention removed what is below.", nil, nil)
	dBlocked     = prometheus.NewDesc("duplex_stream_retention_blocked", "1 when nothing of the source is removed from DUPLEX because a flow reading it has no consumer.", []string{"source"}, nil)
	dFlowActive  = prometheus.NewDesc("duplex_flow_active", "1 when this instance applies the flow (holds its lease), 0 when it stands by.", []string{"flow"}, nil)
	dCaptActive  = prometheus.NewDesc("duplex_source_capture_active", "1 when this instance captures the source (holds its lease), 0 when it stands by.", []string{"source"}, nil)
	dNATSUp      = prometheus.NewDesc("duplex_nats_connected", "1 when connected to NATS.", nil, nil)
	dNATSRecon   = prometheus.NewDesc("duplex_nats_reconnects_total", "Reconnections to NATS.", nil, nil)
	allFlowState = []string{"running", "retrying", "waiting", "stopped", "standby"}
)

var appDescs = []*prometheus.Desc{dWALBehind, dWALRetained, dSlotActive, dEvents, dTxs, dSinceLast, dInFlight, dSrcDL, dHeld, dOwnership, dSrcRecon, dUnmapped,
	dFlowUp, dFlowState, dPending, dBehind, dApplied, dSkipped, dConflicts, dFlowDL, dFlowErrors, dFlowRefused, dDLQ, dSrcFull, dStreamFull, dStreamBytes, dStreamFirst, dBlocked, dFlowActive, dCaptActive, dNATSUp, dNATSRecon}

type appCollector struct{ a *app.App }

func (c *appCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range appDescs {
		ch <- d
	}
}

// MetricNames returns the name of every series duplex exposes (histograms
// with their _bucket, _sum and _count series; Go and process metrics
// included), for checking dashboards and alert rules against them.
func MetricNames() []string {
	var out []string
	for _, d := range appDescs {
		// Desc{fqName: "duplex_…", help: …}
		s := d.String()
		i := strings.Index(s, `fqName: "`)
		rest := s[i+len(`fqName: "`):]
		out = append(out, rest[:strings.IndexByte(rest, '"')])
	}
	m := NewMetrics()
	mfs, err := m.Registry.Gather()
	if err == nil {
		for _, mf := range mfs {
			out = append(out, mf.GetName())
		}
	}
	for _, h := range []string{"duplex_flow_latency_seconds", "duplex_flow_batch_events", "duplex_flow_apply_duration_seconds"} {
		out = append(out, h+"_bucket", h+"_sum", h+"_count")
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *appCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	slots := a.Slots()
	for name, s := range a.SrcStat {
		sc := s.Snapshot()
		if l, ok := slots[name]; ok && l.Error == "" {
			gauge(dWALBehind, float64(l.BehindBytes), name)
			gauge(dWALRetained, float64(l.RetainedBytes), name)
			gauge(dSlotActive, b2f(l.Active), name)
		}
		for k, v := range sc.ByEntityOp {
			entity, op := k, ""
			for i := len(k) - 1; i >= 0; i-- {
				if k[i] == '/' {
					entity, op = k[:i], k[i+1:]
					break
				}
			}
			counter(dEvents, float64(v), name, entity, op)
		}
		counter(dTxs, float64(sc.Transactions), name)
		since := a.Started()
		if !sc.LastEvent.IsZero() {
			since = sc.LastEvent
		}
		gauge(dSinceLast, time.Since(since).Seconds(), name)
		gauge(dInFlight, float64(sc.InFlight), name)
		counter(dSrcDL, float64(sc.DeadLetters), name)
		for k, v := range sc.OwnershipViolations {
			entity, kind, _ := strings.Cut(k, "/")
			counter(dOwnership, float64(v), name, entity, kind)
		}
		gauge(dHeld, float64(len(sc.Held)), name)
		gauge(dCaptActive, b2f(a.CaptureLease(name).Here), name)
		counter(dSrcRecon, float64(sc.Reconnects), name)
		for t, n := range sc.Unmapped {
			counter(dUnmapped, float64(n), name, t)
		}
		counter(dSrcFull, float64(sc.StreamFull), name)
	}
	if rc := a.Retention(); !rc.LastPass.IsZero() {
		gauge(dStreamFull, b2f(rc.Full))
		gauge(dStreamBytes, float64(rc.Bytes))
		gauge(dStreamFirst, float64(rc.FirstSeq))
		for src := range a.SrcStat {
			_, blocked := rc.Blocked[src]
			gauge(dBlocked, b2f(blocked), src)
		}
	}
	for _, l := range a.Lag(ctx) {
		gauge(dFlowUp, b2f(l.State == "running"), l.Flow)
		gauge(dFlowActive, b2f(a.FlowLease(l.Flow).Here), l.Flow)
		for _, s := range allFlowState {
			gauge(dFlowState, b2f(l.State == s), l.Flow, s)
		}
		gauge(dPending, float64(l.Pending), l.Flow)
		gauge(dBehind, l.SecondsBehind, l.Flow)
		counter(dApplied, float64(l.Applied), l.Flow)
		counter(dSkipped, float64(l.Skipped), l.Flow)
		counter(dConflicts, float64(l.Conflicts), l.Flow)
		counter(dFlowDL, float64(l.DeadLetters), l.Flow)
		for _, k := range []string{"transient", "waiting", "permanent"} {
			counter(dFlowErrors, float64(l.Errors[k]), l.Flow, k)
		}
		for _, k := range []string{"unsigned", "unknown key", "bad signature", "source", "mapping"} {
			counter(dFlowRefused, float64(l.Refused[k]), l.Flow, k)
		}
	}
	if counts, err := a.DeadLetterCounts(ctx); err == nil {
		for _, f := range a.FlowNames() {
			gauge(dDLQ, float64(counts[f]), f)
		}
	}
	up, recon := a.NATSState()
	gauge(dNATSUp, b2f(up))
	counter(dNATSRecon, float64(recon))
}
