// Write order: parents before children, from the mapping's refs and the
// target's foreign keys; foreign keys in a cycle deferred.

package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/duplex-cdc/duplex/transform"
)

// writeOrder sorts the entities stored in the sink's system so that an
// entity comes after every entity it refers to, by a mapping ref or, once
// the catalog is known (cat not nil), by a foreign key of its target
// table between entities the flow writes (transform.Mapping.WriteOrder).
// It also returns the deferrable foreign keys of a cycle, which each apply
// transaction sets DEFERRED.
func (s *Sink) writeOrder(cat *transform.Catalog) ([]*transform.Entity, []transform.ForeignKey, error) {
	return s.cfg.Mapping.WriteOrder(s.cfg.System, cat, func(e *transform.Entity) bool { return e.Publishes(s.cfg.Source) })
}

// deferConstraints sets the foreign keys of a cycle DEFERRED for the
// current transaction (SET CONSTRAINTS lasts until its end): PostgreSQL
// checks them at commit, when both ends of every row are written.
func (s *Sink) deferConstraints(ctx context.Context, tx pgx.Tx) error {
	if len(s.deferred) == 0 {
		return nil
	}
	names := make([]string, len(s.deferred))
	for i, fk := range s.deferred {
		names[i] = pgx.Identifier{fk.Schema, fk.Name}.Sanitize()
	}
	if _, err := tx.Exec(ctx, "SET CONSTRAINTS "+strings.Join(names, ", ")+" DEFERRED"); err != nil {
		return fmt.Errorf("sink %s: defer foreign keys of a cycle: %w", s.cfg.System, err)
	}
	return nil
}
