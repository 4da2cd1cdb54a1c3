package transform_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/duplex-cdc/duplex/transform"
)

// FuzzDenormalize: any event read from the bus (JSON, as the applier
// decodes it) is made into a row of the example mapping's CRM or ERP, or
// refused with a typed error (*transform.FieldError naming the value, or
// *transform.EventError for an event that fits no row at all); it never
// panics. A row's values are sorted by column and only name columns of the
// entity's table. Seeds are in testdata/fuzz/FuzzDenormalize.
func FuzzDenormalize(f *testing.F) {
	mappings := map[string]*transform.Mapping{"crm": boundCRM(f), "erp": boundERP(f)}
	f.Fuzz(func(t *testing.T, toERP bool, event []byte) {
		var ev transform.Event
		if json.Unmarshal(event, &ev) != nil {
			return
		}
		system := "crm"
		if toERP {
			system = "erp"
		}
		row, err := mappings[system].Denormalize(&ev, system)
		if err != nil {
			var fe *transform.FieldError
			var ee *transform.EventError
			if !errors.As(err, &fe) && !errors.As(err, &ee) {
				t.Fatalf("Denormalize(%s) error %v is %T, not a *FieldError or *EventError", event, err, err)
			}
			if p, ok := err.(interface{ Permanent() bool }); !ok || !p.Permanent() {
				t.Fatalf("Denormalize(%s) error %v is not permanent", event, err)
			}
			return
		}
		if row == nil || row.Table == nil || row.Entity == nil || row.Entity.Name != ev.Entity {
			t.Fatalf("Denormalize(%s) = %+v without its entity and table", event, row)
		}
		cols := map[string]bool{}
		for _, c := range row.Table.Columns {
			cols[c.Column] = true
			if c.CurrencyColumn != "" {
				cols[c.CurrencyColumn] = true
			}
		}
		for i, v := range row.Values {
			if i > 0 && row.Values[i-1].Column >= v.Column {
				t.Fatalf("Denormalize(%s): values not sorted by column, or a column twice: %+v", event, row.Values)
			}
			if !cols[v.Column] {
				t.Fatalf("Denormalize(%s): column %s is not a column of %s", event, v.Column, row.Table.QualifiedTable())
			}
		}
	})
}
