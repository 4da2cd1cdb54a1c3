// Package bench measures duplex against PostgreSQL's native logical
// replication on the same machine: a bulk insert workload (accounts, orders
// and lines) end to end, and the latency of a steady stream of changes.
package bench

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/examples"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/demo"
	"github.com/duplex-cdc/duplex/internal/workload"
	"github.com/duplex-cdc/duplex/transform"
)

// Options configures a run.
type Options struct {
	// Rows is the number of inserted rows of the bulk workload.
	Rows int
	// RowsPerTx is the size of each bulk transaction.
	RowsPerTx int
	// SteadyRate is the change rate of the latency phase, rows per second,
	// and SteadyFor its length.
	SteadyRate int
	SteadyFor  time.Duration
	// SkipNative leaves the baseline out.
	SkipNative bool
	Out        io.Writer
	Logger     *slog.Logger
}

// Result holds the figures of a run.
type Result struct {
	Rows             int
	DuplexBulk       time.Duration
	DuplexRowsPerSec float64
	BulkP50, BulkP99 time.Duration
	NativeBulk       time.Duration
	NativeRowsPerSec float64
	SteadyRows       int
	SteadyRate       float64
	SteadyP50        time.Duration
	SteadyP99        time.Duration
}

// bulkSQL inserts one transaction's worth of rows: 10% accounts, 20%
// orders, 70% lines.
const bulkSQL = `
WITH a AS (
  INSERT INTO accounts (id, name, email, country, currency, credit_limit)
  SELECT gen_random_uuid(), 'bulk ' || g, 'b' || g || '@example.com', 'DE', 'EUR', (g % 100000) / 100.0
  FROM generate_series(1, $1::int) g RETURNING id
), o AS (
  INSERT INTO orders (id, account_id, currency, total, status, ordered_at)
  SELECT gen_random_uuid(), a.id, 'EUR', 123.45, 'open', now() FROM a, generate_series(1, 2) RETURNING id
)
INSERT INTO order_lines (id, order_id, sku, quantity, unit_price)
SELECT gen_random_uuid(), o.id, 'SKU-' || g, g, 9.99 FROM o, generate_series(1, 3) g`

// perAccount is the rows bulkSQL inserts per account (1 + 2 + 2*3).
const perAccount = 9

func bulk(ctx context.Context, dsn string, rows, perTx int) (int, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	accountsPerTx := max(1, perTx/perAccount)
	done := 0
	for done < rows {
		n := min(accountsPerTx, (rows-done+perAccount-1)/perAccount)
		if _, err := conn.Exec(ctx, bulkSQL, n); err != nil {
			return done, fmt.Errorf("bulk insert: %w", err)
		}
		done += n * perAccount
	}
	return done, nil
}

