package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// The schema suite: real CRM and ERP schemas as table-driven cases. Each
// case gives the DDL of both databases, the mapping's entities, the SQL
// run before duplex starts and the SQL run while it streams, and what must
// come of it: rows in a system, a refusal at check or start, or a dead
// letter naming the reason. runSchemaCases runs every case twice, each
// time in databases of its own (the example's tables are there too,
// unmapped):
//
//   - snapshot: before and changes run, then duplex starts; the initial
//     snapshot copies what they left;
//   - streaming: before runs, duplex starts (its snapshot copies that),
//     and once the initial snapshot of every source completed, changes
//     run while it streams.
//
// Cases of a topic live in e2e/schemacases_<topic>_test.go, each file with
// one test that calls runSchemaCases with its cases.

// schemaCase is one case of the schema suite. Only name and mapping are
// required; everything else may be left empty.
type schemaCase struct {
	name string
	// crmDDL and erpDDL create the case's tables in the CRM and the ERP
	// (any SQL, sent as one simple-protocol query).
	crmDDL, erpDDL string
	// mapping is the mapping's list of entities: YAML list items as they
	// would appear under "entities:" (a header with version 1 and systems
	// [crm, erp] is added). A mapping that contains "entities:" is used as
	// it is.
	mapping string
	// config, when set, changes duplex's configuration (slot and
	// publication names, snapshot) before it is checked and started. The
	// flows are to-erp and to-crm, less those whose source publishes
	// nothing under the mapping.
	config func(*config.Config)
	// before runs before duplex starts, in both modes.
	before []stmt
	// changes runs before duplex starts in the snapshot mode, and while it
	// streams in the streaming mode.
	changes []stmt
	// want lists queries whose rows must become exactly these (polled
	// until they do, 60 s at most).
	want []want
	// refusal, when set, is a substring of the error with which duplex
	// refuses the case at check (configuration validation, then the
	// mapping against both catalogs) or at start; nothing is streamed.
	refusal string
	// deadLetter, when set, is a substring of the error of a dead letter
	// the case must produce. When empty, the case must produce none.
	deadLetter string
	// verify: duplex verify (internal/reconcile) must find both systems
	// equal through the mapping, in both directions, once want holds.
	verify bool
	// after, when set, runs last, with duplex still running (f.app), for
	// what rows cannot show (statistics, logs).
	after func(t *testing.T, f *fixture)
	// snapshotMode, when set, adapts a copy of the case for the snapshot
	// mode, where changes run before the slot exists and are never seen as
	// changes (a TRUNCATE then leaves nothing to copy and nothing to
	// dead-letter): it sets that mode's expectations.
	snapshotMode func(c *schemaCase)
}

// stmt is SQL run on one system ("crm" or "erp"), sent as one
// simple-protocol query: several statements separated by semicolons run
// in one implicit transaction unless they say BEGIN/COMMIT themselves.
type stmt struct {
	on, sql string
}

// onCRM and onERP are statements run on the CRM and the ERP.
func onCRM(sql string) stmt { return stmt{on: "crm", sql: sql} }
func onERP(sql string) stmt { return stmt{on: "erp", sql: sql} }

// want is a query run on one system and the rows it must return: each row
// is its columns' PostgreSQL text forms joined by "|", NULL as "NULL". The
// query should order its rows.
type want struct {
	on, query string
	rows      []string
}

// wantCRM and wantERP are queries of the CRM and the ERP with their
// expected rows.
func wantCRM(query string, rows ...string) want { return want{on: "crm", query: query, rows: rows} }
func wantERP(query string, rows ...string) want { return want{on: "erp", query: query, rows: rows} }

// schemaModes are the two ways each case runs.
var schemaModes = []string{"snapshot", "streaming"}

// runSchemaCases runs each case as subtests <case>/snapshot and
// <case>/streaming.
func runSchemaCases(t *testing.T, cases []schemaCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, mode := range schemaModes {
				t.Run(mode, func(t *testing.T) { runSchemaCase(t, c, mode == "streaming") })
			}
		})
	}
}

