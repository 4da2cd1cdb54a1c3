package pipeline

import (
	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/transform"
)

// FieldCipher seals and opens the personal fields of events (pii: true in
// the mapping; internal/pii.Cipher). Seal replaces a sealed field's value
// in Data by its encrypted envelope; Open does the reverse and fails with
// a permanent error (a key id it lacks, a value that does not
// authenticate), leaving the event as it was. Neither changes the map the
// event held before: they put a new one in its place.
type FieldCipher interface {
	Seal(ev *transform.Event) error
	Open(ev *transform.Event) error
}

// piiNotKept replaces a personal column's value in a capture-stage dead
// letter.
const piiNotKept = "(pii: not kept)"

// mappedOnly returns ch as a capture-stage dead letter keeps it: only the
// columns the mapping maps for its table (key, fields, currency columns),
// personal ones replaced by piiNotKept. A change of a table no entity maps
// keeps no row values at all.
func mappedOnly(m *transform.Mapping, system string, ch *capture.Change) *capture.Change {
	out := *ch
	e := m.Source(system, ch.QualifiedTable())
	var t *transform.TableMap
	if e != nil {
		t = e.Tables[system]
	}
	if t == nil {
		out.New, out.Old = nil, nil
		return &out
	}
	keep := map[string]bool{} // column -> personal
	for _, k := range t.KeyColumns() {
		keep[k] = false
	}
	for field, c := range t.Columns {
		pii := m.PIIField(e.Name, field)
		if c.Column != "" {
			keep[c.Column] = keep[c.Column] || pii
		}
		if c.CurrencyColumn != "" {
			keep[c.CurrencyColumn] = keep[c.CurrencyColumn] || false
		}
	}
	filter := func(r capture.Row) capture.Row {
		if r == nil {
			return nil
		}
		f := make(capture.Row, len(keep))
		for col, v := range r {
			pii, ok := keep[col]
			switch {
			case !ok:
			case pii && v != nil:
				f[col] = piiNotKept
			default:
				f[col] = v
			}
		}
		return f
	}
	out.New, out.Old = filter(ch.New), filter(ch.Old)
	return &out
}
