// Package workload generates order-to-cash traffic in a CRM database of the
// example schema: accounts in several currencies, orders with lines,
// updates and deletes. It is deterministic for a seed.
package workload

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/shopspring/decimal"
)

// Currencies used, with their ISO 4217 decimals: 0, 2 and 3.
var Currencies = []string{"EUR", "USD", "JPY", "BHD", "GBP"}

type order struct {
	id    uuid.UUID
	lines []uuid.UUID
}

type account struct {
	id       uuid.UUID
	currency string
	orders   []*order
}

// Generator produces random CRM transactions. Not safe for concurrent use.
type Generator struct {
	rng      *rand.Rand
	accounts []*account
	// MaxLines bounds lines per order (default 5).
	MaxLines int
	// KeepOrders: never delete an order (an ERP that invoices them would
	// refuse the delete, as a real one does).
	KeepOrders bool
}

// New returns a generator for a seed.
func New(seed uint64) *Generator {
	return &Generator{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), MaxLines: 5}
}

// Amount returns a random amount with the given decimals.
func (g *Generator) Amount(maxUnits int64, decimals int32) decimal.Decimal {
	scale := int64(1)
	for i := int32(0); i < decimals; i++ {
		scale *= 10
	}
	return decimal.New(g.rng.Int64N(maxUnits*scale)+1, -decimals)
}

func (g *Generator) creditLimit(cur string) decimal.Decimal {
	if cur == "JPY" {
		return g.Amount(5_000_000, 0)
	}
	return g.Amount(100_000, 2)
}

// Step runs one random transaction and returns how many rows it changed.
func (g *Generator) Step(ctx context.Context, conn *pgx.Conn) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("workload: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	n, err := g.step(ctx, tx)
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("workload: commit: %w", err)
	}
	return n, nil
}

func (g *Generator) step(ctx context.Context, tx pgx.Tx) (int, error) {
	r := g.rng.IntN(100)
	switch {
	case len(g.accounts) < 5 || r < 20:
		return g.NewAccount(ctx, tx)
	case r < 60:
		return g.NewOrder(ctx, tx, g.accounts[g.rng.IntN(len(g.accounts))], 1+g.rng.IntN(g.MaxLines))
	case r < 75:
		a := g.accounts[g.rng.IntN(len(g.accounts))]
		_, err := tx.Exec(ctx, `UPDATE accounts SET credit_limit = $2, email = $3, updated_at = now() WHERE id = $1`, a.id, g.creditLimit(a.currency).String(), fmt.Sprintf("ap+%d@example.com", g.rng.IntN(1e6)))
		return 1, wrap("update account", err)
	case r < 87:
		o := g.anyOrder()
		if o == nil {
			return g.NewAccount(ctx, tx)
		}
		status := []string{"open", "won", "cancelled"}[g.rng.IntN(3)]
		_, err := tx.Exec(ctx, `UPDATE orders SET status = $2 WHERE id = $1`, o.id, status)
		return 1, wrap("update order", err)
	case r < 95:
		o := g.anyOrder()
		if o == nil || len(o.lines) == 0 {
			return g.NewAccount(ctx, tx)
		}
		i := g.rng.IntN(len(o.lines))
		_, err := tx.Exec(ctx, `DELETE FROM order_lines WHERE id = $1`, o.lines[i])
		o.lines = append(o.lines[:i], o.lines[i+1:]...)
		return 1, wrap("delete line", err)
	default:
		a := g.accounts[g.rng.IntN(len(g.accounts))]
		if len(a.orders) == 0 || g.KeepOrders {
			return g.NewAccount(ctx, tx)
		}
		i := g.rng.IntN(len(a.orders))
		o := a.orders[i]
		_, err := tx.Exec(ctx, `DELETE FROM orders WHERE id = $1`, o.id)
		a.orders = append(a.orders[:i], a.orders[i+1:]...)
		return 1 + len(o.lines), wrap("delete order", err)
	}
}

func (g *Generator) anyOrder() *order {
	for range 5 {
		a := g.accounts[g.rng.IntN(len(g.accounts))]
		if len(a.orders) > 0 {
			return a.orders[g.rng.IntN(len(a.orders))]
		}
	}
	return nil
}

// NewAccount inserts an account.
func (g *Generator) NewAccount(ctx context.Context, tx pgx.Tx) (int, error) {
	cur := Currencies[g.rng.IntN(len(Currencies))]
	a := &account{id: uuid.New(), currency: cur}
	_, err := tx.Exec(ctx, `INSERT INTO accounts (id, name, email, country, currency, credit_limit) VALUES ($1, $2, $3, $4, $5, $6)`,
		a.id, fmt.Sprintf("Customer %d", g.rng.IntN(1e6)), fmt.Sprintf("c%d@example.com", g.rng.IntN(1e6)), []string{"DE", "US", "JP", "BH", "GB"}[g.rng.IntN(5)], cur, g.creditLimit(cur).String())
	if err != nil {
		return 0, wrap("insert account", err)
	}
	g.accounts = append(g.accounts, a)
	return 1, nil
}

// NewOrder inserts an order with lines whose total is the sum of the lines.
func (g *Generator) NewOrder(ctx context.Context, tx pgx.Tx, a *account, lines int) (int, error) {
	o := &order{id: uuid.New()}
	total := decimal.Zero
	type line struct {
		id         uuid.UUID
		qty, price decimal.Decimal
	}
	ls := make([]line, lines)
	decimals := int32(2)
	if a.currency == "JPY" {
		decimals = 0 // yen prices have no minor unit
	}
	for i := range ls {
		ls[i] = line{id: uuid.New(), qty: g.Amount(20, 0), price: g.Amount(500, decimals)}
		total = total.Add(ls[i].qty.Mul(ls[i].price))
	}
	if _, err := tx.Exec(ctx, `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, $3, $4, 'open', $5)`,
		o.id, a.id, a.currency, total.String(), time.Now().UTC()); err != nil {
		return 0, wrap("insert order", err)
	}
	ids := make([]uuid.UUID, lines)
	skus := make([]string, lines)
	qtys := make([]string, lines)
	prices := make([]string, lines)
	for i, l := range ls {
		ids[i], skus[i], qtys[i], prices[i] = l.id, fmt.Sprintf("SKU-%04d", g.rng.IntN(10000)), l.qty.String(), l.price.String()
		o.lines = append(o.lines, l.id)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO order_lines (id, order_id, sku, quantity, unit_price)
		SELECT unnest($1::uuid[]), $2, unnest($3::text[]), unnest($4::numeric[]), unnest($5::numeric[])`, ids, o.id, skus, qtys, prices); err != nil {
		return 0, wrap("insert lines", err)
	}
	a.orders = append(a.orders, o)
	return 1 + lines, nil
}

// wrap adds the operation to an error.
func wrap(what string, err error) error {
	if err != nil {
		return fmt.Errorf("workload: %s: %w", what, err)
	}
	return nil
}
