package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/duplex-cdc/duplex/internal/audit"
)

// TestAudit_OperatorActionsRecorded: dlq retry (refused, and of a dead
// letter that does not exist), dlq drop, an offline replay, backfill
// (one accepted, one whose --where is refused), resync, a replay asked
// of a running duplex (by duplex replay, and over HTTP for a flow it does
// not have) each append one record to DUPLEX_AUDIT, with the OS user,
// the host, the arguments and the right outcome; duplex audit list shows
// them (table and JSON, --limit), the commands log them, and the stream
// refuses to purge or delete them.
func TestAudit_OperatorActionsRecorded(t *testing.T) {
	f := newFixture(t, fixtureOptions{})
	ctx := context.Background()
	f.exec("erp", `ALTER TABLE customers ADD CONSTRAINT no_poison CHECK (name NOT LIKE 'POISON%')`)
	stop := f.inProcess()
	poison := uuid.New()
	f.exec("crm", `INSERT INTO accounts (id, name, country, currency) VALUES ($1, 'POISON', 'DE', 'EUR')`, poison)
	readDeadLetters(t, f.js(), 1)
	stop()
	code, out := f.duplexCLI("dlq", "list")
	var seq string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, poison.String()) {
			seq = strings.Fields(line)[0]
		}
	}
	if code != 0 || seq == "" {
		t.Fatalf("dlq list exited %d without the poison:\n%s", code, out)
	}
	if code, out = f.duplexCLI("audit", "list"); code != 0 || !strings.Contains(out, "no operator actions recorded") {
		t.Errorf("audit list before any action exited %d:\n%s", code, out)
	}

	type step struct {
		args    []string
		command string
		ok      bool
	}
	steps := []step{
		{[]string{"dlq", "retry", seq}, "dlq retry", false}, // the CHECK still refuses it
		{[]string{"dlq", "retry", "999999"}, "dlq retry", false},
		{[]string{"dlq", "drop", seq}, "dlq drop", true},
		{[]string{"replay", "--flow", "to-erp", "--from-seq", "1", "--listen", "127.0.0.1:1"}, "replay", true},
		{[]string{"backfill", "--flow", "to-erp", "--table", "accounts", "--no-wait"}, "backfill", true},
		{[]string{"backfill", "--flow", "to-erp", "--table", "accounts", "--no-wait", "--where", "true; DELETE FROM accounts"}, "backfill", false},
		{[]string{"resync", "--flow", "to-erp", "--table", "accounts"}, "resync", true},
	}
	for _, s := range steps {
		code, out := f.duplexCLI(s.args...)
		if (code == 0) != s.ok {
			t.Errorf("duplex %s exited %d, want success %v:\n%s", strings.Join(s.args, " "), code, s.ok, out)
		}
		if !strings.Contains(out, "operator action") || !strings.Contains(out, "command="+fmt.Sprintf("%q", s.command)) && !strings.Contains(out, "command="+s.command) {
			t.Errorf("duplex %s did not log its record:\n%s", strings.Join(s.args, " "), out)
		}
	}

	// A replay asked of a running duplex: it records it, with the user
	// and host duplex replay declares; one asked over HTTP for a flow it
	// does not run is recorded as failed.
	c := f.startChild()
	defer c.stop(t)
	waitFor(t, 60*time.Second, func() (bool, string) {
		code, body := readyz(t, c.listen)
		return code == http.StatusOK, fmt.Sprintf("readyz %d %s", code, body)
	})
	if code, out := f.duplexCLI("replay", "--flow", "to-erp", "--from-seq", "1", "--listen", c.listen); code != 0 || !strings.Contains(out, "the running duplex is replaying") {
		t.Errorf("replay through the running duplex exited %d:\n%s", code, out)
	}
	code, body := httpDo(t, "POST", "http://"+c.listen+"/api/replay", `{"flow": "nope", "from_seq": 1}`,
		map[string]string{"Authorization": "Bearer " + c.token(), "Content-Type": "application/json"})
	if code != http.StatusConflict {
		t.Errorf("POST /api/replay of a flow that does not run: %d %s", code, body)
	}
	steps = append(steps, step{[]string{"replay", "--flow", "to-erp", "--from-seq", "1", "--listen", c.listen}, "replay", true},
		step{[]string{"POST", "/api/replay", "flow=nope", "from_seq=1"}, "replay", false})

	code, out = f.duplexCLI("audit", "list", "--json", "--limit", "0")
	var recs []audit.Record
	if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "]")+1]), &recs); code != 0 || err != nil {
		t.Fatalf("audit list --json exited %d (%v):\n%s", code, err, out)
	}
	if len(recs) != len(steps) {
		t.Fatalf("%d audit records, want %d (one per action):\n%s", len(recs), len(steps), out)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	for i, s := range steps {
		r := recs[i]
		want := audit.OK
		if !s.ok {
			want = audit.Failed
		}
		if r.Command != s.command || r.Outcome != want || r.Seq == 0 || time.Since(r.Time) > 5*time.Minute {
			t.Errorf("record %d: %+v; want command %q, outcome %s", i, r, s.command, want)
		}
		if i == len(steps)-1 {
			if r.User != "unknown" || r.Host != "127.0.0.1" || !strings.Contains(r.Detail, "flow nope is not running") {
				t.Errorf("record of the HTTP request: %+v", r)
			}
		} else if r.User != me.Username || r.Host != host {
			t.Errorf("record %d: user %q host %q, want %q %q", i, r.User, r.Host, me.Username, host)
		}
		for _, a := range s.args {
			if !slices.Contains(r.Args, a) {
				t.Errorf("record %d: arguments %q lack %q", i, r.Args, a)
			}
		}
	}
	if d := recs[1].Detail; !strings.Contains(d, "999999") {
		t.Errorf("record of the retry of a missing dead letter: detail %q", d)
	}
	if d := recs[5].Detail; !strings.Contains(d, "DELETE") && !strings.Contains(d, ";") {
		t.Errorf("record of the refused backfill: detail %q", d)
	}

	code, out = f.duplexCLI("audit", "list", "--limit", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "SEQ") || !strings.Contains(lines[1], "replay") || !strings.Contains(lines[2], "failed") {
		t.Errorf("audit list --limit 2 exited %d, want a header and the last two records:\n%s", code, out)
	}

	// Append-only: the operator itself cannot purge or delete a record.
	s, err := f.js().Stream(ctx, audit.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx); err == nil {
		t.Errorf("%s was purged", audit.Stream)
	}
	if err := s.DeleteMsg(ctx, recs[0].Seq); err == nil {
		t.Errorf("a record of %s was deleted", audit.Stream)
	}
}
