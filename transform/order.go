package transform

import (
	"fmt"
	"slices"
	"strings"
)

// ForeignKey is a foreign-key constraint of a table (pg_constraint,
// contype 'f'), as read from the catalog.
type ForeignKey struct {
	// Schema and Name of the constraint (SET CONSTRAINTS names it so).
	Schema, Name string
	// Columns of the referencing table, in constraint order.
	Columns []string
	// RefTable is the referenced table, "schema.table".
	RefTable string
	// Deferrable: DEFERRABLE, so SET CONSTRAINTS … DEFERRED may move its
	// check to commit; InitiallyDeferred: it is deferred by default.
	Deferrable, InitiallyDeferred bool
}

// WriteOrder returns the entities stored in system in the order their
// rows are written in one target transaction, so that every row a row
// refers to is there first: an entity comes after each entity its
// mapping refs name (the sink looks the referenced row up), and, among the
// entities write says the flow writes (nil: all), after each entity whose
// table one of its table's foreign keys references, as the catalog lists
// them (cat nil: refs only). Deletes and truncates go in the reverse
// order, children first.
//
// Foreign keys of a table to itself are left out. Foreign keys that form
// a cycle between tables, DEFERRABLE or not, are left out of the order
// and returned in cycle: the sink applies with session_replication_role
// = replica, in which PostgreSQL's foreign-key triggers do not fire (as in
// its own apply worker), and checks every foreign key itself at the end of
// the target transaction (sinks/postgres/fkcheck.go), so the rows of a
// cycle may be written in any order within it. A cycle through a mapping
// ref cannot be written in any order (the sink looks the referenced row up
// before it writes the row) and is an error naming the tables, with the
// fix.
func (m *Mapping) WriteOrder(system string, cat *Catalog, write func(*Entity) bool) (order []*Entity, cycle []ForeignKey, err error) {
	type edge = orderEdge
	var nodes []*Entity
	byTable := map[string]*Entity{}
	for _, e := range m.Entities {
		if t := e.Tables[system]; t != nil {
			nodes = append(nodes, e)
			if byTable[t.QualifiedTable()] == nil {
				byTable[t.QualifiedTable()] = e
			}
		}
	}
	edges := map[*Entity][]edge{}
	for _, e := range nodes {
		t := e.Tables[system]
		for _, f := range e.Fields {
			if c := t.Columns[f.Name]; c != nil && c.Ref != nil && c.Ref.Entity != e.Name {
				if to := m.Entity(c.Ref.Entity); to != nil && to.Tables[system] != nil {
					edges[e] = append(edges[e], edge{to: to})
				}
			}
		}
		if cat == nil || (write != nil && !write(e)) {
			continue
		}
		ti := cat.Tables[t.QualifiedTable()]
		if ti == nil {
			continue
		}
		for i := range ti.ForeignKeys {
			fk := &ti.ForeignKeys[i]
			to := byTable[fk.RefTable]
			if to == nil || to == e || (write != nil && !write(to)) {
				continue
			}
			edges[e] = append(edges[e], edge{to: to, fk: fk})
		}
	}
	// Foreign keys inside a strongly connected component (a cycle) are
	// left out of the order.
	comp := components(nodes, func(e *Entity) []*Entity {
		var out []*Entity
		for _, ed := range edges[e] {
			out = append(out, ed.to)
		}
		return out
	})
	for _, e := range nodes {
		kept := edges[e][:0:0]
		for _, ed := range edges[e] {
			if ed.fk != nil && comp[e] == comp[ed.to] {
				if !slices.ContainsFunc(cycle, func(d ForeignKey) bool { return d.Schema == ed.fk.Schema && d.Name == ed.fk.Name }) {
					cycle = append(cycle, *ed.fk)
				}
				continue
			}
			kept = append(kept, ed)
		}
		edges[e] = kept
	}
	state := map[*Entity]int{}
	var path []orderStep
	var visit func(e *Entity) error
	visit = func(e *Entity) error {
		switch state[e] {
		case 1:
			return cycleError(system, e, path)
		case 2:
			return nil
		}
		state[e] = 1
		for _, ed := range edges[e] {
			path = append(path, orderStep{from: e, fk: ed.fk})
			if err := visit(ed.to); err != nil {
				return err
			}
			path = path[:len(path)-1]
		}
		state[e] = 2
		order = append(order, e)
		return nil
	}
	for _, e := range nodes {
		if err := visit(e); err != nil {
			return nil, nil, err
		}
	}
	return order, cycle, nil
}

// orderEdge is a step of the write order's graph: to the entity written
// first, through a foreign key (nil: a mapping ref).
type orderEdge struct {
	to *Entity
	fk *ForeignKey
}

// orderStep is a step of a path through the graph: the entity left and
// the foreign key (nil: a mapping ref) it was left through.
type orderStep struct {
	from *Entity
	fk   *ForeignKey
}

// cycleError names the cycle of mapping refs that returns to e; path
// holds the steps taken from the first entity visited. (Foreign keys of a
// cycle are left out of the order, so only refs remain in one.)
func cycleError(system string, e *Entity, path []orderStep) error {
	start := slices.IndexFunc(path, func(p orderStep) bool { return p.from == e })
	if start < 0 {
		start = 0
	}
	var steps []string
	for _, p := range path[start:] {
		t := p.from.Tables[system].QualifiedTable()
		if p.fk == nil {
			steps = append(steps, fmt.Sprintf("%s (entity %s, a ref of the mapping)", t, p.from.Name))
			continue
		}
		steps = append(steps, fmt.Sprintf("%s (entity %s, foreign key %s)", t, p.from.Name, p.fk.Name))
	}
	return fmt.Errorf("%s: the tables refer to each other in a cycle through the mapping's refs, %s -> back to %s, so no order of writes satisfies them (the sink looks a referenced row up before it writes the row); remove a ref from the cycle",
		system, strings.Join(steps, " -> "), e.Tables[system].QualifiedTable())
}

// components returns the strongly connected component of each node
// (Tarjan's algorithm), numbered from 0.
func components[N comparable](nodes []N, next func(N) []N) map[N]int {
	index, low := map[N]int{}, map[N]int{}
	onStack := map[N]bool{}
	comp := map[N]int{}
	var stack []N
	n, c := 0, 0
	var strong func(v N)
	strong = func(v N) {
		index[v], low[v] = n, n
		n++
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range next(v) {
			if _, seen := index[w]; !seen {
				strong(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] == index[v] {
			for {
				w := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				onStack[w] = false
				comp[w] = c
				if w == v {
					break
				}
			}
			c++
		}
	}
	for _, v := range nodes {
		if _, seen := index[v]; !seen {
			strong(v)
		}
	}
	return comp
}
