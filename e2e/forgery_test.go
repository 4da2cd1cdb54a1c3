package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/internal/app"
	"github.com/duplex-cdc/duplex/internal/config"
	"github.com/duplex-cdc/duplex/internal/natsembed"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

// forgery is a message someone other than the CRM's capture puts on
// duplex.crm.tx, meant to make the to-erp flow do what the mapping
// forbids (issue 12, "Anything on the bus is applied").
type forgery struct {
	name string
	tx   transform.Tx
	// mapping is set when the event breaks the mapping, so that a flow
	// refuses it even validly signed; the others (a forged position, a
	// redo) only a signature keeps out.
	mapping bool
}

// forgeries returns the forgeries of issue 12 against account acc (ERP
// invoice inv), at commit LSNs just above base so that a sink would
// apply them.
func forgeries(acc uuid.UUID, inv int64, base capture.LSN) []forgery {
	now := time.Now().UTC()
	n := 0
	ev := func(lsn capture.LSN, source, entity string, op transform.Op, key string, data map[string]any) transform.Event {
		n++
		return transform.Event{Version: 1, ID: fmt.Sprintf("crm:forged-%s:%d", lsn, n), Source: source, Entity: entity, Op: op, Key: key,
			Pos: transform.Position{LSN: lsn, CommitTime: now}, Data: data}
	}
	tx := func(lsn capture.LSN, evs ...transform.Event) transform.Tx {
		return transform.Tx{Version: 1, Source: "crm", CommitLSN: lsn, EndLSN: lsn + 1, CommitTime: now, Xid: 4242, Last: true, Events: evs}
	}
	a := acc.String()
	frozen := tx(base+6, ev(base+6, "crm", "customer", transform.OpUpsert, a, map[string]any{"account_id": a, "email": "frozen@example.com"}))
	frozen.Events[0].Pos.CommitTime = time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	frozen.CommitTime = frozen.Events[0].Pos.CommitTime
	redo := tx(1, ev(1, "crm", "customer", transform.OpUpsert, a, map[string]any{"account_id": a, "name": "Rolled back"}))
	redo.Redo, redo.Events[0].Redo = true, true
	half := tx(base+8, ev(base+8, "crm", "customer", transform.OpUpsert, a, map[string]any{"account_id": a, "name": "Half"}))
	half.Last = false
	return []forgery{
		{name: "source erp writes an ERP-owned field", mapping: true,
			tx: tx(base+1, ev(base+1, "erp", "customer", transform.OpUpsert, a, map[string]any{"account_id": a, "payment_terms": "NET365"}))},
		{name: "CRM writes an ERP-owned field", mapping: true,
			tx: tx(base+2, ev(base+2, "crm", "customer", transform.OpUpsert, a, map[string]any{"account_id": a, "payment_terms": "NET365"}))},
		{name: "delete of an entity the CRM does not own", mapping: true,
			tx: tx(base+3, ev(base+3, "crm", "invoice", transform.OpDelete, fmt.Sprint(inv), nil))},
		{name: "truncate although the mapping says refuse", mapping: true,
			tx: tx(base+4, ev(base+4, "crm", "order", transform.OpTruncate, "", nil))},
		{name: "amount 1e2000000000", mapping: true,
			tx: tx(base+5, ev(base+5, "crm", "customer", transform.OpUpsert, a, map[string]any{"account_id": a, "currency": "EUR",
				"credit_limit": map[string]any{"amount": "1e2000000000", "currency": "EUR"}}))},
		{name: "shared field version dated 2099", mapping: true, tx: frozen},
		{name: "applied position FFFFFFFF/FFFFFFF0", tx: tx(0xFFFFFFFFFFFFFFF0)},
		{name: "redo rolls a value back", tx: redo},
		{name: "one chunk whose last part never comes", mapping: true, tx: half},
	}
}

