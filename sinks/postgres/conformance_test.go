package postgres_test

// Conformance suite of the PostgreSQL sink against a real PostgreSQL: what
// pipeline.Sink and the package documentation promise, checked on the
// order-to-cash ERP schema.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/sinks/postgres"
	"github.com/duplex-cdc/duplex/transform"
)

const flow = "to-erp" // the flow newTarget configures

// ---- helpers ---------------------------------------------------------------

func loadMapping(t testing.TB) *transform.Mapping {
	t.Helper()
	mb, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m, err := transform.Parse(mb)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// dbOf is the database a connection made by newTarget is in; the sink's
// origin is "duplex_"+dbOf(conn).
func dbOf(conn *pgx.Conn) string { return conn.Config().Database }

// sinkFor returns another sink on the same flow, database and origin as the
// one newTarget made for conn.
func sinkFor(t testing.TB, conn *pgx.Conn) *postgres.Sink {
	t.Helper()
	db := dbOf(conn)
	s, err := postgres.New(postgres.Config{Flow: flow, Source: "crm", System: "erp", DSN: cluster.DSN(db), Origin: "duplex_" + db, Mapping: loadMapping(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func mustApply(t testing.TB, s *postgres.Sink, txs ...*transform.Tx) pipeline.ApplyResult {
	t.Helper()
	res, err := s.Apply(context.Background(), txs)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return res
}

func countEvents(txs []*transform.Tx) int {
	n := 0
	for _, t := range txs {
		n += len(t.Events)
	}
	return n
}

// applyError checks that err is an *pipeline.ApplyError of kind want.
func applyError(t *testing.T, err error, want pipeline.Kind) *pipeline.ApplyError {
	t.Helper()
	if err == nil {
		t.Errorf("apply succeeded, want a %s error", want)
		return nil
	}
	var ae *pipeline.ApplyError
	if !errors.As(err, &ae) {
		t.Errorf("error %v (%T) is not a *pipeline.ApplyError", err, err)
		return nil
	}
	if ae.Kind != want {
		t.Errorf("error kind %s, want %s: %v", ae.Kind, want, err)
	}
	return ae
}

// snapshot returns every row of the three ERP tables, by kind and canonical
// key, as "xmin row-as-json".
func snapshot(t testing.TB, conn *pgx.Conn) map[string]string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
SELECT 'customer:'||crm_account_id, xmin::text||' '||row_to_json(c)::text FROM customers c
UNION ALL SELECT 'order:'||crm_order_id, xmin::text||' '||row_to_json(o)::text FROM sales_orders o
UNION ALL SELECT 'line:'||crm_line_id, xmin::text||' '||row_to_json(l)::text FROM sales_order_lines l`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func diffSnapshots(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(before)) {
		if a, ok := after[k]; !ok {
			t.Errorf("%s: row %s disappeared", what, k)
		} else if a != before[k] {
			t.Errorf("%s: row %s changed:\n before %s\n after  %s", what, k, before[k], a)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if _, ok := before[k]; !ok {
			t.Errorf("%s: row %s appeared: %s", what, k, after[k])
		}
	}
}

func xmin(t testing.TB, conn *pgx.Conn, table, keyCol string, key uuid.UUID) string {
	t.Helper()
	var x string
	q := fmt.Sprintf("SELECT xmin::text FROM %s WHERE %s = $1", pgx.Identifier{table}.Sanitize(), pgx.Identifier{keyCol}.Sanitize())
	if err := conn.QueryRow(context.Background(), q, key).Scan(&x); err != nil {
		t.Fatalf("xmin of %s %s: %v", table, key, err)
	}
	return x
}

type customerRow struct {
	Exists       bool
	CustomerNo   int64
	Name         string
	Email        *string
	Currency     string
	CreditMinor  *int64
	OpenBalance  string
	PaymentTerms string
}

func getCustomer(t testing.TB, conn *pgx.Conn, id uuid.UUID) customerRow {
	t.Helper()
	var r customerRow
	err := conn.QueryRow(context.Background(), `SELECT customer_no, name, email, currency, credit_limit_minor, open_balance::text, payment_terms
FROM customers WHERE crm_account_id = $1`, id).Scan(&r.CustomerNo, &r.Name, &r.Email, &r.Currency, &r.CreditMinor, &r.OpenBalance, &r.PaymentTerms)
	if errors.Is(err, pgx.ErrNoRows) {
		return r
	}
	if err != nil {
		t.Fatalf("customer %s: %v", id, err)
	}
	r.Exists = true
	return r
}

func str(p *string) string {
	if p == nil {
		return "<NULL>"
	}
	return *p
}

func appliedPosition(t testing.TB, conn *pgx.Conn) transform.Position {
	t.Helper()
	p, err := postgres.Position(context.Background(), conn, flow)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// originProgress is pg_replication_origin_progress(origin, false) as text,
// "" for NULL.
func originProgress(t testing.TB, conn *pgx.Conn) string {
	t.Helper()
	var p *string
	if err := conn.QueryRow(context.Background(), `SELECT pg_replication_origin_progress($1, false)::text`, "duplex_"+dbOf(conn)).Scan(&p); err != nil {
		t.Fatal(err)
	}
	if p == nil {
		return ""
	}
	return *p
}

func exec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func customerWith(id uuid.UUID, name string, set map[string]any) transform.Event {
	ev := customer(id, name)
	for k, v := range set {
		if v == "<omit>" {
			delete(ev.Data, k)
			continue
		}
		ev.Data[k] = v
	}
	return ev
}

func deleteOf(entity string, id uuid.UUID) transform.Event {
	return transform.Event{Entity: entity, Op: transform.OpDelete, Key: id.String()}
}

func orderLine(id, ord uuid.UUID, sku, qty, price string) transform.Event {
	return transform.Event{Entity: "order_line", Op: transform.OpUpsert, Key: id.String(), Data: map[string]any{
		"line_id": id.String(), "order_id": ord.String(), "sku": sku, "quantity": qty, "unit_price": price}}
}

// ---- 1. at-least-once redelivery -------------------------------------------

func TestSink_RedeliveryIsHarmless(t *testing.T) {
	a, b, o, l := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	gone := uuid.New()
	cases := []struct {
		name  string
		batch func() []*transform.Tx
	}{
		{"one tx", func() []*transform.Tx { return []*transform.Tx{tx(0x100, customer(a, "A"))} }},
		{"parents and children over several txs", func() []*transform.Tx {
			return []*transform.Tx{
				tx(0x100, customer(a, "A"), customer(b, "B")),
				tx(0x200, order(o, a)),
				tx(0x300, orderLine(l, o, "SKU-1", "2", "9.99"), customerWith(b, "B2", map[string]any{"email": "b@example.com"})),
			}
		}},
		{"with deletes", func() []*transform.Tx {
			return []*transform.Tx{
				tx(0x100, customer(a, "A"), customer(gone, "G")),
				tx(0x200, deleteOf("customer", gone)),
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, conn, _ := newTarget(t)
			batch := c.batch()
			n := countEvents(batch)
			if res := mustApply(t, s, batch...); res.Applied != n || res.Skipped != 0 {
				t.Errorf("first apply: %+v, want applied %d", res, n)
			}
			before := snapshot(t, conn)
			pos := appliedPosition(t, conn)
			var posXmin string
			if err := conn.QueryRow(context.Background(), `SELECT xmin::text FROM duplex.applied WHERE flow = $1`, flow).Scan(&posXmin); err != nil {
				t.Fatal(err)
			}
			res, err := s.Apply(context.Background(), batch)
			if err != nil {
				t.Fatalf("redelivery: %v", err)
			}
			if res.Skipped != n || res.Applied != 0 {
				t.Errorf("redelivery: %+v, want skipped %d, applied 0", res, n)
			}
			diffSnapshots(t, "after redelivery", before, snapshot(t, conn))
			if p := appliedPosition(t, conn); p.LSN != pos.LSN {
				t.Errorf("applied position moved from %s to %s", pos.LSN, p.LSN)
			}
			var x string
			if err := conn.QueryRow(context.Background(), `SELECT xmin::text FROM duplex.applied WHERE flow = $1`, flow).Scan(&x); err != nil || x != posXmin {
				t.Errorf("duplex.applied rewritten by a redelivery: xmin %s -> %s (%v)", posXmin, x, err)
			}
		})
	}
}

// ---- 2. replay of older transactions ---------------------------------------

func TestSink_StaleTransactionsAreSkipped(t *testing.T) {
	a, b := uuid.New(), uuid.New()
	cases := []struct {
		name             string
		batch            []*transform.Tx
		applied, skipped int
		nameA            string
		bPresent         bool
		wantLSN          capture.LSN
	}{
		{"older tx alone", []*transform.Tx{tx(0x100, customer(a, "old"))}, 0, 1, "new", false, 0x200},
		{"same commit LSN", []*transform.Tx{tx(0x200, customer(a, "same lsn, other values"))}, 0, 1, "new", false, 0x200},
		{"old and new mixed", []*transform.Tx{tx(0x100, customer(a, "old")), tx(0x180, customer(a, "older"), customer(b, "B-old")), tx(0x300, customer(b, "B"))}, 1, 3, "new", true, 0x300},
		{"old tx after a new one", []*transform.Tx{tx(0x300, customer(b, "B")), tx(0x100, customer(a, "old"))}, 1, 1, "new", true, 0x300},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, conn, _ := newTarget(t)
			mustApply(t, s, tx(0x200, customer(a, "new")))
			res, err := s.Apply(context.Background(), c.batch)
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if res.Applied != c.applied || res.Skipped != c.skipped {
				t.Errorf("result %+v, want applied %d skipped %d", res, c.applied, c.skipped)
			}
			if got := getCustomer(t, conn, a).Name; got != c.nameA {
				t.Errorf("customer A name %q, want %q", got, c.nameA)
			}
			if got := getCustomer(t, conn, b); got.Exists != c.bPresent || (got.Exists && got.Name != "B") {
				t.Errorf("customer B %+v, want present=%v with name B", got, c.bPresent)
			}
			if p := appliedPosition(t, conn); p.LSN != c.wantLSN {
				t.Errorf("applied position %s, want %s", p.LSN, c.wantLSN)
			}
			if p := originProgress(t, conn); p != c.wantLSN.String() {
				t.Errorf("origin progress %s, want %s", p, c.wantLSN)
			}
		})
	}
}

// A source transaction delivered twice inside one batch (a capture restart
// republishing after JetStream's duplicate window, both copies fetched
// together) must be applied once: a commit LSN at or below one already
// applied in the batch is as stale as one at or below the recorded position.
func TestSink_ReplayInsideOneBatch(t *testing.T) {
	s, conn, _ := newTarget(t)
	a := uuid.New()
	first := tx(0x250, customer(a, "first"))
	second := tx(0x300, customer(a, "second"))
	res, err := s.Apply(context.Background(), []*transform.Tx{first, second, first})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if res.Applied != 2 || res.Skipped != 1 {
		t.Errorf("result %+v, want applied 2 skipped 1", res)
	}
	if got := getCustomer(t, conn, a).Name; got != "second" {
		t.Errorf("customer name %q, want %q (the newest transaction's value)", got, "second")
	}
	if p := appliedPosition(t, conn); p.LSN != 0x300 {
		t.Errorf("duplex.applied commit_lsn %s, want %s (it went backwards)", p.LSN, capture.LSN(0x300))
	}
	if p := originProgress(t, conn); p != capture.LSN(0x300).String() {
		t.Errorf("origin progress %s, want %s", p, capture.LSN(0x300))
	}
}

// A transaction at or below the position is not even looked at: a value
// that would be refused now is no error when its transaction was applied.
func TestSink_SkippedTxIsNotValidated(t *testing.T) {
	s, conn, _ := newTarget(t)
	a := uuid.New()
	mustApply(t, s, tx(0x200, customer(a, "A")))
	bad := customerWith(uuid.New(), "bad", map[string]any{"credit_limit": transform.Money{Amount: "10.005", Currency: "EUR"}})
	res, err := s.Apply(context.Background(), []*transform.Tx{tx(0x100, bad), tx(0x300, customer(a, "A2"))})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if res.Applied != 1 || res.Skipped != 1 {
		t.Errorf("result %+v, want applied 1 skipped 1", res)
	}
	if got := getCustomer(t, conn, a).Name; got != "A2" {
		t.Errorf("name %q, want A2", got)
	}
}

// ---- 3. restart from the checkpoint and the recorded position --------------

func TestSink_RestartFromCheckpoint(t *testing.T) {
	ctx := context.Background()
	s, conn, _ := newTarget(t)
	a, b := uuid.New(), uuid.New()

	batch := []*transform.Tx{tx(0x16B3748, customer(a, "A")), tx(0x16B3A00, customer(b, "B"))}
	last := batch[1]
	last.Xid = 4711
	mustApply(t, s, batch...)

	var (
		gotFlow, gotSource, gotLSN string
		gotTime                    time.Time
		gotXid                     int64
	)
	if err := conn.QueryRow(ctx, `SELECT flow, source, commit_lsn::text, commit_time, xid FROM duplex.applied`).
		Scan(&gotFlow, &gotSource, &gotLSN, &gotTime, &gotXid); err != nil {
		t.Fatalf("read duplex.applied: %v", err)
	}
	if gotFlow != flow || gotSource != "crm" || gotLSN != last.CommitLSN.String() || gotXid != 4711 {
		t.Errorf("duplex.applied = (%s, %s, %s, %d), want (%s, crm, %s, 4711)", gotFlow, gotSource, gotLSN, gotXid, flow, last.CommitLSN)
	}
	if d := gotTime.Sub(last.CommitTime); d < -time.Microsecond || d > time.Microsecond {
		t.Errorf("commit_time %s, want %s", gotTime, last.CommitTime)
	}
	if p := originProgress(t, conn); p != last.CommitLSN.String() {
		t.Errorf("pg_replication_origin_progress = %q, want %s", p, last.CommitLSN)
	}
	if p := appliedPosition(t, conn); p.LSN != last.CommitLSN || p.Xid != 4711 {
		t.Errorf("Position() = %+v, want LSN %s xid 4711", p, last.CommitLSN)
	}

	s.Close(ctx)
	s2 := sinkFor(t, conn)
	before := snapshot(t, conn)
	res, err := s2.Apply(ctx, batch)
	if err != nil {
		t.Fatalf("apply after restart: %v", err)
	}
	if res.Applied != 0 || res.Skipped != 2 {
		t.Errorf("redelivery after restart: %+v, want skipped 2", res)
	}
	diffSnapshots(t, "redelivery after restart", before, snapshot(t, conn))

	next := tx(0x16B3B00, customer(a, "A2"))
	res, err = s2.Apply(ctx, []*transform.Tx{batch[1], next})
	if err != nil {
		t.Fatalf("apply after restart: %v", err)
	}
	if res.Applied != 1 || res.Skipped != 1 {
		t.Errorf("after restart: %+v, want applied 1 skipped 1", res)
	}
	if got := getCustomer(t, conn, a).Name; got != "A2" {
		t.Errorf("name %q, want A2", got)
	}
	if p := originProgress(t, conn); p != next.CommitLSN.String() {
		t.Errorf("origin progress %s, want %s", p, next.CommitLSN)
	}
	if p := appliedPosition(t, conn); p.LSN != next.CommitLSN {
		t.Errorf("applied %s, want %s", p.LSN, next.CommitLSN)
	}
}

// A transaction whose events were all dead-lettered still moves the
// position, so that it is not applied again.
func TestSink_EmptyTxAdvancesPosition(t *testing.T) {
	s, conn, _ := newTarget(t)
	mustApply(t, s, tx(0x100, customer(uuid.New(), "A")))
	empty := tx(0x200)
	res, err := s.Apply(context.Background(), []*transform.Tx{empty})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if res.Applied != 0 || res.Skipped != 0 {
		t.Errorf("result %+v, want zero", res)
	}
	if p := appliedPosition(t, conn); p.LSN != 0x200 {
		t.Errorf("applied %s, want %s", p.LSN, capture.LSN(0x200))
	}
	if p := originProgress(t, conn); p != capture.LSN(0x200).String() {
		t.Errorf("origin progress %s, want %s", p, capture.LSN(0x200))
	}
	if res, err := s.Apply(context.Background(), nil); err != nil || res != (pipeline.ApplyResult{}) {
		t.Errorf("empty batch: %+v %v", res, err)
	}
}

// ---- 4. folding inside one batch -------------------------------------------

func TestSink_FoldingInsideOneBatch(t *testing.T) {
	a := uuid.New()
	type want struct {
		present bool
		name    string
		email   string
		credit  int64
		terms   string
	}
	cases := []struct {
		name   string
		before []*transform.Tx // applied first, in its own batch
		sql    string          // then run directly in the ERP ($1 = a)
		batch  []*transform.Tx
		want   want
	}{
		{name: "upsert then update",
			batch: []*transform.Tx{
				tx(0x100, customerWith(a, "v1", map[string]any{"email": "v1@example.com"})),
				tx(0x200, customerWith(a, "v2", map[string]any{"email": "v2@example.com", "credit_limit": transform.Money{Amount: "20.00", Currency: "EUR"}})),
			},
			want: want{present: true, name: "v2", email: "v2@example.com", credit: 2000, terms: "NET30"}},
		{name: "upsert then partial update in the same batch",
			batch: []*transform.Tx{
				tx(0x100, customerWith(a, "v1", map[string]any{"email": "v1@example.com"})),
				tx(0x200, customerWith(a, "v2", map[string]any{"email": "<omit>"})),
			},
			want: want{present: true, name: "v2", email: "v1@example.com", credit: 1000, terms: "NET30"}},
		{name: "insert then delete",
			batch: []*transform.Tx{tx(0x100, customer(a, "v1")), tx(0x200, deleteOf("customer", a))},
			want:  want{present: false}},
		{name: "insert then delete in one tx",
			batch: []*transform.Tx{tx(0x100, customer(a, "v1"), deleteOf("customer", a))},
			want:  want{present: false}},
		{name: "existing row: update then delete",
			before: []*transform.Tx{tx(0x50, customer(a, "v0"))},
			batch:  []*transform.Tx{tx(0x100, customer(a, "v1")), tx(0x200, deleteOf("customer", a))},
			want:   want{present: false}},
		{name: "existing row: delete then re-insert",
			before: []*transform.Tx{tx(0x50, customer(a, "v0"))},
			batch:  []*transform.Tx{tx(0x100, deleteOf("customer", a)), tx(0x200, customer(a, "again"))},
			want:   want{present: true, name: "again", credit: 1000, terms: "NET30"}},
		{name: "insert, delete, re-insert",
			batch: []*transform.Tx{tx(0x100, customer(a, "v1")), tx(0x200, deleteOf("customer", a)), tx(0x300, customer(a, "v3"))},
			want:  want{present: true, name: "v3", credit: 1000, terms: "NET30"}},
		{name: "partial update keeps ERP-owned and unsent columns",
			before: []*transform.Tx{tx(0x50, customerWith(a, "v0", map[string]any{"email": "kept@example.com"}))},
			sql:    `UPDATE customers SET payment_terms = 'NET60' WHERE crm_account_id = $1`,
			batch:  []*transform.Tx{tx(0x100, customerWith(a, "v1", map[string]any{"email": "<omit>", "credit_limit": transform.Money{Amount: "30.00", Currency: "EUR"}}))},
			want:   want{present: true, name: "v1", email: "kept@example.com", credit: 3000, terms: "NET60"}},
		{name: "partial update over two txs of one batch",
			before: []*transform.Tx{tx(0x50, customerWith(a, "v0", map[string]any{"email": "kept@example.com"}))},
			sql:    `UPDATE customers SET payment_terms = 'NET60' WHERE crm_account_id = $1`,
			batch: []*transform.Tx{
				tx(0x100, customerWith(a, "v1", map[string]any{"email": "<omit>"})),
				tx(0x200, customerWith(a, "v2", map[string]any{"email": "<omit>", "credit_limit": transform.Money{Amount: "5.00", Currency: "EUR"}})),
			},
			want: want{present: true, name: "v2", email: "kept@example.com", credit: 500, terms: "NET60"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, conn, _ := newTarget(t)
			if c.before != nil {
				mustApply(t, s, c.before...)
			}
			if c.sql != "" {
				exec(t, conn, c.sql, a)
			}
			res := mustApply(t, s, c.batch...)
			if n := countEvents(c.batch); res.Applied != n {
				t.Errorf("applied %d, want %d", res.Applied, n)
			}
			got := getCustomer(t, conn, a)
			if got.Exists != c.want.present {
				t.Fatalf("customer present = %v, want %v", got.Exists, c.want.present)
			}
			if !got.Exists {
				return
			}
			wantEmail := c.want.email
			if wantEmail == "" {
				wantEmail = "<NULL>"
			}
			if got.Name != c.want.name || str(got.Email) != wantEmail || got.CreditMinor == nil || *got.CreditMinor != c.want.credit || got.PaymentTerms != c.want.terms {
				gc := int64(-1)
				if got.CreditMinor != nil {
					gc = *got.CreditMinor
				}
				t.Errorf("customer = (name %q, email %s, credit %d, terms %s), want (%q, %s, %d, %s)",
					got.Name, str(got.Email), gc, got.PaymentTerms, c.want.name, wantEmail, c.want.credit, c.want.terms)
			}
		})
	}
}

// An update whose event leaves out a NOT NULL column (the CRM did not send
// an unchanged TOASTed value, so the canonical event has no such field)
// must leave that column as it is, like any other absent field.
func TestSink_PartialUpdateWithoutNotNullColumn(t *testing.T) {
	s, conn, _ := newTarget(t)
	a := uuid.New()
	mustApply(t, s, tx(0x100, customerWith(a, "A long name kept in TOAST", map[string]any{"email": "old@example.com"})))
	upd := transform.Event{Entity: "customer", Op: transform.OpUpsert, Key: a.String(), Data: map[string]any{
		"account_id": a.String(), "email": "new@example.com"}} // no "name": unchanged
	res, err := s.Apply(context.Background(), []*transform.Tx{tx(0x200, upd)})
	if err != nil {
		t.Fatalf("apply of an update without the unchanged name: %v", err)
	}
	if res.Applied != 1 {
		t.Errorf("applied %d, want 1", res.Applied)
	}
	got := getCustomer(t, conn, a)
	if got.Name != "A long name kept in TOAST" || str(got.Email) != "new@example.com" || got.Currency != "EUR" {
		t.Errorf("customer %+v (email %s), want name kept, email new@example.com, currency EUR", got, str(got.Email))
	}
}

// ---- 5. only mapped columns are written ------------------------------------

func TestSink_OnlyMappedColumnsAreWritten(t *testing.T) {
	s, conn, _ := newTarget(t)
	a := uuid.New()
	mustApply(t, s, tx(0x100, customer(a, "A")))
	fresh := getCustomer(t, conn, a)
	if fresh.PaymentTerms != "NET30" || fresh.OpenBalance != "0.0000" {
		t.Errorf("new customer: terms %s balance %s, want the ERP's defaults NET30 0.0000", fresh.PaymentTerms, fresh.OpenBalance)
	}
	exec(t, conn, `UPDATE customers SET payment_terms = 'NET60', open_balance = 123.45 WHERE crm_account_id = $1`, a)
	var updatedAt time.Time
	if err := conn.QueryRow(context.Background(), `SELECT updated_at FROM customers WHERE crm_account_id = $1`, a).Scan(&updatedAt); err != nil {
		t.Fatal(err)
	}
	mustApply(t, s, tx(0x200, customerWith(a, "A renamed", map[string]any{"email": "a@example.com"})))
	got := getCustomer(t, conn, a)
	if got.PaymentTerms != "NET60" || got.OpenBalance != "123.4500" {
		t.Errorf("ERP-owned columns: terms %s balance %s, want NET60 123.4500", got.PaymentTerms, got.OpenBalance)
	}
	if got.CustomerNo != fresh.CustomerNo {
		t.Errorf("customer_no changed from %d to %d", fresh.CustomerNo, got.CustomerNo)
	}
	if got.Name != "A renamed" || str(got.Email) != "a@example.com" {
		t.Errorf("mapped columns not written: %+v", got)
	}
	var ua time.Time
	if err := conn.QueryRow(context.Background(), `SELECT updated_at FROM customers WHERE crm_account_id = $1`, a).Scan(&ua); err != nil || !ua.Equal(updatedAt) {
		t.Errorf("updated_at (not carried by the event) changed from %s to %s (%v)", updatedAt, ua, err)
	}
}

// ---- 6. references -----------------------------------------------------------

func TestSink_ReferencesResolveThroughCanonicalKeys(t *testing.T) {
	ctx := context.Background()
	s, conn, _ := newTarget(t)
	a, o, l1, l2 := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	// Children first in the batch: the sink writes parents first anyway.
	mustApply(t, s,
		tx(0x100, orderLine(l1, o, "SKU-1", "2", "9.99")),
		tx(0x200, order(o, a)),
		tx(0x300, customer(a, "A"), orderLine(l2, o, "SKU-2", "1.5", "100")),
	)
	var bad int
	if err := conn.QueryRow(ctx, `
SELECT count(*) FROM sales_order_lines l
LEFT JOIN sales_orders o ON o.order_no = l.order_no AND o.crm_order_id = $1
LEFT JOIN customers c ON c.customer_no = o.customer_no AND c.crm_account_id = $2
WHERE l.crm_line_id = ANY($3) AND c.customer_no IS NULL`, o, a, []uuid.UUID{l1, l2}).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	var lines int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM sales_order_lines WHERE crm_line_id = ANY($1)`, []uuid.UUID{l1, l2}).Scan(&lines); err != nil {
		t.Fatal(err)
	}
	if lines != 2 || bad != 0 {
		t.Errorf("%d lines, %d not joined to their order and customer; want 2, 0", lines, bad)
	}
}

func TestSink_MissingReferenceWaitsAndCommitsNothing(t *testing.T) {
	known, other, absent := uuid.New(), uuid.New(), uuid.New()
	knownOrder, newOrder, absentOrder := uuid.New(), uuid.New(), uuid.New()
	cases := []struct {
		name          string
		batch         []*transform.Tx
		wantTx, wantE int
	}{
		{"order of an absent customer",
			[]*transform.Tx{tx(0x200, customer(other, "other")), tx(0x300, order(newOrder, absent))}, 1, 0},
		{"order of an absent customer, not first in its tx",
			[]*transform.Tx{tx(0x50, customer(known, "stale")), tx(0x200, customer(other, "other")), tx(0x300, order(newOrder, known), order(uuid.New(), absent))}, 2, 1},
		{"line of an absent order",
			[]*transform.Tx{tx(0x200, customer(other, "other"), order(newOrder, other)), tx(0x300, orderLine(uuid.New(), knownOrder, "S", "1", "1"), orderLine(uuid.New(), absentOrder, "S", "1", "1"))}, 1, 1},
		{"customer deleted earlier in the batch",
			[]*transform.Tx{tx(0x200, customer(other, "other")), tx(0x300, deleteOf("customer", other)), tx(0x400, order(newOrder, other))}, 2, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, conn, _ := newTarget(t)
			mustApply(t, s, tx(0x100, customer(known, "known"), order(knownOrder, known)))
			before := snapshot(t, conn)
			progress := originProgress(t, conn)
			_, err := s.Apply(context.Background(), c.batch)
			if ae := applyError(t, err, pipeline.Waiting); ae != nil {
				if ae.Tx != c.wantTx || ae.Event != c.wantE {
					t.Errorf("error at tx %d event %d, want tx %d event %d: %v", ae.Tx, ae.Event, c.wantTx, c.wantE, err)
				}
			}
			diffSnapshots(t, "after the failed batch", before, snapshot(t, conn))
			if p := appliedPosition(t, conn); p.LSN != 0x100 {
				t.Errorf("applied position %s, want %s", p.LSN, capture.LSN(0x100))
			}
			if p := originProgress(t, conn); p != progress {
				t.Errorf("origin progress %s after a rolled-back batch, want %s", p, progress)
			}
			// The sink is still usable.
			res, err := s.Apply(context.Background(), []*transform.Tx{tx(0x500, customer(other, "later"))})
			if err != nil || res.Applied != 1 {
				t.Errorf("apply after the failure: %+v %v", res, err)
			}
		})
	}
}

// ---- 7. permanent errors with attribution ---------------------------------

func TestSink_PermanentErrorsNameTheEvent(t *testing.T) {
	good := uuid.New()
	cases := []struct {
		name   string
		ev     func(key uuid.UUID) transform.Event
		entity string
		field  string
		value  string
	}{
		{"credit limit with more decimals than its currency",
			func(k uuid.UUID) transform.Event {
				return customerWith(k, "X", map[string]any{"credit_limit": transform.Money{Amount: "10.005", Currency: "EUR"}})
			}, "customer", "credit_limit", "10.005"},
		{"country longer than char(2)",
			func(k uuid.UUID) transform.Event { return customerWith(k, "X", map[string]any{"country": "DEU"}) },
			"customer", "country", "DEU"},
		{"currency of the amount differs from the currency field",
			func(k uuid.UUID) transform.Event {
				return customerWith(k, "X", map[string]any{"credit_limit": transform.Money{Amount: "10.00", Currency: "USD"}})
			}, "customer", "currency", "EUR"},
		{"order total with more decimals than numeric(19,4)",
			func(k uuid.UUID) transform.Event {
				ev := order(k, good)
				ev.Data["total"] = transform.Money{Amount: "1.23456", Currency: "EUR"}
				return ev
			}, "order", "total", "1.23456"},
		{"unmapped order status",
			func(k uuid.UUID) transform.Event {
				ev := order(k, good)
				ev.Data["status"] = "shipped"
				return ev
			}, "order", "status", "shipped"},
		{"line quantity with more decimals than numeric(12,3)",
			func(k uuid.UUID) transform.Event { return orderLine(k, uuid.New(), "S", "1.2345", "1") },
			"order_line", "quantity", "1.2345"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, conn, _ := newTarget(t)
			mustApply(t, s, tx(0x100, customer(good, "good")))
			before := snapshot(t, conn)
			bad := uuid.New()
			batch := []*transform.Tx{
				tx(0x50, customer(uuid.New(), "stale")), // skipped, still counted in the indexes
				tx(0x200, customer(uuid.New(), "C1")),
				tx(0x300, customer(uuid.New(), "C2"), c.ev(bad), customer(uuid.New(), "C3")),
			}
			_, err := s.Apply(context.Background(), batch)
			if ae := applyError(t, err, pipeline.Permanent); ae != nil {
				if ae.Tx != 2 || ae.Event != 1 {
					t.Errorf("error at tx %d event %d, want tx 2 event 1", ae.Tx, ae.Event)
				}
				for _, w := range []string{c.entity, bad.String(), c.field, c.value} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not name %q", err, w)
					}
				}
			}
			diffSnapshots(t, "after the refused batch", before, snapshot(t, conn))
			if p := appliedPosition(t, conn); p.LSN != 0x100 {
				t.Errorf("applied position %s, want %s", p.LSN, capture.LSN(0x100))
			}
		})
	}
}

