package transform

import (
	"fmt"
	"strings"

	"github.com/duplex-cdc/duplex/capture"
)

// Normalize turns one captured row change of a system into canonical
// events: none for unmapped tables, one upsert or delete, or a delete and
// an upsert when the key changed. index is the change's place in its
// transaction; its events get EventIndex(index, 0), EventIndex(index, 1), …
// so that positions stay unique and ordered.
func (m *Mapping) Normalize(system string, tx *capture.TxInfo, index int, ch *capture.Change) ([]Event, error) {
	return m.normalize(system, tx, index, ch, false)
}

// NormalizeHeld is Normalize for a change of an entity that was held
// because its table did not fit the mapping, read again after the fix: a
// mapped column the table did not have at the time is left out of the
// event (the other side keeps its value), and the events are marked Redo.
func (m *Mapping) NormalizeHeld(system string, tx *capture.TxInfo, index int, ch *capture.Change) ([]Event, error) {
	evs, err := m.normalize(system, tx, index, ch, true)
	for i := range evs {
		evs[i].Redo = true
	}
	return evs, err
}

func (m *Mapping) normalize(system string, tx *capture.TxInfo, index int, ch *capture.Change, lenient bool) ([]Event, error) {
	if ch.Op == capture.Truncate {
		return m.normalizeTruncate(system, tx, index, ch)
	}
	e := m.Source(system, ch.QualifiedTable())
	if e == nil || !e.Publishes(system) {
		return nil, nil
	}
	if tx.Applied && ch.Op != capture.Insert {
		// duplex applying another system's change: nothing of it is news.
		return nil, nil
	}
	t := e.Tables[system]
	kown := e.KeyOwner()
	ownsKey := kown == system || kown == OwnerBoth
	pos := func(i int) Position {
		return Position{LSN: tx.CommitLSN, CommitTime: tx.CommitTime.UTC(), Xid: tx.Xid, Index: EventIndex(index, i)}
	}
	mk := func(op Op, key string, i int) Event {
		p := pos(i)
		return Event{Version: SchemaVersion, ID: EventID(system, tx.CommitLSN, p.Index), Source: system, Entity: e.Name, Op: op, Key: key, Pos: p}
	}
	keyOf := func(row capture.Row, which string) (string, error) {
		return m.keyOf(system, e, ch, row, which)
	}
	// hasKey says whether the old row carries the key: pgoutput sends the
	// old key only when a key column changed (or with REPLICA IDENTITY
	// FULL).
	hasKey := func(row capture.Row) bool {
		for _, kc := range t.KeyColumns() {
			if v, ok := row[kc]; !ok || v == nil {
				return false
			}
		}
		return true
	}
	switch ch.Op {
	case capture.Delete:
		// An entity lives and dies in the system that owns its key.
		if !ownsKey {
			return nil, nil
		}
		key, err := keyOf(ch.Old, "old")
		if err != nil {
			return nil, err
		}
		return []Event{mk(OpDelete, key, 0)}, nil
	case capture.Insert, capture.Update:
		key, err := keyOf(ch.New, "new")
		if err != nil {
			return nil, err
		}
		local := !tx.Applied && !tx.Snapshot
		if ch.Op == capture.Insert && local && !ownsKey {
			// A row made here is not an edit of the owner's row that
			// happens to have the same key: refused, with the reason.
			return nil, &OwnershipError{System: system, Table: ch.QualifiedTable(), Entity: e.Name, Key: key, Owner: kown, Op: "insert"}
		}
		var out []Event
		if ch.Op == capture.Update && ch.Old != nil {
			if hasKey(ch.Old) {
				oldKey, err := keyOf(ch.Old, "old")
				if err != nil {
					return nil, err
				}
				if oldKey != key && ownsKey {
					out = append(out, mk(OpDelete, oldKey, 0))
				}
				if oldKey != key && !ownsKey && local {
					// Moving the row onto another key would make it an
					// edit of the owner's row of that key.
					return nil, &OwnershipError{System: system, Table: ch.QualifiedTable(), Entity: e.Name, Key: oldKey + " -> " + key, Owner: kown, Op: "key change"}
				}
			}
		}
		var violated []string
		if ch.Op == capture.Update && ch.Old != nil && local {
			violated = m.violated(system, e, t, ch, key)
		}
		ev := mk(OpUpsert, key, 1)
		ev.Data = make(map[string]any, len(t.Columns))
		news := false
		for _, f := range e.Fields {
			c := t.Columns[f.Name]
			if c == nil || !carries(e, f, system) {
				continue
			}
			if tx.Applied && !e.IsKey(f.Name) && f.Owner != system {
				// Of a row duplex inserted, only what this system
				// generated itself (a sequence, a default) is news.
				continue
			}
			if _, sent := ch.New[c.Column]; !sent && c.Column != "" && c.converter(f) != ConvConstant {
				// pgoutput sends every column of the relation (NULL,
				// unchanged TOAST or a value): a mapped column that is not
				// there was dropped or renamed. Carrying the row without it
				// would silently leave the other side stale.
				if lenient {
					continue
				}
				return nil, &SchemaError{System: system, Table: ch.QualifiedTable(), Column: c.Column, Entity: e.Name, Field: f.Name}
			}
			if u, ok := ch.New[c.Column].(capture.Unchanged); ok && c.converter(f) != ConvConstant {
				// An unchanged TOASTed value: not a write. Its value, when
				// the capture found it, travels for a target that has to
				// create the row; without it the target will not create
				// the row rather than leave the column NULL. A shared
				// field is resolved by its writes alone and is left out,
				// as any shared field an update did not change.
				if f.Owner == OwnerBoth {
					continue
				}
				ev.Unchanged = append(ev.Unchanged, f.Name)
				if u.Known {
					// A value that does not convert is unknown rather
					// than an error: the change itself did not write it.
					if v, err := m.canonical(e, f, c, ch.New, key); err == nil && v != skip {
						ev.Data[f.Name] = v
					}
				}
				continue
			}
			v, err := m.canonical(e, f, c, ch.New, key)
			if err != nil {
				return nil, err
			}
			if v == skip {
				continue
			}
			if f.Owner == OwnerBoth && ch.Op == capture.Update && ch.Old != nil {
				// A write counts for a shared field only if it changed it.
				if _, sent := ch.Old[c.Column]; sent {
					old, err := m.canonical(e, f, c, ch.Old, key)
					if err == nil && old != skip && f.Equal(old, v) {
						continue
					}
				}
			}
			ev.Data[f.Name] = v
			if !e.IsKey(f.Name) {
				news = true
			}
		}
		ev.Violated = violated
		if tx.Snapshot && ch.RowCommitTime != nil {
			// A copied row's shared values are as old as its last write
			// until the recorded versions say otherwise (the capture's
			// look-up of them replaces these): the age the sink into this
			// database gives a value it never versioned.
			for _, f := range e.SharedFields(system) {
				if _, ok := ev.Data[f]; ok {
					if ev.Versions == nil {
						ev.Versions = map[string]FieldVersion{}
					}
					ev.Versions[f] = FieldVersion{Source: system, At: ch.RowCommitTime.UTC()}
				}
			}
		}
		if !news && !ownsKey && len(violated) == 0 {
			return out, nil
		}
		return append(out, ev), nil
	}
	return nil, fmt.Errorf("%s %s on %s: unexpected operation", system, ch.Op, ch.QualifiedTable())
}

