package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/internal/config"
)

// memberMapping adds to the example an entity whose two shared fields are
// stored differently on each side: status is 'A'/'I'/'S' in the CRM (an
// enum value map) and 'active'/'inactive'/'suspended' in the ERP; the CRM's
// application writes currencies in lower case ('eur'), the canonical
// currency is upper case.
func memberMapping(t *testing.T) string {
	t.Helper()
	base, err := os.ReadFile("../examples/order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(base) + `
  - name: member
    key: member_id
    fields:
      - {name: member_id,    type: uuid,     owner: crm}
      - {name: status,       type: enum,     owner: both, values: [active, inactive, suspended]}
      - {name: fee_currency, type: currency, owner: both}
    systems:
      crm:
        table: public.members
        key_column: id
        columns:
          member_id:    {column: id}
          status:       {column: status, enum: {A: active, I: inactive, S: suspended}}
          fee_currency: {column: fee_currency}
      erp:
        table: public.members
        key_column: crm_member_id
        columns:
          member_id:    {column: crm_member_id}
          status:       {column: status}
          fee_currency: {column: fee_currency}
`
}

func newMemberFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, fixtureOptions{mapping: memberMapping(t)})
	f.exec("crm", `CREATE TABLE members (id uuid PRIMARY KEY, status char(1) NOT NULL, fee_currency text NOT NULL);
		ALTER TABLE members REPLICA IDENTITY FULL`)
	f.exec("erp", `CREATE TABLE members (crm_member_id uuid PRIMARY KEY, status text, fee_currency char(3));
		ALTER TABLE members REPLICA IDENTITY FULL`)
	return f
}

// member reads a member's status and currency as a system's columns hold
// them.
func member(t *testing.T, c *pgx.Conn, system string, id uuid.UUID) string {
	t.Helper()
	q := `SELECT status || ' ' || fee_currency FROM members WHERE id = $1`
	if system == "erp" {
		q = `SELECT coalesce(status, '-') || ' ' || coalesce(fee_currency, '-') FROM members WHERE crm_member_id = $1`
	}
	var s string
	if err := c.QueryRow(context.Background(), q, id).Scan(&s); err != nil && err != pgx.ErrNoRows {
		t.Fatal(err)
	}
	return s
}

// waitMember waits until a member reads want on a system.
func waitMember(t *testing.T, c *pgx.Conn, system string, id uuid.UUID, want string) {
	t.Helper()
	waitFor(t, 30*time.Second, func() (bool, string) {
		got := member(t, c, system, id)
		return got == want, fmt.Sprintf("%s member %s is %q, want %q", system, id, got, want)
	})
}

// TestSharedFields_MappedEnumAndLowerCaseCurrencyConverge: a shared enum
// field with a value map and a currency column in lower case travel both
// ways: edits on each side arrive on the other (each of which waited
// forever when the capture and the sink hashed different texts),
// conflicting edits resolve by the later commit, versions recorded by an
// older duplex do not hold the flow, and nothing is left waiting or
// dead-lettered.
func TestSharedFields_MappedEnumAndLowerCaseCurrencyConverge(t *testing.T) {
	f := newMemberFixture(t)
	stop := f.inProcess()
	crm, erp := f.conn("crm"), f.conn("erp")
	m1, m2, m3 := uuid.New(), uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO members VALUES ($1, 'A', 'eur'), ($2, 'I', 'usd'), ($3, 'A', 'gbp')`, m1, m2, m3)
	waitMember(t, erp, "erp", m1, "active EUR")
	waitMember(t, erp, "erp", m2, "inactive USD")
	waitMember(t, erp, "erp", m3, "active GBP")

	// ERP → CRM: the CRM row holds 'A' and 'eur', recorded by the CRM's
	// capture as active and EUR.
	f.exec("erp", `UPDATE members SET status = 'inactive', fee_currency = 'CHF' WHERE crm_member_id = $1`, m1)
	waitMember(t, crm, "crm", m1, "I CHF")

	// CRM → ERP, then back: the CRM's 'jpy' must not hold the ERP's next
	// edit of the status.
	f.exec("crm", `UPDATE members SET status = 'A', fee_currency = 'jpy' WHERE id = $1`, m2)
	waitMember(t, erp, "erp", m2, "active JPY")
	f.exec("erp", `UPDATE members SET status = 'inactive' WHERE crm_member_id = $1`, m2)
	waitMember(t, crm, "crm", m2, "I jpy")

	// Conflicts, made while duplex is stopped so that neither edit has
	// travelled: the later commit wins, field by field, on both sides.
	stop()
	f.exec("crm", `UPDATE members SET status = 'I' WHERE id = $1`, m3)
	f.exec("erp", `UPDATE members SET fee_currency = 'CHF' WHERE crm_member_id = $1`, m3)
	f.exec("erp", `UPDATE members SET status = 'suspended' WHERE crm_member_id = $1`, m3)
	f.exec("crm", `UPDATE members SET fee_currency = 'sek' WHERE id = $1`, m3)
	stop = f.inProcess()
	waitMember(t, crm, "crm", m3, "S sek")
	waitMember(t, erp, "erp", m3, "suspended SEK")
	conflicts := int64(0)
	for _, st := range f.app.Flows {
		conflicts += st.Snapshot().Conflicts
	}
	if conflicts < 2 {
		t.Errorf("%d conflicts counted, want at least 2 (status and currency of one member)", conflicts)
	}

	// After an upgrade: versions recorded by an older duplex hashed the
	// column text in the sink ('I'), and one that matches nothing. Neither
	// may hold the flow.
	stop()
	f.exec("crm", `UPDATE duplex.field_versions SET value_hash = md5('I') WHERE entity = 'member' AND key = $1 AND field = 'status'`, m1.String())
	f.exec("crm", `UPDATE duplex.field_versions SET value_hash = md5('nothing') WHERE entity = 'member' AND key = $1 AND field = 'fee_currency'`, m1.String())
	if n := queryInt(t, crm, `SELECT count(*) FROM duplex.field_versions WHERE entity = 'member' AND key = $1 AND value_hash NOT LIKE 'canonical:%'`, m1.String()); n != 2 {
		t.Fatalf("%d legacy versions of member %s set up, want 2", n, m1)
	}
	f.exec("erp", `UPDATE members SET status = 'active', fee_currency = 'NOK' WHERE crm_member_id = $1`, m1)
	f.inProcess()
	waitMember(t, crm, "crm", m1, "A NOK")

	f.waitBothConverged(time.Minute)
	for _, l := range f.app.Lag(context.Background()) {
		if l.State == "waiting" || l.DeadLetters != 0 {
			t.Errorf("flow %s: state %s, %d dead letters; last error %q", l.Flow, l.State, l.DeadLetters, l.LastError)
		}
	}
	assertNoDeadLetters(t, f)
}