// waitSettled waits, at most d, until the consumer of every flow of cfg
// has nothing pending or unacknowledged; it never fails the test.
func waitSettled(t *testing.T, f *fixture, cfg *config.Config, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	js := f.js()
	for _, fl := range cfg.Flows {
		for ctx.Err() == nil {
			c, err := js.Consumer(ctx, "DUPLEX", fl.Name)
			if err == nil {
				if ci, err := c.Info(ctx); err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 {
					break
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func runSchemaCase(t *testing.T, c schemaCase, streaming bool) {
	ctx := context.Background()
	if !streaming && c.snapshotMode != nil {
		c.snapshotMode(&c)
	}
	mapping := c.mapping
	if !strings.Contains(mapping, "entities:") {
		mapping = "version: 1\nsystems: [crm, erp]\nentities:\n" + mapping
	}
	f := newFixture(t, fixtureOptions{mapping: mapping})
	f.tweak = func(cfg *config.Config) {
		// A flow whose source publishes nothing (a one-way mapping) is
		// left out: duplex refuses a source without tables.
		cfg.Flows = slices.DeleteFunc(cfg.Flows, func(fl *config.Flow) bool {
			return !slices.ContainsFunc(f.mapping.Entities, func(e *transform.Entity) bool { return e.Publishes(fl.From) })
		})
		if c.config != nil {
			c.config(cfg)
		}
	}
	for _, d := range []struct{ on, sql string }{{"crm", c.crmDDL}, {"erp", c.erpDDL}} {
		if d.sql == "" {
			continue
		}
		db := f.crmDB
		cl := f.crm
		if d.on == "erp" {
			db, cl = f.erpDB, f.erp
		}
		if err := cl.Exec(ctx, db, d.sql); err != nil {
			t.Fatalf("%s DDL: %v", d.on, err)
		}
	}
	conns := map[string]*pgx.Conn{"crm": f.conn("crm"), "erp": f.conn("erp")}
	run := func(what string, steps []stmt) {
		t.Helper()
		for i, s := range steps {
			conn := conns[s.on]
			if conn == nil {
				t.Fatalf("%s[%d]: system %q: want crm or erp", what, i, s.on)
			}
			if _, err := conn.Exec(ctx, s.sql); err != nil {
				t.Fatalf("%s[%d] on %s: %s: %v", what, i, s.on, s.sql, err)
			}
		}
	}
	run("before", c.before)
	if !streaming {
		run("changes", c.changes)
	}
	stage, err := startSchemaCase(f)
	if err == nil {
		t.Cleanup(func() {
			if t.Failed() {
				for _, ev := range streamEvents(t, f.js()) {
					b, _ := json.Marshal(ev.Data)
					t.Logf("event on the stream: %s %s %s key %s at %s: %s", ev.Source, ev.Entity, ev.Op, ev.Key, ev.Pos.LSN, b)
				}
			}
		})
	}
	if c.refusal != "" {
		switch {
		case err == nil:
			t.Fatalf("duplex started; want a refusal containing %q", c.refusal)
		case !strings.Contains(err.Error(), c.refusal):
			t.Fatalf("refused at %s with %q; want an error containing %q", stage, err, c.refusal)
		}
		t.Logf("refused at %s: %v", stage, err)
		return
	}
	if err != nil {
		t.Fatalf("%s: %v", stage, err)
	}
	if streaming {
		// The initial snapshot first: PostgreSQL's TRUNCATE is not
		// MVCC-safe, so one committed while the snapshot is still to read
		// its table empties the snapshot's view of it too.
		cfg := f.config()
		for _, src := range cfg.Sources() {
			if cfg.Systems[src].Snapshot == "never" {
				continue
			}
			slot := cfg.Systems[src].Slot
			waitFor(t, 60*time.Second, func() (bool, string) {
				n, err := textRows(ctx, conns[src], fmt.Sprintf(`SELECT 1 FROM duplex.snapshots WHERE slot = '%s'`, slot))
				return err == nil && len(n) == 1, fmt.Sprintf("the initial snapshot of %s (slot %s) did not complete (%v)", src, slot, err)
			})
		}
		// And the snapshot applied: the changes then come as changes
		// of copied rows, not folded with the copy into one write
		// (several source transactions fetched together are applied as
		// one, so a target trigger would see one INSERT where the case
		// means an INSERT and an UPDATE). A flow that keeps messages
		// pending by design is not waited for longer than this.
		waitSettled(t, f, cfg, 15*time.Second)
		run("changes", c.changes)
	}
	for _, w := range c.want {
		conn := conns[w.on]
		if conn == nil {
			t.Fatalf("want %q: system %q: want crm or erp", w.query, w.on)
		}
		waitFor(t, 60*time.Second, func() (bool, string) {
			got, err := textRows(ctx, conn, w.query)
			if err != nil {
				return false, err.Error()
			}
			dls := deadLetterErrors(t, f)
			return slices.Equal(got, w.rows), fmt.Sprintf("%s: %s\ngot  %q\nwant %q\ndead letters: %q", w.on, w.query, got, w.rows, dls)
		})
	}
	if c.deadLetter != "" {
		waitFor(t, 60*time.Second, func() (bool, string) {
			dls := deadLetterErrors(t, f)
			return slices.ContainsFunc(dls, func(e string) bool { return strings.Contains(e, c.deadLetter) }),
				fmt.Sprintf("no dead letter contains %q; dead letters: %q", c.deadLetter, dls)
		})
	} else if dls := deadLetterErrors(t, f); len(dls) > 0 {
		t.Errorf("unexpected dead letters: %q", dls)
	}
	if c.verify {
		if rep := f.compareFrom("crm", "erp"); !rep.Equal() {
			t.Errorf("verify crm → erp differs:\n%s", rep)
		}
		if rep := f.compareFrom("erp", "crm"); !rep.Equal() {
			t.Errorf("verify erp → crm differs:\n%s", rep)
		}
	}
	if c.after != nil {
		c.after(t, f)
	}
}

// startSchemaCase does what `duplex check` does (validate the
// configuration, check the mapping against both catalogs) and then starts
// duplex in-process until the test ends. It returns the stage that failed
// ("check" or "start") with its error.
func startSchemaCase(f *fixture) (string, error) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := f.config()
	if err := cfg.Validate(); err != nil {
		cancel()
		return "check", err
	}
	m, err := transform.Load(cfg.MappingPath())
	if err == nil {
		err = app.Preflight(ctx, cfg, m)
	}
	if err != nil {
		cancel()
		return "check", err
	}
	var w io.Writer = &testWriter{t: f.t}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := app.Start(ctx, app.Options{Config: cfg, DataDir: f.dir, Logger: log})
	if err != nil {
		cancel()
		return "start", err
	}
	f.app = a
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			f.t.Logf("duplex run: %v", err)
		}
	}()
	var once sync.Once
	f.t.Cleanup(func() {
		once.Do(func() {
			cancel()
			<-done
			a.Close()
		})
	})
	return "", nil
}

// textRows runs a query with the simple protocol and returns each row as
// its columns' text forms joined by "|", NULL as "NULL".
func textRows(ctx context.Context, conn *pgx.Conn, query string) ([]string, error) {
	rows, err := conn.Query(ctx, query, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var cols []string
		for _, v := range rows.RawValues() {
			if v == nil {
				cols = append(cols, "NULL")
			} else {
				cols = append(cols, string(v))
			}
		}
		out = append(out, strings.Join(cols, "|"))
	}
	return out, rows.Err()
}

// deadLetterErrors returns the errors of the dead letters stored so far,
// each prefixed with its flow, stage, entity and key.
func deadLetterErrors(t *testing.T, f *fixture) []string {
	t.Helper()
	ctx := context.Background()
	s, err := f.js().Stream(ctx, pipeline.DLQStream)
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs == 0 {
		return nil
	}
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		var dl pipeline.DeadLetter
		if err := json.Unmarshal(m.Data, &dl); err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		out = append(out, fmt.Sprintf("%s %s %s %s: %s", dl.Flow, dl.Stage, dl.Entity, dl.Key, dl.Error))
	}
	return out
}

// TestSchemaCases_Basics: the suite itself, on a plain table copied one
// way (inserts, an update, a delete, NULLs and exact numerics).
func TestSchemaCases_Basics(t *testing.T) {
	runSchemaCases(t, []schemaCase{{
		name:   "plain table one way",
		crmDDL: `CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2))`,
		erpDDL: `CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2))`,
		mapping: `
  - name: item
    key: id
    fields:
      - {name: id,     type: integer, owner: crm}
      - {name: name,   type: text,    owner: crm}
      - {name: amount, type: decimal, owner: crm}
    systems:
      crm: {table: public.items, key_column: id, columns: {id: {column: id}, name: {column: name}, amount: {column: amount}}}
      erp: {table: public.items, key_column: id, columns: {id: {column: id}, name: {column: name}, amount: {column: amount}}}
`,
		before: []stmt{onCRM(`INSERT INTO items VALUES (1, 'one', 1.10), (2, 'two', NULL)`)},
		changes: []stmt{
			onCRM(`INSERT INTO items VALUES (3, 'three', 3.33)`),
			onCRM(`UPDATE items SET amount = 2.02, name = NULL WHERE id = 2`),
			onCRM(`DELETE FROM items WHERE id = 1`),
		},
		want:   []want{wantERP(`SELECT id, name, amount FROM items ORDER BY id`, "2|NULL|2.02", "3|three|3.33")},
		verify: true,
	}})
}
