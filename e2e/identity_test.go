package e2e

import (
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestReplicaIdentity_UsingIndex: a source table keyed for duplex by a
// unique column that is not its primary key, with REPLICA IDENTITY USING
// INDEX on that column, mirrors inserts, updates and deletes (the example's
// other tables cover DEFAULT and FULL).
func TestReplicaIdentity_UsingIndex(t *testing.T) {
	base, err := os.ReadFile("../examples/order-to-cash/mapping.yaml")
	if err != nil {
		t.Fatal(err)
	}
	mapping := string(base) + `
  - name: tag
    key: tag_id
    fields:
      - {name: tag_id, type: uuid, owner: crm}
      - {name: label,  type: text, owner: crm}
    systems:
      crm:
        table: public.tags
        key_column: ext_id
        columns:
          tag_id: {column: ext_id}
          label:  {column: label}
      erp:
        table: public.tags
        key_column: crm_tag_id
        columns:
          tag_id: {column: crm_tag_id}
          label:  {column: label}
`
	f := newFixture(t, fixtureOptions{mapping: mapping})
	f.exec("crm", `CREATE TABLE tags (id bigserial PRIMARY KEY, ext_id uuid NOT NULL, label text NOT NULL);
		CREATE UNIQUE INDEX tags_ext_id ON tags (ext_id);
		ALTER TABLE tags REPLICA IDENTITY USING INDEX tags_ext_id`)
	f.exec("erp", `CREATE TABLE tags (crm_tag_id uuid PRIMARY KEY, label text NOT NULL)`)
	f.inProcess()
	a, b := uuid.New(), uuid.New()
	f.exec("crm", `INSERT INTO tags (ext_id, label) VALUES ($1, 'a'), ($2, 'b')`, a, b)
	f.exec("crm", `UPDATE tags SET label = 'a2' WHERE ext_id = $1`, a)
	f.exec("crm", `DELETE FROM tags WHERE ext_id = $1`, b)
	erp := f.conn("erp")
	waitFor(t, 30*time.Second, func() (bool, string) {
		n := queryInt(t, erp, `SELECT count(*) FROM tags`)
		m := queryInt(t, erp, `SELECT count(*) FROM tags WHERE crm_tag_id = $1 AND label = 'a2'`, a)
		return n == 1 && m == 1, "ERP tags not mirrored yet"
	})
}