// keyOf returns the canonical key of a captured row: the canonical value
// of each key field, joined by capture.JoinKey (one field: its value).
func (m *Mapping) keyOf(system string, e *Entity, ch *capture.Change, row capture.Row, which string) (string, error) {
	t := e.Tables[system]
	parts := make([]string, len(e.Key))
	for i, kf := range e.Key {
		kc := t.Columns[kf].Column
		v, ok := row[kc]
		if !ok || v == nil {
			return "", fmt.Errorf("%s %s on %s carries no value for key column %s (check REPLICA IDENTITY)", system, ch.Op, ch.QualifiedTable(), kc)
		}
		if _, ok := v.(capture.Unchanged); ok {
			return "", fmt.Errorf("%s %s on %s: key column %s of the %s row is unchanged TOAST", system, ch.Op, ch.QualifiedTable(), kc, which)
		}
		s, err := m.canonical(e, e.Field(kf), t.Columns[kf], row, "")
		if err != nil {
			return "", err
		}
		ks, ok := s.(string)
		if !ok {
			return "", fmt.Errorf("%s %s on %s: key column %s holds %v", system, ch.Op, ch.QualifiedTable(), kc, v)
		}
		parts[i] = ks
	}
	return capture.JoinKey(parts), nil
}

// violated lists the fields another system owns alone that a local
// update of system changed: their canonical values differ between the old
// row (complete with REPLICA IDENTITY FULL) and the new one. A column the
// old row does not carry, or that is unchanged TOAST, is not compared.
func (m *Mapping) violated(system string, e *Entity, t *TableMap, ch *capture.Change, key string) []string {
	var out []string
	for _, name := range e.OwnedElsewhere(system) {
		f, c := e.Field(name), t.Columns[name]
		ov, okOld := ch.Old[c.Column]
		nv, okNew := ch.New[c.Column]
		if !okOld || !okNew {
			continue
		}
		if _, u := nv.(capture.Unchanged); u {
			continue
		}
		if _, u := ov.(capture.Unchanged); u {
			continue
		}
		a, errA := m.canonical(e, f, c, ch.Old, key)
		b, errB := m.canonical(e, f, c, ch.New, key)
		if errA != nil || errB != nil {
			// A value the converter refuses: compare what the
			// columns hold.
			if fmt.Sprint(ov) != fmt.Sprint(nv) {
				out = append(out, name)
			}
			continue
		}
		if a == skip || b == skip {
			continue
		}
		if !f.Equal(a, b) {
			out = append(out, name)
		}
	}
	return out
}

