package transform_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/duplex-cdc/duplex/transform"
)

// chainMapping maps entities a, b, c (in that order) to tables public.a,
// public.b, public.c on both systems, all fields owned by crm; refs adds
// "x refers to y" as a mapping ref of x's field y_id.
func chainMapping(t *testing.T, refs ...[2]string) *transform.Mapping {
	t.Helper()
	var b strings.Builder
	b.WriteString("version: 1\nsystems: [crm, erp]\nentities:\n")
	for _, e := range []string{"a", "b", "c"} {
		fields := "      - {name: id, type: uuid, owner: crm}\n"
		cols := "id: {column: id}"
		erpCols := cols
		for _, r := range refs {
			if r[0] == e {
				fields += fmt.Sprintf("      - {name: %s_id, type: uuid, owner: crm}\n", r[1])
				cols += fmt.Sprintf(", %[1]s_id: {column: %[1]s_id}", r[1])
				erpCols += fmt.Sprintf(", %[1]s_id: {column: %[1]s_ref, ref: {entity: %[1]s, column: id}}", r[1])
			}
		}
		fmt.Fprintf(&b, `  - name: %[1]s
    key: id
    fields:
%[2]s    systems:
      crm: {table: public.%[1]s, key_column: id, columns: {%[3]s}}
      erp: {table: public.%[1]s, key_column: id, columns: {%[4]s}}
`, e, fields, cols, erpCols)
	}
	m, err := transform.Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// fkCatalog is an ERP catalog of tables a, b, c with the given foreign
// keys: {table, constraint, referenced table, "deferrable" or ""}.
func fkCatalog(fks ...[4]string) *transform.Catalog {
	cat := &transform.Catalog{Tables: map[string]*transform.TableInfo{}}
	for _, n := range []string{"a", "b", "c"} {
		cat.Tables["public."+n] = &transform.TableInfo{Columns: map[string]*transform.ColumnInfo{}, UniqueColumns: map[string]bool{}}
	}
	for _, f := range fks {
		ti := cat.Tables["public."+f[0]]
		ti.ForeignKeys = append(ti.ForeignKeys, transform.ForeignKey{Schema: "public", Name: f[1], RefTable: "public." + f[2], Deferrable: f[3] == "deferrable"})
	}
	return cat
}

func TestMapping_WriteOrder(t *testing.T) {
	for _, tc := range []struct {
		name         string
		refs         [][2]string
		fks          [][4]string
		write        func(*transform.Entity) bool
		want         string // entity names in write order
		wantDeferred string
		wantErr      []string
	}{
		{name: "mapping order without refs or keys", want: "a b c"},
		{name: "refs", refs: [][2]string{{"a", "c"}}, want: "c a b"},
		{name: "foreign keys of the target", fks: [][4]string{{"a", "a_b_fk", "b", ""}, {"b", "b_c_fk", "c", ""}}, want: "c b a"},
		{name: "a table's key to itself is no edge", fks: [][4]string{{"a", "a_a_fk", "a", ""}}, want: "a b c"},
		{name: "keys to a table the flow does not write are left out", fks: [][4]string{{"a", "a_b_fk", "b", ""}},
			write: func(e *transform.Entity) bool { return e.Name != "b" }, want: "a b c"},
		{name: "deferrable cycle", fks: [][4]string{{"a", "a_b_fk", "b", "deferrable"}, {"b", "b_a_fk", "a", "deferrable"}, {"c", "c_a_fk", "a", ""}},
			want: "a b c", wantDeferred: "a_b_fk b_a_fk"},
		{name: "a cycle of a deferrable key and one that is not", fks: [][4]string{{"a", "a_b_fk", "b", "deferrable"}, {"b", "b_a_fk", "a", ""}},
			want: "a b c", wantDeferred: "a_b_fk b_a_fk"},
		{name: "deferrable key outside a cycle orders", fks: [][4]string{{"a", "a_b_fk", "b", "deferrable"}}, want: "b a c"},
		{name: "cycle that is not deferrable", fks: [][4]string{{"a", "a_b_fk", "b", ""}, {"b", "b_c_fk", "c", ""}, {"c", "c_a_fk", "a", ""}},
			want: "a b c", wantDeferred: "a_b_fk b_c_fk c_a_fk"},
		{name: "cycle through a ref and a key: the key is left out", refs: [][2]string{{"a", "b"}}, fks: [][4]string{{"b", "b_a_fk", "a", ""}},
			want: "b a c", wantDeferred: "b_a_fk"},
		{name: "cycle of refs", refs: [][2]string{{"a", "b"}, {"b", "a"}},
			wantErr: []string{"erp:", "a ref of the mapping", "public.a", "public.b", "remove a ref"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := chainMapping(t, tc.refs...)
			order, deferred, err := m.WriteOrder("erp", fkCatalog(tc.fks...), tc.write)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error, order %v", order)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names, defs []string
			for _, e := range order {
				names = append(names, e.Name)
			}
			for _, d := range deferred {
				defs = append(defs, d.Name)
			}
			if got := strings.Join(names, " "); got != tc.want {
				t.Errorf("order %q, want %q", got, tc.want)
			}
			if got := strings.Join(defs, " "); got != tc.wantDeferred {
				t.Errorf("deferred %q, want %q", got, tc.wantDeferred)
			}
		})
	}
}
