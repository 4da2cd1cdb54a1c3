// Write order: parents before children, from the mapping's refs and the
// target's foreign keys (those of a cycle are checked by duplex at the end
// of the transaction, fkcheck.go).

package postgres

import (
	"github.com/duplex-cdc/duplex/transform"
)

// writeOrder sorts the entities stored in the sink's system so that an
// entity comes after every entity it refers to, by a mapping ref or, once
// the catalog is known (cat not nil), by a foreign key of its target
// table between entities the flow writes (transform.Mapping.WriteOrder).
// It also returns the foreign keys of a cycle, left out of the order.
func (s *Sink) writeOrder(cat *transform.Catalog) ([]*transform.Entity, []transform.ForeignKey, error) {
	return s.cfg.Mapping.WriteOrder(s.cfg.System, cat, func(e *transform.Entity) bool { return e.Publishes(s.cfg.Source) })
}