// A value the database refuses (a new customer without its NOT NULL
// currency) is permanent too, located at least to its transaction.
func TestSink_DatabaseRefusalIsPermanent(t *testing.T) {
	s, conn, _ := newTarget(t)
	mustApply(t, s, tx(0x100, customer(uuid.New(), "good")))
	before := snapshot(t, conn)
	k := uuid.New()
	noCurrency := transform.Event{Entity: "customer", Op: transform.OpUpsert, Key: k.String(), Data: map[string]any{"account_id": k.String(), "name": "N"}}
	_, err := s.Apply(context.Background(), []*transform.Tx{tx(0x200, customer(uuid.New(), "C1")), tx(0x300, noCurrency)})
	if ae := applyError(t, err, pipeline.Permanent); ae != nil {
		if ae.Tx != 1 {
			t.Errorf("error at tx %d, want tx 1: %v", ae.Tx, err)
		}
		if ae.Event != -1 && ae.Event != 0 {
			t.Errorf("error at event %d, want 0 or unknown (-1)", ae.Event)
		}
	}
	diffSnapshots(t, "after the refused batch", before, snapshot(t, conn))
}

// ---- 8. equal rows are not rewritten ---------------------------------------

func TestSink_EqualRowIsNotRewritten(t *testing.T) {
	a, o, l := uuid.New(), uuid.New(), uuid.New()
	cust := customerWith(a, "A", map[string]any{"email": "a@example.com", "country": "DE"})
	ord := order(o, a)
	line := orderLine(l, o, "SKU-1", "2", "9.99")
	cases := []struct {
		name          string
		ev            transform.Event
		table, keyCol string
		key           uuid.UUID
		changed       func() transform.Event
	}{
		{"customer", cust, "customers", "crm_account_id", a, func() transform.Event {
			return customerWith(a, "A", map[string]any{"email": "changed@example.com", "country": "DE"})
		}},
		{"order", ord, "sales_orders", "crm_order_id", o, func() transform.Event {
			ev := order(o, a)
			ev.Data["ordered_at"] = ord.Data["ordered_at"]
			ev.Data["status"] = "confirmed"
			return ev
		}},
		{"order line", line, "sales_order_lines", "crm_line_id", l, func() transform.Event { return orderLine(l, o, "SKU-1", "3", "9.99") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, conn, _ := newTarget(t)
			mustApply(t, s, tx(0x100, cust, ord, line))
			before := snapshot(t, conn)
			res := mustApply(t, s, tx(0x200, c.ev))
			if res.Applied != 1 {
				t.Errorf("applied %d, want 1", res.Applied)
			}
			diffSnapshots(t, "after an identical upsert in a new tx", before, snapshot(t, conn))
			if p := appliedPosition(t, conn); p.LSN != 0x200 {
				t.Errorf("applied position %s, want %s", p.LSN, capture.LSN(0x200))
			}
			// Control: a real change does rewrite the row.
			x := xmin(t, conn, c.table, c.keyCol, c.key)
			mustApply(t, s, tx(0x300, c.changed()))
			if x2 := xmin(t, conn, c.table, c.keyCol, c.key); x2 == x {
				t.Errorf("a changed %s kept xmin %s", c.name, x)
			}
		})
	}
}