// TestSharedFields_EndlessWaitIsShownThenDeadLettered: a local write the
// capture never records (its recorded version altered behind duplex's back)
// holds an incoming write of the field: /readyz fails after
// wait_alert_after naming flow, entity, key and field, the event is
// dead-lettered after max_wait with that reason, and the flow moves on.
func TestSharedFields_EndlessWaitIsShownThenDeadLettered(t *testing.T) {
	f := newMemberFixture(t)
	f.tweak = func(c *config.Config) {
		for _, fl := range c.Flows {
			fl.MaxWait, fl.WaitAlertAfter = 6*time.Second, time.Second
		}
	}
	f.inProcess()
	crm, erp := f.conn("crm"), f.conn("erp")
	m, next := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO members VALUES ($1, 'A', 'eur')`, m)
	waitMember(t, erp, "erp", m, "active EUR")
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := queryInt(t, crm, `SELECT count(*) FROM duplex.field_versions WHERE entity = 'member' AND key = $1 AND field = 'status'`, m.String())
		return n == 1, "the CRM's capture has not recorded the status yet"
	})
	// A hash under duplex's key (hmac:<key id>:<HMAC>) of no value
	// this field ever held.
	f.exec("crm", `UPDATE duplex.field_versions SET value_hash = regexp_replace(value_hash, ':[0-9a-f]+$', ':' || repeat('0', 64)) WHERE entity = 'member' AND key = $1 AND field = 'status' AND value_hash LIKE 'hmac:%'`,
		m.String())
	f.exec("erp", `UPDATE members SET status = 'inactive' WHERE crm_member_id = $1`, m)

	ctx := context.Background()
	var reason string
	waitFor(t, 30*time.Second, func() (bool, string) {
		r := f.app.Ready(ctx)
		reason = r.Checks["flow to-crm"]
		return !r.Ready && strings.Contains(reason, "waiting for"), fmt.Sprintf("readiness %+v", r)
	})
	for _, want := range []string{"entity member", "key " + m.String(), "field status", "wait_alert_after 1s"} {
		if !strings.Contains(reason, want) {
			t.Errorf("/readyz reason %q does not say %q", reason, want)
		}
	}

	dls := readDeadLetters(t, f.js(), 1)
	if len(dls) != 1 || dls[0].Flow != "to-crm" || dls[0].Entity != "member" || dls[0].Key != m.String() ||
		!strings.Contains(dls[0].Error, "field status") || !strings.Contains(dls[0].Error, "max_wait 6s") {
		t.Fatalf("dead letters %+v, want one of to-crm for member %s naming field status and max_wait", dls, m)
	}
	if got := member(t, crm, "crm", m); got != "A eur" {
		t.Errorf("CRM member %s is %q after the dead letter, want it untouched (\"A eur\")", m, got)
	}

	// The flow moves on, and is ready again.
	f.exec("crm", `INSERT INTO members VALUES ($1, 'I', 'usd')`, next)
	waitMember(t, erp, "erp", next, "inactive USD")
	f.exec("erp", `UPDATE members SET fee_currency = 'CHF' WHERE crm_member_id = $1`, next)
	waitMember(t, crm, "crm", next, "I CHF")
	waitFor(t, 30*time.Second, func() (bool, string) {
		r := f.app.Ready(ctx)
		return r.Checks["flow to-crm"] == "running", fmt.Sprintf("readiness %+v", r)
	})
}

// TestSharedFields_TwoWritesInOneTransaction: a transaction that inserts
// a row and updates its shared field (two versions of the field with one
// commit time) is recorded with the value the row ends with, so that the
// other system's later edit of the field is applied at once. The capture
// recorded the first statement's value: the sink took the row's value for
// a local write not recorded yet, waited for its record until max_wait,
// and dead-lettered the other system's edit.
func TestSharedFields_TwoWritesInOneTransaction(t *testing.T) {
	f := newMemberFixture(t)
	f.tweak = func(c *config.Config) {
		for _, fl := range c.Flows {
			fl.MaxWait = 6 * time.Second
		}
	}
	f.inProcess()
	crm, erp := f.conn("crm"), f.conn("erp")
	m := uuid.New()
	ctx := context.Background()
	tx, err := crm.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO members VALUES ($1, 'A', 'eur')`, m); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE members SET status = 'I' WHERE id = $1`, m); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitMember(t, erp, "erp", m, "inactive EUR")
	f.exec("erp", `UPDATE members SET status = 'suspended' WHERE crm_member_id = $1`, m)
	waitMember(t, crm, "crm", m, "S eur")
	assertNoDeadLetters(t, f)
}