// TestForgery_BusMessagesNotFromTheCaptureApplyNothing publishes each
// forgery of issue 12 on duplex.crm.tx, with an embedded NATS:
//
//  1. with a plain NATS client holding no credentials: refused at connect;
//  2. with the CRM capture's own credentials (its nkey seed from the data
//     directory) but unsigned, signed by a key the flow does not trust,
//     or signed with the real key and changed afterwards: each is
//     dead-lettered (refused, by reason) and applies nothing;
//  3. signed with the CRM's real signing key, the forgeries that break
//     the mapping: each event is dead-lettered naming entity, key and
//     reason, and applies nothing; the chunk whose last part never comes
//     is given up after max_wait.
//
// Genuine CRM changes made after each round arrive in the ERP, and the
// ERP's rows the forgeries aimed at are as they were.
func TestForgery_BusMessagesNotFromTheCaptureApplyNothing(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	f.setNATS("nats:\n  embedded: true\n")
	f.tweak = func(c *config.Config) { c.Flow("to-erp").MaxWait = 3 * time.Second }
	f.inProcess()
	ctx := context.Background()
	erp := f.conn("erp")

	// Genuine rows: a CRM account with an order, and an ERP invoice for it.
	acc, ord := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, email, currency, credit_limit) VALUES ($1, 'Alpha', 'a@example.com', 'EUR', 100.00)`, acc)
	f.exec("crm", `INSERT INTO orders (id, account_id, currency, total, status, ordered_at) VALUES ($1, $2, 'EUR', 10.00, 'open', now())`, ord, acc)
	waitFor(t, time.Minute, func() (bool, string) {
		return queryInt(t, erp, `SELECT count(*) FROM sales_orders WHERE crm_order_id = $1`, ord) == 1, "the order has not reached the ERP"
	})
	var inv int64
	if err := erp.QueryRow(ctx, `INSERT INTO invoices (order_no, customer_no, currency, amount, status, issued_at, due_date)
		SELECT order_no, customer_no, 'EUR', 10, 'open', now(), current_date FROM sales_orders WHERE crm_order_id = $1 RETURNING invoice_no`, ord).Scan(&inv); err != nil {
		t.Fatal(err)
	}
	// unchanged checks the ERP rows the forgeries aim at.
	unchanged := func(round, name string) {
		t.Helper()
		var terms, email, got string
		var limit int64
		if err := erp.QueryRow(ctx, `SELECT payment_terms, coalesce(email, ''), name, credit_limit_minor FROM customers WHERE crm_account_id = $1`, acc).Scan(&terms, &email, &got, &limit); err != nil {
			t.Fatalf("%s: %v", round, err)
		}
		if terms != "NET30" || email != "a@example.com" || got != name || limit != 10000 {
			t.Errorf("%s: ERP customer has payment_terms %q, email %q, name %q, credit_limit_minor %d; want NET30, a@example.com, %q, 10000",
				round, terms, email, got, limit, name)
		}
		if n := queryInt(t, erp, `SELECT count(*) FROM invoices WHERE invoice_no = $1`, inv); n != 1 {
			t.Errorf("%s: the ERP invoice %d was deleted", round, inv)
		}
		if n := queryInt(t, erp, `SELECT count(*) FROM sales_orders WHERE crm_order_id = $1`, ord); n != 1 {
			t.Errorf("%s: the ERP sales order was removed (truncate)", round)
		}
	}
	// genuine makes a CRM change after the forgeries and waits for it in
	// the ERP: the flow neither stalled nor skipped it.
	genuine := func(round, name string) {
		t.Helper()
		f.exec("crm", `UPDATE accounts SET name = $2 WHERE id = $1`, acc, name)
		waitFor(t, time.Minute, func() (bool, string) {
			return queryInt(t, erp, `SELECT count(*) FROM customers WHERE crm_account_id = $1 AND name = $2`, acc, name) == 1,
				round + ": the genuine change after the forgeries has not reached the ERP"
		})
		unchanged(round, name)
	}
	applied := func() capture.LSN { return f.app.Flows["to-erp"].Snapshot().LastPosition.LSN }
	genuine("before", "Alpha 1")

	url := f.app.JetStream().Conn().ConnectedUrl()
	encode := func(tx *transform.Tx) *nats.Msg {
		b, err := json.Marshal(tx)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(pipeline.Subject("crm"))
		m.Data = b
		return m
	}
	msgID := func(round string, i int) string { return fmt.Sprintf("forged:%s:%d", round, i) }

	// 1. No credentials: no connection, so nothing can be published.
	for _, fg := range forgeries(acc, inv, applied()) {
		nc, err := nats.Connect(url, nats.MaxReconnects(0), nats.Timeout(5*time.Second))
		if err == nil {
			js, _ := jetstream.New(nc)
			_, perr := js.PublishMsg(ctx, encode(&fg.tx))
			nc.Close()
			t.Fatalf("%s: a client without credentials connected (publish: %v)", fg.name, perr)
		}
		if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: connect without credentials: %v, want an authorization violation", fg.name, err)
		}
	}

	// 2. The capture's credentials, no valid signature.
	ids, err := natsembed.LoadIdentities(filepath.Join(f.dir, natsembed.IdentityDirName), []string{pipeline.CaptureIdentity("crm")}, false)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, ids[pipeline.CaptureIdentity("crm")].ConnectOption(),
		nats.CustomInboxPrefix(pipeline.InboxPrefix(pipeline.CaptureIdentity("crm"))))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(fg string, m *nats.Msg, id string) {
		t.Helper()
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := cjs.PublishMsg(pctx, m, jetstream.WithMsgID(id)); err != nil {
			t.Fatalf("%s: publish with the capture's credentials: %v", fg, err)
		}
	}
	seed, err := os.ReadFile(filepath.Join(f.dir, app.SigningDirName, "crm.nk"))
	if err != nil {
		t.Fatal(err)
	}
	real, err := pipeline.NewSigner("crm", seed)
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := nkeys.CreateUser()
	strangerSeed, _ := kp.Seed()
	stranger, _ := pipeline.NewSigner("crm", strangerSeed)
	before := f.app.Flows["to-erp"].Snapshot().Refused
	fs := forgeries(acc, inv, applied())
	for i, fg := range fs {
		publish(fg.name, encode(&fg.tx), msgID("unsigned", i))
	}
	{
		m := encode(&fs[0].tx)
		if err := stranger.Sign(m, msgID("stranger", 0)); err != nil {
			t.Fatal(err)
		}
		publish("signed by another key", m, msgID("stranger", 0))
		m = encode(&fs[2].tx)
		if err := real.Sign(m, msgID("changed", 0)); err != nil {
			t.Fatal(err)
		}
		m.Data = []byte(strings.Replace(string(m.Data), `"op":"delete"`, `"op":"delete" `, 1))
		publish("signed, then changed", m, msgID("changed", 0))
	}
	// The genuine change comes after the forgeries on the stream: once it
	// is in the ERP, the flow has been through them.
	genuine("capture's credentials, unsigned", "Alpha 2")
	waitFor(t, 10*time.Second, func() (bool, string) {
		r := f.app.Flows["to-erp"].Snapshot().Refused
		return r["unsigned"]-before["unsigned"] == int64(len(fs)) && r["unknown key"]-before["unknown key"] == 1 && r["bad signature"]-before["bad signature"] == 1,
			fmt.Sprintf("refused %v, want %d more unsigned, one more unknown key and bad signature", r, len(fs))
	})

	// 3. Signed with the CRM's real key, breaking the mapping.
	refusedBefore := f.app.Flows["to-erp"].Snapshot().Refused["mapping"]
	want := 0 // events that break the mapping, each refused by the flow
	for i, fg := range forgeries(acc, inv, applied()) {
		if !fg.mapping {
			continue
		}
		m := encode(&fg.tx)
		if err := real.Sign(m, msgID("signed", i)); err != nil {
			t.Fatal(err)
		}
		publish(fg.name, m, msgID("signed", i))
		want++
	}
	want -= 2 // the decimal is refused by the sink as it reads it, the chunk by max_wait
	// The genuine change comes after them: applied once the flow gave up
	// the chunk whose last part never comes (max_wait), and with every
	// other forgery dead-lettered rather than applied.
	genuine("signed, breaking the mapping", "Alpha 3")
	if n := f.app.Flows["to-erp"].Snapshot().Refused["mapping"] - refusedBefore; n != int64(want) {
		t.Errorf("refused by the mapping: %d more, want %d", n, want)
	}
	dls, err := pipeline.ListDeadLetters(ctx, f.app.JetStream(), "to-erp", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"names source \"erp\"", "field payment_terms: the field is owned by erp", "invoice key " + fmt.Sprint(inv),
		"does not propagate truncates", "field email: shared field's commit time 2099", "beyond the range of a PostgreSQL numeric", "not its last within max_wait"} {
		found := false
		for _, d := range dls {
			found = found || strings.Contains(d.Error, want)
		}
		if !found {
			t.Errorf("no dead letter says %q", want)
		}
	}
	for _, d := range dls {
		if d.Event != nil && d.Entity == "" {
			t.Errorf("dead letter %d names no entity: %s", d.Seq, d.Error)
		}
	}
}
