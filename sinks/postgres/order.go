// Entity order: parents before children, so that references resolve.

package postgres

import (
	"fmt"

	"github.com/duplex-cdc/duplex/transform"
)

// entityOrder sorts the entities stored in system so that an entity comes
// after every entity it refers to.
func entityOrder(m *transform.Mapping, system string) ([]*transform.Entity, error) {
	var out []*transform.Entity
	state := map[string]int{}
	var visit func(e *transform.Entity) error
	visit = func(e *transform.Entity) error {
		switch state[e.Name] {
		case 1:
			return fmt.Errorf("sink %s: entity %s is part of a reference cycle", system, e.Name)
		case 2:
			return nil
		}
		state[e.Name] = 1
		t := e.Tables[system]
		for _, f := range e.Fields {
			if c := t.Columns[f.Name]; c != nil && c.Ref != nil && c.Ref.Entity != e.Name {
				if err := visit(m.Entity(c.Ref.Entity)); err != nil {
					return err
				}
			}
		}
		state[e.Name] = 2
		out = append(out, e)
		return nil
	}
	for _, e := range m.Entities {
		if e.Tables[system] != nil {
			if err := visit(e); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