// ---- 9. one session per replication origin ---------------------------------

func TestSink_SecondSinkOnSameOriginIsKeptOut(t *testing.T) {
	ctx := context.Background()
	s1, conn, _ := newTarget(t)
	a, b := uuid.New(), uuid.New()
	mustApply(t, s1, tx(0x100, customer(a, "A")))

	s2 := sinkFor(t, conn)
	_, err := s2.Apply(ctx, []*transform.Tx{tx(0x200, customer(b, "B"))})
	if ae := applyError(t, err, pipeline.Transient); ae != nil && !strings.Contains(err.Error(), "origin") {
		t.Errorf("error %q does not say the origin is the problem", err)
	}
	if getCustomer(t, conn, b).Exists {
		t.Errorf("the second sink wrote while the first held the origin")
	}
	// The first one is unaffected.
	mustApply(t, s1, tx(0x150, customer(a, "A2")))

	s1.Close(ctx)
	var res pipeline.ApplyResult
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err = s2.Apply(ctx, []*transform.Tx{tx(0x200, customer(b, "B"))})
		if err == nil || time.Now().After(deadline) {
			break
		}
		if k := pipeline.KindOf(err); k != pipeline.Transient {
			t.Fatalf("retry failed with a %s error: %v", k, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("second sink still kept out after the first closed: %v", err)
	}
	if res.Applied != 1 || !getCustomer(t, conn, b).Exists || getCustomer(t, conn, a).Name != "A2" {
		t.Errorf("after takeover: %+v, customer B present %v", res, getCustomer(t, conn, b).Exists)
	}
	if p := originProgress(t, conn); p != capture.LSN(0x200).String() {
		t.Errorf("origin progress %s, want %s", p, capture.LSN(0x200))
	}
}

// ---- 10. target down, connection lost --------------------------------------

func TestSink_TargetDownIsTransient(t *testing.T) {
	cases := []struct{ name, dsn string }{
		{"closed port", "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=5"},
		{"missing socket directory", "host=/nonexistent/duplex user=postgres dbname=x sslmode=disable connect_timeout=5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := postgres.New(postgres.Config{Flow: flow, Source: "crm", System: "erp", DSN: c.dsn, Origin: "duplex_down", Mapping: loadMapping(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for attempt := 1; attempt <= 2; attempt++ { // and again: no state left behind
				_, err = s.Apply(ctx, []*transform.Tx{tx(0x100, customer(uuid.New(), "A"))})
				if ae := applyError(t, err, pipeline.Transient); ae != nil && (ae.Tx != -1 || ae.Event != -1) {
					t.Errorf("attempt %d: error located at tx %d event %d, want -1 -1", attempt, ae.Tx, ae.Event)
				}
			}
		})
	}
}

