package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
)

// TestRetention_ERPDownLongerThanMaxAge: with max_age 20s the ERP is
// stopped for 60 s under load. The changes it has not applied stay in the
// stream however old (JetStream does not age them out); when it comes back
// every change arrives, and once all flows applied them, what is older than
// 20 s is removed.
func TestRetention_ERPDownLongerThanMaxAge(t *testing.T) {
	const maxAge = 20 * time.Second
	f := newFixture(t, fixtureOptions{own: true})
	f.tweak = func(c *config.Config) { c.Stream.MaxAge = maxAge }
	f.inProcess()
	ctx := context.Background()
	js := f.js()
	l := startLoad(t, f.env("CRM_DSN"), 2, 0, 20)
	l.waitRows(t, 300, time.Minute)

	if err := f.erp.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Logf("ERP stopped after %d row changes", l.rows.Load())
	time.Sleep(60 * time.Second) // the outage itself
	// The first change the ERP has not applied is still stored.
	floor := ackFloor(t, js, "to-erp")
	first := firstOf(t, js, "crm", floor+1)
	if first == nil || first.Sequence != floor+1 {
		got := "none"
		if first != nil {
			got = fmt.Sprint(first.Sequence)
		}
		t.Fatalf("after 60 s without the ERP, the first change to-erp has not applied (sequence %d) is gone: first stored is %s", floor+1, got)
	}
	if age := time.Since(first.Time); age < maxAge {
		t.Fatalf("the first unapplied change is %s old; the test needs it older than max_age %s", age, maxAge)
	}
	if err := f.erp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("ERP started after %s; %d row changes committed", time.Since(stopped).Round(time.Second), l.rows.Load())
	l.waitRows(t, l.rows.Load()+200, time.Minute)
	l.stop()
	t.Logf("workload: %d transactions, %d row changes", l.txs.Load(), l.rows.Load())
	rep := f.waitConverged(3 * time.Minute)
	t.Logf("converged:\n%s", rep)
	assertNoDeadLetters(t, f)

	// Once both flows applied everything, what is older than max_age goes.
	waitFor(t, maxAge+30*time.Second, func() (bool, string) {
		s, err := js.Stream(ctx, pipeline.StreamName)
		if err != nil {
			return false, err.Error()
		}
		st := s.CachedInfo().State
		m, err := s.GetMsg(ctx, st.FirstSeq)
		if errors.Is(err, jetstream.ErrMsgNotFound) || st.Msgs == 0 {
			return st.FirstSeq > floor+1, fmt.Sprintf("empty stream at first sequence %d", st.FirstSeq)
		}
		if err != nil {
			return false, err.Error()
		}
		old := time.Since(m.Time)
		return st.FirstSeq > floor+1 && old < maxAge+5*time.Second,
			fmt.Sprintf("first sequence %d (of %s, %s old), %d messages; want past %d and none older than max_age", st.FirstSeq, m.Subject, old.Round(time.Second), st.Msgs, floor+1)
	})
}

// ackFloor is the stream sequence up to which a flow applied.
func ackFloor(t *testing.T, js jetstream.JetStream, flow string) uint64 {
	t.Helper()
	c, err := js.Consumer(context.Background(), pipeline.StreamName, flow)
	if err != nil {
		t.Fatal(err)
	}
	return c.CachedInfo().AckFloor.Stream
}

// firstOf returns the first stored message of source at or after seq
// (nil: none).
func firstOf(t *testing.T, js jetstream.JetStream, source string, seq uint64) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(context.Background(), pipeline.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(context.Background(), seq, jetstream.WithGetMsgSubject(pipeline.SourceFilter(source)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return m
}
