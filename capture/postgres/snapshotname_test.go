package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/capture"
)

// importer is a handler that does what the producer does with a chunk of
// the initial snapshot (pgstate.VersionRecorder.Lookup): it imports the
// chunk's SnapshotName in a REPEATABLE READ transaction of its own, after
// the time a chunk takes to be handed on (normalize, publish, acks).
type importer struct {
	conn  *pgx.Conn
	took  time.Duration
	names []string
}

func (h *importer) Chunk(ctx context.Context, c *capture.Chunk) error {
	time.Sleep(h.took) // the chunk's work, not a synchronisation
	tx, err := h.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(c.Tx.SnapshotName)); err != nil {
		return fmt.Errorf("chunk %d: import %q: %w", c.Index, c.Tx.SnapshotName, err)
	}
	h.names = append(h.names, c.Tx.SnapshotName)
	return nil
}

func (h *importer) Drain(context.Context) error { return nil }

// TestSnapshot_SnapshotNameImportableWhileTheCopyRuns: TxInfo.SnapshotName
// "stays importable while the chunk is handed on", for every chunk of the
// copy, however long the copy takes. It names the snapshot the slot's
// replication session exported, which PostgreSQL keeps importable only
// while that session lives and runs no other command; the session sits
// idle in the exported snapshot's transaction for the whole copy, so
// idle_in_transaction_session_timeout (a common production setting) ends
// it once the copy takes longer than the timeout, though every statement
// of the copy itself comes well within it. runSnapshot's own transaction,
// which imported the snapshot at the start, reads on; the chunks handed
// on after that moment carry a name that no longer imports, and Lookup
// fails them: the snapshot starts over from a new slot and fails again at
// the same point, for ever.
func TestSnapshot_SnapshotNameImportableWhileTheCopyRuns(t *testing.T) {
	ctx := context.Background()
	b := newBackfillSetupWith(t, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 24) g;
		ALTER DATABASE src SET idle_in_transaction_session_timeout = '2s'`, []string{"id"}, SnapshotInitial)
	conn, err := pgx.Connect(ctx, b.cl.DSN("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// 6 chunks of 4 rows, 800 ms each: every statement of the copy comes
	// within the timeout, the copy as a whole does not.
	h := &importer{conn: conn, took: 800 * time.Millisecond}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.src.Stream(sctx, h) }()
	deadline := time.After(60 * time.Second)
	for !b.src.Progress().Done {
		select {
		case err := <-done:
			t.Fatalf("the initial snapshot failed after %d of 6 chunks: %v", len(h.names), err)
		case <-deadline:
			t.Fatal("the initial snapshot did not complete within 60s")
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	<-done
	if len(h.names) != 6 {
		t.Errorf("%d chunks handed on, want 6", len(h.names))
	}
}
