package pgcatalog_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/duplex-cdc/duplex/internal/harness"
	"github.com/duplex-cdc/duplex/internal/pgcatalog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRead_UniqueKeys: the column sets of unique indexes that ON CONFLICT
// can infer (the primary key and plain unique indexes, sorted), and not
// those with a predicate or an expression, nor non-unique indexes.
func TestRead_UniqueKeys(t *testing.T) {
	ctx := context.Background()
	cl := harness.NewCluster(t, harness.ClusterOptions{})
	if err := cl.CreateDatabase(ctx, "cat"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Exec(ctx, "cat", `
CREATE TABLE docs (company text NOT NULL, doc_no int NOT NULL, code text, note text, PRIMARY KEY (doc_no, company));
CREATE UNIQUE INDEX ON docs (code);
CREATE UNIQUE INDEX ON docs (company, note) WHERE note IS NOT NULL;
CREATE UNIQUE INDEX ON docs (company, lower(code));
CREATE INDEX ON docs (company, code);`); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, cl.DSN("cat"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	cat, err := pgcatalog.Read(ctx, conn, []string{"public.docs"})
	if err != nil {
		t.Fatal(err)
	}
	ti := cat.Tables["public.docs"]
	got := slices.Clone(ti.UniqueKeys)
	slices.SortFunc(got, slices.Compare)
	if want := [][]string{{"code"}, {"company", "doc_no"}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("UniqueKeys = %q, want %q", got, want)
	}
	if !ti.HasUniqueKey([]string{"doc_no", "company"}) || ti.HasUniqueKey([]string{"company", "note"}) || ti.HasUniqueKey([]string{"company", "code"}) {
		t.Errorf("HasUniqueKey: the primary key in any order yes, the partial and the non-unique index no; UniqueKeys %q", ti.UniqueKeys)
	}
}