func (m *Mapping) normalizeTruncate(system string, tx *capture.TxInfo, index int, ch *capture.Change) ([]Event, error) {
	var out []Event
	for _, qt := range ch.Tables {
		e := m.Source(system, qt)
		if e == nil {
			continue
		}
		i := len(out)
		if i >= eventsPerChange {
			return nil, fmt.Errorf("%s truncate of %d mapped tables at once: at most %d are supported", system, len(ch.Tables), eventsPerChange)
		}
		if parts := ch.Partitions[qt]; len(parts) > 0 {
			// Emptying the other side's whole table would remove rows of
			// the partitions left alone, and which rows there were in the
			// truncated ones cannot be told.
			why := "the mapping does not propagate truncates"
			if e.Truncate == "propagate" {
				why = "truncate: propagate empties whole tables only, and which rows of the other side were in these partitions cannot be told"
			}
			return nil, fmt.Errorf("%s truncate of partition(s) %s of %s (entity %s) refused: %s; rows on the other side are left as they are (delete them there; duplex verify lists them)", system, strings.Join(parts, ", "), qt, e.Name, why)
		}
		if e.Truncate != "propagate" {
			return nil, fmt.Errorf("%s truncate of %s (entity %s) refused: the mapping does not propagate truncates (set truncate: propagate); rows on the other side are left as they are", system, qt, e.Name)
		}
		p := Position{LSN: tx.CommitLSN, CommitTime: tx.CommitTime.UTC(), Xid: tx.Xid, Index: EventIndex(index, i)}
		out = append(out, Event{Version: SchemaVersion, ID: EventID(system, tx.CommitLSN, p.Index), Source: system, Entity: e.Name, Op: OpTruncate, Pos: p})
	}
	return out, nil
}

// eventsPerChange is how many events one captured change may produce.
const eventsPerChange = 1024

// EventIndex is the position index of the sub-th event made of the
// change-th change of a transaction.
func EventIndex(change, sub int) int { return change*eventsPerChange + sub }
