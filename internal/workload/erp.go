package workload

import (
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/jackc/pgx/v5"
)

// ERP plays the ERP's own application in the order-to-cash example: it
// invoices sales orders, takes payments (each posted to the general ledger,
// numbered per company), edits customers' payment terms and e-mail, and
// moves ledger postings to another company. Not safe for concurrent use.
type ERP struct {
	rng *rand.Rand
}

// NewERP returns an ERP for a seed.
func NewERP(seed uint64) *ERP {
	return &ERP{rng: rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))}
}

// InvoiceOpenOrders invoices up to n confirmed or open sales orders that
// have no invoice yet, one ERP transaction per order, and returns how many
// it invoiced.
func (e *ERP) InvoiceOpenOrders(ctx context.Context, conn *pgx.Conn, n int) (int, error) {
	rows, err := conn.Query(ctx, `SELECT order_no FROM sales_orders WHERE fulfilment_status = 'open' AND status <> 'CANCELLED' ORDER BY order_no LIMIT $1`, n)
	if err != nil {
		return 0, fmt.Errorf("erp: find orders to invoice: %w", err)
	}
	orders, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("erp: find orders to invoice: %w", err)
	}
	done := 0
	for _, o := range orders {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `
INSERT INTO invoices (order_no, customer_no, currency, amount, status, issued_at, due_date)
SELECT order_no, customer_no, currency, total, 'open', now(), current_date + 30 FROM sales_orders WHERE order_no = $1`, o); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE sales_orders SET fulfilment_status = 'invoiced' WHERE order_no = $1`, o); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE customers c SET open_balance = c.open_balance + s.total FROM sales_orders s WHERE s.order_no = $1 AND c.customer_no = s.customer_no`, o); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, postLedger(`
SELECT customer_no, invoice_no, 'invoice', currency, amount, now() FROM invoices WHERE order_no = $1`), o)
			return err
		})
		if err != nil {
			return done, fmt.Errorf("erp: invoice order %d: %w", o, err)
		}
		done++
	}
	return done, nil
}

// PayInvoices takes a payment for up to n open invoices, in full or (one
// time in four) in part, and returns how many it paid.
func (e *ERP) PayInvoices(ctx context.Context, conn *pgx.Conn, n int) (int, error) {
	rows, err := conn.Query(ctx, `SELECT invoice_no FROM invoices WHERE status <> 'paid' ORDER BY invoice_no LIMIT $1`, n)
	if err != nil {
		return 0, fmt.Errorf("erp: find invoices to pay: %w", err)
	}
	invoices, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("erp: find invoices to pay: %w", err)
	}
	done := 0
	for _, inv := range invoices {
		share := "1"
		if e.rng.IntN(4) == 0 {
			share = "0.5"
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// The payment: the rest of the invoice, or half of it, in the
			// currency's minor units, at most cents (no half yen; the CRM keeps
			// two decimals).
			if _, err := tx.Exec(ctx, `
INSERT INTO payments (invoice_no, amount, currency, received_at)
SELECT invoice_no, round((amount - paid_amount) * $2::numeric, CASE currency WHEN 'JPY' THEN 0 ELSE 2 END), currency, now()
FROM invoices WHERE invoice_no = $1`, inv, share); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
UPDATE invoices i SET paid_amount = p.total, status = CASE WHEN p.total >= i.amount THEN 'paid' ELSE 'partially_paid' END
FROM (SELECT invoice_no, sum(amount) AS total FROM payments WHERE invoice_no = $1 GROUP BY invoice_no) p
WHERE i.invoice_no = p.invoice_no`, inv); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE sales_orders s SET fulfilment_status = 'paid' FROM invoices i WHERE i.invoice_no = $1 AND i.status = 'paid' AND s.order_no = i.order_no`, inv); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
UPDATE customers c SET open_balance = c.open_balance - p.amount
FROM (SELECT customer_no, (SELECT amount FROM payments WHERE invoice_no = $1 ORDER BY payment_no DESC LIMIT 1) AS amount FROM invoices WHERE invoice_no = $1) p
WHERE c.customer_no = p.customer_no`, inv); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, postLedger(`
SELECT i.customer_no, i.invoice_no, 'payment', p.currency, -p.amount, p.received_at
FROM invoices i JOIN LATERAL (SELECT * FROM payments WHERE invoice_no = i.invoice_no ORDER BY payment_no DESC LIMIT 1) p ON true
WHERE i.invoice_no = $1`), inv)
			return err
		})
		if err != nil {
			return done, fmt.Errorf("erp: pay invoice %d: %w", inv, err)
		}
		done++
	}
	return done, nil
}

// EditCustomer changes the payment terms of a random customer, and one
// time in three its e-mail; it returns 0 when there is no customer yet.
func (e *ERP) EditCustomer(ctx context.Context, conn *pgx.Conn) (int, error) {
	terms := []string{"NET15", "NET30", "NET45", "NET60"}[e.rng.IntN(4)]
	var q string
	if e.rng.IntN(3) == 0 {
		q = `UPDATE customers SET payment_terms = $1, email = 'erp+' || (random() * 1e6)::int || '@example.com' WHERE customer_no = (SELECT customer_no FROM customers ORDER BY random() LIMIT 1)`
	} else {
		q = `UPDATE customers SET payment_terms = $1 WHERE customer_no = (SELECT customer_no FROM customers ORDER BY random() LIMIT 1)`
	}
	tag, err := conn.Exec(ctx, q, terms)
	if err != nil {
		return 0, fmt.Errorf("erp: edit customer: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// postLedger returns the statement that posts the row sel selects
// (customer_no, invoice_no, kind, currency, amount, posted_at) to the
// general ledger: in the company that books its currency, numbered after
// that company's last entry.
func postLedger(sel string) string {
	return `
INSERT INTO ledger_entries (company, entry_no, customer_no, invoice_no, kind, currency, amount, posted_at)
SELECT c.company, coalesce((SELECT max(entry_no) FROM ledger_entries l WHERE l.company = c.company), 0) + 1, s.*
FROM (` + sel + `) s
CROSS JOIN LATERAL (SELECT CASE s.currency WHEN 'USD' THEN 'US01' WHEN 'JPY' THEN 'JP01' WHEN 'BHD' THEN 'BH01' WHEN 'GBP' THEN 'GB01' ELSE 'EU01' END AS company) c`
}

// MoveLedgerEntry moves a random ledger entry to another company (a
// posting corrected to the right legal entity), where it is numbered after
// that company's last entry: both columns of its key change. It returns
// the rows changed (0 when there is no entry yet).
func (e *ERP) MoveLedgerEntry(ctx context.Context, conn *pgx.Conn) (int, error) {
	to := []string{"EU01", "US01", "JP01", "BH01", "GB01"}[e.rng.IntN(5)]
	tag, err := conn.Exec(ctx, `
UPDATE ledger_entries l SET company = $1, entry_no = (SELECT coalesce(max(entry_no), 0) + 1 FROM ledger_entries WHERE company = $1)
WHERE (l.company, l.entry_no) = (SELECT company, entry_no FROM ledger_entries WHERE company <> $1 ORDER BY random() LIMIT 1)`, to)
	if err != nil {
		return 0, fmt.Errorf("erp: move ledger entry to %s: %w", to, err)
	}
	return int(tag.RowsAffected()), nil
}