func count(ctx context.Context, conn *pgx.Conn, tables ...string) (int, error) {
	total := 0
	for _, t := range tables {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+t).Scan(&n); err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

func waitCount(ctx context.Context, conn *pgx.Conn, want int, timeout time.Duration, tables ...string) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := count(ctx, conn, tables...)
		if err != nil {
			return time.Time{}, err
		}
		if n >= want {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("only %d of %d rows arrived within %s", n, want, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run runs the benchmark.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	out := o.Out
	env, err := demo.NewEnv(ctx, o.Logger)
	if err != nil {
		return nil, err
	}
	defer env.Close()
	rec := &demo.Latencies{}
	a, err := app.Start(ctx, app.Options{Config: env.Config, DataDir: env.Config.DataDir, Logger: o.Logger,
		OnApplied: func(_ string, txs []*transform.Tx, at time.Time) { rec.Add(txs, at) }})
	if err != nil {
		return nil, err
	}
	defer a.Close()
	erp, err := pgx.Connect(ctx, env.ERP.DSN("erp"))
	if err != nil {
		return nil, err
	}
	defer erp.Close(context.WithoutCancel(ctx))
	res := &Result{}

	// Phase 1: bulk. The rows are committed in the CRM first, with the
	// slot in place and duplex not yet running, so what is timed is
	// replication alone: decoding, publishing, applying.
	fmt.Fprintf(out, "bulk: %d rows inserted into the CRM in transactions of ~%d rows, then replicated …\n", o.Rows, o.RowsPerTx)
	n, err := bulk(ctx, env.CRM.DSN("crm"), o.Rows, o.RowsPerTx)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- a.Run(runCtx) }()
	defer func() { stop(); <-done }()
	end, err := waitCount(ctx, erp, n, 10*time.Minute, "customers", "sales_orders", "sales_order_lines")
	if err != nil {
		return nil, fmt.Errorf("duplex bulk: %w", err)
	}
	res.Rows = n
	res.DuplexBulk = end.Sub(start)
	res.DuplexRowsPerSec = float64(n) / res.DuplexBulk.Seconds()
	fmt.Fprintf(out, "  duplex: %d rows in %s: %.0f rows/s\n", n, res.DuplexBulk.Round(time.Millisecond), res.DuplexRowsPerSec)

	// Phase 2: steady rate through duplex.
	if o.SteadyRate > 0 && o.SteadyFor > 0 {
		fmt.Fprintf(out, "steady: ~%d row changes/s of order-to-cash traffic for %s …\n", o.SteadyRate, o.SteadyFor)
		rows, took, err := steady(ctx, env.CRM.DSN("crm"), o.SteadyRate, o.SteadyFor, rec)
		if err != nil {
			return nil, err
		}
		// Let the tail arrive before reading the percentiles.
		time.Sleep(2 * time.Second)
		res.SteadyRows = rows
		res.SteadyRate = float64(rows) / took.Seconds()
		res.SteadyP50, res.SteadyP99, _ = rec.Percentiles()
		fmt.Fprintf(out, "  duplex: %d row changes at %.0f/s; CRM commit → ERP commit latency p50 %s p99 %s\n", rows, res.SteadyRate, res.SteadyP50.Round(time.Millisecond), res.SteadyP99.Round(time.Millisecond))
	}
	stop()
	<-done
	done <- nil
	a.Close()

	if !o.SkipNative {
		d, err := native(ctx, env, o)
		if err != nil {
			return nil, fmt.Errorf("native baseline: %w", err)
		}
		res.NativeBulk = d
		res.NativeRowsPerSec = float64(n) / d.Seconds()
		fmt.Fprintf(out, "  native logical replication: %d rows in %s: %.0f rows/s\n", n, d.Round(time.Millisecond), res.NativeRowsPerSec)
		fmt.Fprintf(out, "\nduplex / native throughput: %.2f\n", res.DuplexRowsPerSec/res.NativeRowsPerSec)
	}
	return res, nil
}

// steady runs the order-to-cash generator at a row rate.
func steady(ctx context.Context, dsn string, rate int, d time.Duration, rec *demo.Latencies) (int, time.Duration, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	gen := workload.New(42)
	rec.Reset()
	start := time.Now()
	rows := 0
	for time.Since(start) < d {
		// Keep the committed rows on the rate's schedule.
		due := start.Add(time.Duration(float64(rows) / float64(rate) * float64(time.Second)))
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		n, err := gen.Step(ctx, conn)
		if err != nil {
			return rows, time.Since(start), err
		}
		rows += n
	}
	return rows, time.Since(start), nil
}

// native runs the bulk workload through a publication and subscription
// between fresh databases of the same two clusters, tables as in the CRM.
func native(ctx context.Context, env *demo.Env, o Options) (time.Duration, error) {
	schema, err := fs.ReadFile(examples.OrderToCash, "order-to-cash/crm.sql")
	if err != nil {
		return 0, err
	}
	if err := env.CRM.CreateDatabase(ctx, "native_src"); err != nil {
		return 0, err
	}
	if err := env.ERP.CreateDatabase(ctx, "native_dst"); err != nil {
		return 0, err
	}
	if err := env.CRM.Exec(ctx, "native_src", string(schema)+"\nCREATE PUBLICATION native FOR TABLE accounts, orders, order_lines;"); err != nil {
		return 0, err
	}
	if err := env.ERP.Exec(ctx, "native_dst", string(schema)); err != nil {
		return 0, err
	}
	if err := env.ERP.Exec(ctx, "native_dst", fmt.Sprintf("CREATE SUBSCRIPTION native CONNECTION '%s' PUBLICATION native", env.CRM.DSN("native_src"))); err != nil {
		return 0, err
	}
	dst, err := pgx.Connect(ctx, env.ERP.DSN("native_dst"))
	if err != nil {
		return 0, err
	}
	defer dst.Close(ctx)
	// Wait for the subscription to be streaming.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ready bool
		if err := dst.QueryRow(ctx, `SELECT count(*) > 0 FROM pg_stat_subscription WHERE subname = 'native' AND pid IS NOT NULL`).Scan(&ready); err != nil {
			return 0, err
		}
		if ready {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("subscription did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(o.Out, "baseline: the same %d rows through native logical replication (publication + subscription) …\n", o.Rows)
	if _, err := dst.Exec(ctx, "ALTER SUBSCRIPTION native DISABLE"); err != nil {
		return 0, err
	}
	n, err := bulk(ctx, env.CRM.DSN("native_src"), o.Rows, o.RowsPerTx)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := dst.Exec(ctx, "ALTER SUBSCRIPTION native ENABLE"); err != nil {
		return 0, err
	}
	end, err := waitCount(ctx, dst, n, 10*time.Minute, "accounts", "orders", "order_lines")
	if err != nil {
		return 0, err
	}
	_ = env.ERP.Exec(ctx, "native_dst", "ALTER SUBSCRIPTION native DISABLE; ALTER SUBSCRIPTION native SET (slot_name = NONE); DROP SUBSCRIPTION native")
	return end.Sub(start), nil
}