func TestSink_ReconnectsAfterConnectionLoss(t *testing.T) {
	ctx := context.Background()
	s, conn, _ := newTarget(t)
	a, b := uuid.New(), uuid.New()
	mustApply(t, s, tx(0x100, customer(a, "A")))
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminate the sink's session: %d %v", n, err)
	}
	batch := []*transform.Tx{tx(0x100, customer(a, "A")), tx(0x200, customer(b, "B"))}
	var (
		res      pipeline.ApplyResult
		err      error
		failures int
	)
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err = s.Apply(ctx, batch)
		if err == nil || time.Now().After(deadline) {
			break
		}
		failures++
		if k := pipeline.KindOf(err); k != pipeline.Transient {
			t.Fatalf("after connection loss: %s error %v", k, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("did not recover from the lost connection: %v", err)
	}
	if failures == 0 {
		t.Errorf("the first apply on a terminated session succeeded; expected one transient failure")
	}
	if res.Applied != 1 || res.Skipped != 1 || !getCustomer(t, conn, b).Exists {
		t.Errorf("after reconnect: %+v", res)
	}
}

// ---- truncates ---------------------------------------------------------------

// A TRUNCATE of accounts, orders and order lines together (as the CRM's
// TRUNCATE ... CASCADE is captured, with truncate: propagate) clears the
// three ERP tables, whose foreign keys need children emptied first.
func TestSink_TruncateOfParentAndChildren(t *testing.T) {
	s, conn, m := newTarget(t)
	for _, e := range m.Entities {
		e.Truncate = "propagate" // what makes the CRM's capture emit truncate events
	}
	a, o, l, fresh := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	mustApply(t, s, tx(0x100, customer(a, "A"), order(o, a), orderLine(l, o, "S", "1", "1")))
	trunc := func(entity string) transform.Event { return transform.Event{Entity: entity, Op: transform.OpTruncate} }
	_, err := s.Apply(context.Background(), []*transform.Tx{
		tx(0x200, trunc("customer"), trunc("order"), trunc("order_line")),
		tx(0x300, customer(fresh, "F")),
	})
	if err != nil {
		t.Fatalf("apply of the truncate: %v", err)
	}
	snap := snapshot(t, conn)
	if len(snap) != 1 || snap["customer:"+fresh.String()] == "" {
		t.Errorf("after truncate and one insert: rows %v, want only customer %s", slices.Sorted(maps.Keys(snap)), fresh)
	}
}

// ---- 11. throughput ----------------------------------------------------------

func BenchmarkSink_Apply(b *testing.B) {
	for _, shape := range []struct{ txs, per int }{{1, 500}, {10, 50}} {
		b.Run(fmt.Sprintf("%dx%d", shape.txs, shape.per), func(b *testing.B) {
			s, _, _ := newTarget(b)
			lsn := capture.LSN(0x1000000)
			next := func() []*transform.Tx {
				var batch []*transform.Tx
				for range shape.txs {
					evs := make([]transform.Event, shape.per)
					for i := range evs {
						evs[i] = customerWith(uuid.New(), "Customer", map[string]any{"email": "c@example.com", "country": "DE"})
					}
					lsn += 0x100
					batch = append(batch, tx(lsn, evs...))
				}
				return batch
			}
			mustApply(b, s, next()...) // connect, read the catalog
			batches := make([][]*transform.Tx, b.N)
			for i := range batches {
				batches[i] = next()
			}
			rows := 0
			b.ResetTimer()
			for i := range b.N {
				res, err := s.Apply(context.Background(), batches[i])
				if err != nil {
					b.Fatal(err)
				}
				rows += res.Applied
			}
			b.StopTimer()
			b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
